"""The SASS cost model (``python -m gpuinv.kernels --model``) and the CI budget.

The parser, the main-path counter, the occupancy arithmetic and the budget
are tested on committed SASS text and hand-computed cases everywhere. The
end-to-end tests compile small CUDA sources through NVRTC and disassemble
them with nvdisasm (the ``[sass]`` extra); they skip where either is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpuinv.kernels as kernels
from gpuinv.kernels.tooling import check as _check
from gpuinv.kernels.tooling import model
from gpuinv.kernels.tooling import sass

# A main path in nvdisasm's raw-binary format, written to exercise every rule:
# a staging loop unrolled twice (two loads a body trip) behind its remainder
# check, a reciprocal with its slow-path call, a shuffle with the compiler's
# divergence check (BRA.DIV), the tile loop's back edge, the EXIT, then the
# divergent-collective slow path and the subroutine, then alignment padding.
SAMPLE = """\
\t.headerflags\t@"EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/              @!P0 BRA 0x50 ;
        /*0030*/                   LDG.E.CONSTANT R2, desc[UR8][R4.64] ;
        /*0040*/                   STS [R6], R2 ;
        /*0050*/                   LDG.E.64.CONSTANT R2, desc[UR8][R4.64] ;
        /*0060*/                   LDG.E.64.CONSTANT R8, desc[UR8][R4.64+0x100] ;
        /*0070*/                   IADD3 R0, R0, 0x40, RZ ;
        /*0080*/                   STS.64 [R6], R2 ;
        /*0090*/                   STS.64 [R6+0x100], R8 ;
        /*00a0*/              @!P1 BRA 0x50 ;
        /*00b0*/                   FSETP.GT.AND P2, PT, R2, RZ, PT ;
        /*00c0*/               @P2 BRA 0x100 ;
        /*00d0*/                   MOV R10, 0xf0 ;
        /*00e0*/                   CALL.REL.NOINC 0x1c0 ;
        /*00f0*/                   BRA 0x110 ;
        /*0100*/                   MUFU.RCP R3, R2 ;
        /*0110*/                   BRA.DIV UR5, 0x190 ;
        /*0120*/                   SHFL.IDX PT, R11, R3, RZ, 0x1f ;
        /*0130*/                   FSEL R12, R11, R3, P2 ;
        /*0140*/                   IMAD.MOV.U32 R13, RZ, RZ, R12 ;
        /*0150*/                   STG.E desc[UR8][R14.64], R13 ;
        /*0160*/                   VIADD R0, R0, 0x1 ;
        /*0170*/              @!P3 BRA 0x10 ;
        /*0180*/                   EXIT ;
        /*0190*/                   WARPSYNC.COLLECTIVE R9, 0x120 ;
        /*01a0*/                   SHFL.IDX PT, R11, R3, RZ, 0x1f ;
        /*01b0*/                   ENDCOLLECTIVE ;
        /*01c0*/                   MUFU.RCP R3, R2 ;
        /*01d0*/                   RET.REL.NODEC R10 0x0 ;
        /*01e0*/                   BRA 0x1e0;
        /*01f0*/                   NOP;
"""


def test_parser_reads_address_predicate_opcode_and_operands():
    instrs = sass.parse_sass(SAMPLE)
    assert len(instrs) == 32  # the header line is skipped
    first, branch = instrs[0], instrs[2]
    assert (first.addr, first.opcode, first.operands, first.pred) == (0, "LDC", "R1, c[0x0][0x28]", "")
    assert (branch.pred, branch.base, branch.target) == ("@!P0", "BRA", 0x50)
    ldg64 = instrs[5]
    assert ldg64.mods == ("E", "64", "CONSTANT") and ldg64.width() == 8
    assert instrs[3].width() == 4
    assert instrs[-2].target == 0x1E0  # `BRA 0x1e0;` without a space before the semicolon
    div = next(i for i in instrs if i.opcode == "BRA.DIV")
    assert div.target == 0x190


@pytest.mark.parametrize(
    "line, cls",
    [
        ("FFMA R1, R2, R3, R4", "fp"),
        ("DFMA R2, R4, R6, R8", "fp"),
        ("MUFU.RCP64H R3, R5", "fp"),
        ("SHFL.BFLY PT, R1, R2, 0x1, 0x1f", "shuffle"),
        ("LDS.64 R2, [R4]", "shared"),
        ("STG.E.128 desc[UR4][R2.64], R4", "global"),
        ("FSEL R1, R2, R3, P0", "select_move"),
        ("IMAD.MOV.U32 R1, RZ, RZ, R2", "select_move"),
        ("IMAD R1, R2, R3, R4", "integer"),
        ("UIADD3 UR4, UR4, 0x1, URZ", "integer"),
        ("BSSY B0, 0x630", "control"),
        ("S2R R0, SR_TID.X", "other"),
        ("XYZZY R0", "other"),
    ],
)
def test_classes(line, cls):
    (ins,) = sass.parse_sass(f"        /*0000*/                   {line} ;")
    assert sass.classify(ins) == cls


def test_main_path_ends_before_the_slow_paths_and_weights_the_staging_loop():
    path = sass.count_main_path(sass.parse_sass(SAMPLE), staging_trips=6)
    assert path.end == 0x190 and path.bytes == 0x190
    assert path.kernel_bytes == 0x1E0  # the padding after the subroutine is not code
    # The tile loop (back edge at 0x170) counts once; the staging loop's body
    # (0x50-0xa0, two loads a trip) runs 6 // 2 = 3 times.
    assert [(lp.start, lp.end, lp.unroll, lp.trips) for lp in path.loops] == [(0x50, 0xA0, 2, 3)]
    assert path.unknown_loops == 0
    assert path.rare == {0xD0, 0xE0, 0xF0}  # MOV, CALL, BRA around the slow reciprocal
    w = path.weights
    assert w[0x50] == w[0xA0] == 3 and w[0x30] == 1 and w[0x110] == 1 and w[0xE0] == 0
    # 25 instructions before the EXIT's end, less 3 rare, plus 2 extra trips of 6.
    assert path.weighted() == 25 - 3 + 2 * 6
    mix = path.mix()
    assert mix["global"] == 1 + 2 * 3 + 1  # peeled load, unrolled loads, the store
    assert mix["shuffle"] == 1  # the copy in the collective slow path is not counted
    assert mix["fp"] == 2 and mix["select_move"] == 2
    assert sum(mix.values()) == path.weighted()
    pipes = path.pipes()
    # STS: one wavefront; STS.64: two, three trips each.
    assert pipes["shared"] == 1 + 2 * 2 * 3 and pipes["xu"] == 1 and pipes["fp32"] == 1
    assert path.global_bytes_in_flight() == 32 * (8 + 8)


# An unconditional call in the tile loop (a __noinline__ function; before
# NaN was built from its bits, `0.0 / 0.0`'s IEEE division subroutine): the
# block around it runs on every trip, and so does the callee's path to RET
# (the guard at 0x90 falls through, the BRA at 0xb0 is followed, 0xc0 is
# skipped). GUARD puts a guard branch before the call's block.
UNCONDITIONAL_CALL = """\
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E R2, desc[UR8][R4.64] ;
        /*0020*/                   GUARD ;
        /*0030*/                   MOV R10, 0x50 ;
        /*0040*/                   CALL.REL.NOINC 0x90 ;
        /*0050*/                   WORK ;
        /*0060*/                   STG.E desc[UR8][R14.64], R3 ;
        /*0070*/              @!P3 BRA 0x10 ;
        /*0080*/                   EXIT ;
        /*0090*/                   FSETP.GT.AND P0, PT, R2, RZ, PT ;
        /*00a0*/               @P0 BRA 0xd0 ;
        /*00b0*/                   FADD R2, R2, 1 ;
        /*00c0*/                   BRA 0xe0 ;
        /*00d0*/                   FADD R2, R2, 2 ;
        /*00e0*/                   RET.REL.NODEC R10 0x0 ;
        /*00f0*/                   BRA 0xf0;
"""


def _call_sample(guard: str, work: str) -> list:
    return sass.parse_sass(UNCONDITIONAL_CALL.replace("GUARD", guard).replace("WORK", work))


def test_an_unconditional_call_is_counted_through_its_callee():
    path = sass.count_main_path(_call_sample("IADD3 R0, R0, 0x1, RZ", "FMUL R3, R2, R2"), staging_trips=1)
    assert path.end == 0x90 and path.rare == set()
    w = path.weights
    # Every instruction of the main path once, the call and its block included ...
    assert all(w[a] == 1 for a in range(0, 0x90, 0x10))
    # ... and the callee's path: 0x90, 0xa0 (not taken), 0xb0, 0xc0 (taken), 0xe0.
    assert [i.addr for i in path.instructions if i.addr >= path.end] == [0x90, 0xA0, 0xB0, 0xC0, 0xE0]
    assert w[0xE0] == 1 and w.get(0xD0, 0) == 0
    assert path.weighted() == 9 + 5
    assert path.mix()["fp"] == 1 + 1 + 1  # the FMUL, the callee's FSETP and one FADD
    assert sum(path.mix().values()) == path.weighted()


def test_a_call_is_a_slow_path_only_where_a_guard_skips_its_block():
    # A guard branch around the call and the moves of its operands: a slow path.
    guarded = sass.count_main_path(_call_sample("@P2 BRA 0x50", "FMUL R3, R2, R2"), staging_trips=1)
    assert guarded.rare == {0x30, 0x40}
    assert guarded.weighted() == 9 - 2 and all(i.addr < guarded.end for i in guarded.instructions)
    # A guard around real work (an `if` of the source) is no slow-path check:
    # the block and the callee are counted.
    work = sass.parse_sass(UNCONDITIONAL_CALL.replace("GUARD", "@P2 BRA 0x60").replace(
        "        /*0030*/                   MOV R10, 0x50 ;", "        /*0030*/                   FMUL R10, R2, R2 ;"))
    counted = sass.count_main_path(work, staging_trips=1)
    assert counted.rare == set() and counted.weighted() == 9 + 5
    # A predicated call is not followed (its callee is not on every trip).
    predicated = sass.count_main_path(
        sass.parse_sass(UNCONDITIONAL_CALL.replace("GUARD", "NOP").replace(
            "                   CALL.REL.NOINC 0x90", "               @P1 CALL.REL.NOINC 0x90")), staging_trips=1)
    assert predicated.rare == set() and predicated.weighted() == 9


def test_a_rolled_loop_without_global_accesses_is_reported_unknown():
    text = """\
        /*0000*/                   LDG.E R1, desc[UR8][R4.64] ;
        /*0010*/                   FADD R1, R1, R2 ;
        /*0020*/              @!P0 BRA 0x10 ;
        /*0030*/                   STG.E desc[UR8][R4.64], R1 ;
        /*0040*/              @!P1 BRA 0x0 ;
        /*0050*/                   EXIT ;
"""
    path = sass.count_main_path(sass.parse_sass(text), staging_trips=8)
    assert path.unknown_loops == 1 and path.weighted() == 6


# A staging loop unrolled by 4 with its remainder peeled off before it, the
# way ptxas lays it out: the guard skips the peel when no iteration remains,
# an exit branch follows the first peeled iteration, the other two are
# predicated (they issue whether or not their predicate holds).
PEEL = """\
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   BSSY B1, 0xa0 ;
        /*0020*/              @!P0 BRA 0x90 ;
        /*0030*/                   LDG.E R2, desc[UR8][R4.64] ;
        /*0040*/                   STS [R6], R2 ;
        /*0050*/              @!P1 BRA 0x90 ;
        /*0060*/                   LDG.E R2, desc[UR8][R4.64+0x80] ;
        /*0070*/               @P2 LDG.E R3, desc[UR8][R4.64+0x100] ;
        /*0080*/                   STS [R6+0x80], R2 ;
        /*0090*/                   BSYNC B1 ;
        /*00a0*/              @!P3 BRA 0x120 ;
        /*00b0*/                   LDG.E R2, desc[UR8][R4.64] ;
        /*00c0*/                   LDG.E R3, desc[UR8][R4.64+0x80] ;
        /*00d0*/                   LDG.E R8, desc[UR8][R4.64+0x100] ;
        /*00e0*/                   LDG.E R9, desc[UR8][R4.64+0x180] ;
        /*00f0*/                   STS.128 [R6], R2 ;
        /*0100*/                   IADD3 R4, P4, R4, 0x200, RZ ;
        /*0110*/              @!P4 BRA 0xb0 ;
        /*0120*/                   EXIT ;
"""


@pytest.mark.parametrize(
    "trips, trips_min, loads, weighted",
    [
        (8, 8, 8, 19 - 6 + 7),  # no remainder: the peel (6 instructions) is skipped; the body (7) runs twice
        (9, 9, 1 + 8, 19 - 3 + 7),  # one: up to the first exit branch
        (10, 10, 3 + 8, 19 + 7),  # two: past it, the predicated third issues too
        (8, 7, 3 + 8, 19 + 7),  # lanes with 7 run a remainder of 3
    ],
)
def test_peeled_remainder(trips, trips_min, loads, weighted):
    path = sass.count_main_path(sass.parse_sass(PEEL), trips, trips_min)
    assert [(lp.unroll, lp.trips) for lp in path.loops] == [(4, 2)]
    assert path.mix()["global"] == loads
    assert path.weighted() == weighted


# ptxas also leaves a loop through a predicated CALL.REL.NOINC to the code
# after it (a call that never returns; the lane-group kernel's elimination
# loop in main's kernels of 0db1be8, NVRTC 12.9, sm_80): that target lies
# before the last EXIT, so it is part of the main path, not a slow path.
CALL_AS_JUMP = """\
        /*0000*/                   LDG.E R2, desc[UR8][R4.64] ;
        /*0010*/                   FADD R2, R2, R3 ;
        /*0020*/              @!P1 CALL.REL.NOINC 0x40 ;
        /*0030*/                   BRA 0x10 ;
        /*0040*/                   FMUL R3, R2, R2 ;
        /*0050*/                   STG.E desc[UR8][R14.64], R3 ;
        /*0060*/              @!P3 BRA 0x0 ;
        /*0070*/                   EXIT ;
        /*0080*/                   WARPSYNC.COLLECTIVE R9, 0x10 ;
        /*0090*/                   BRA 0x90;
"""


def test_a_call_before_the_last_exit_is_no_slow_path():
    path = sass.count_main_path(sass.parse_sass(CALL_AS_JUMP), staging_trips=1, compute_trips=4)
    # The main path runs to the EXIT's end: the code after the loop is counted.
    assert path.end == 0x80 and path.rare == set()
    assert [(lp.start, lp.end, lp.trips) for lp in path.loops] == [(0x10, 0x30, 4)]
    assert path.weighted() == 1 + 3 * 4 + 4
    # Before the fix, the call's target was taken for the first slow path and
    # the main path ended at 0x40, with the FMUL and the store uncounted.
    assert path.mix()["global"] == 2


def test_a_slow_path_that_does_not_follow_an_exit_is_an_error():
    text = """\
        /*0000*/                   BRA.DIV UR5, 0x20 ;
        /*0010*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0020*/                   WARPSYNC.COLLECTIVE R9, 0x10 ;
        /*0030*/                   EXIT ;
"""
    with pytest.raises(sass.SassError, match="does not follow an EXIT"):
        sass.count_main_path(sass.parse_sass(text), staging_trips=1)


# --- occupancy and trip counts, by hand -------------------------------------------


@pytest.mark.parametrize(
    "chip, regs, threads, smem, expected",
    [
        # 180 registers: 5888 a warp (23 units of 256); 16384 // 5888 = 2 warps
        # per sub-partition, 8 an SM, two 4-warp blocks.
        ("H200", 180, 128, 8320, (8, "registers")),
        # 40 registers: 1280 a warp, 12 per sub-partition, 48 an SM.
        ("H200", 40, 128, 2064, (48, "registers")),
        # 32 registers: 16 warps per sub-partition = the 64-warp cap.
        ("H200", 32, 128, 1024, (64, "registers")),
        # 48 KiB + 1 KiB reserved = 50176 B: 4 blocks in 228 KiB, 3 in 164 KiB.
        ("H200", 32, 128, 49152, (16, "shared")),
        ("A100", 32, 128, 49152, (12, "shared")),
        # 16 registers, 32-thread blocks: 32 blocks an SM at most.
        ("A100", 16, 32, 0, (32, "blocks")),
        # 255 registers, 32 warps a block: not even one block fits.
        ("H100", 255, 1024, 0, (0, "registers")),
    ],
)
def test_occupancy_by_hand(chip, regs, threads, smem, expected):
    assert model.occupancy(regs, threads, smem, model.CHIPS[chip]) == expected


def test_staging_trips():
    assert model.staging_trips(kernels.kernel_spec(3, np.float32)) == (9, 9)  # thread: NN
    g9 = kernels.kernel_spec(9, np.float32)
    assert (g9.shape, g9.group) == ("group", 16)
    assert model.staging_trips(g9) == (6, 5)  # 2 matrices of 81 over 32 lanes: lane 0 takes 6
    assert model.staging_trips(kernels.kernel_spec(32, np.float64)) == (32, 32)


# --- the budget -------------------------------------------------------------------


def record(n=16, wipm=1000.0, main=60000, regs=100, spill=0, arch="sm_90", dispatched=True):
    return {
        "arch": arch, "dtype": "float64", "n": n, "shape": "group", "dispatched": dispatched,
        "warp_instructions_per_matrix": wipm, "main_path_bytes": main, "registers": regs, "spill_bytes": spill,
    }  # fmt: skip


def test_budget_passes_within_five_percent_and_fails_past_it(tmp_path):
    path = tmp_path / "budget.json"
    model.update_budget([record(), record(n=8)], path, "first baseline", "12.9")
    doc = json.loads(path.read_text())
    assert doc["updates"][-1]["reason"] == "first baseline" and doc["nvrtc"] == "12.9"
    assert model.check_budget([record(wipm=1049.0, regs=105), record(n=8)], path, "12.9")[0]
    ok, lines = model.check_budget([record(wipm=1051.0), record(n=8)], path, "12.9")
    assert not ok and any("warp_instructions_per_matrix 1000.0 -> 1051.0" in line for line in lines)
    assert not model.check_budget([record(spill=4), record(n=8)], path, "12.9")[0]
    assert not model.check_budget([record(main=63001), record(n=8)], path, "12.9")[0]
    # A kernel that is not dispatched is not budgeted; a new dispatched one must be.
    assert model.check_budget([record(), record(n=8), record(n=9, dispatched=False)], path, "12.9")[0]
    ok, lines = model.check_budget([record(), record(n=8), record(n=9)], path, "12.9")
    assert not ok and any("not in the budget" in line for line in lines)
    # Getting better passes, and says so.
    ok, lines = model.check_budget([record(wipm=500.0), record(n=8)], path, "12.9")
    assert ok and "better" in lines[-1]


def test_budget_edited_by_hand_fails_and_update_needs_one_line(tmp_path):
    path = tmp_path / "budget.json"
    model.update_budget([record()], path, "first", "12.9")
    doc = json.loads(path.read_text())
    doc["kernels"]["sm_90 float64 n=16 group"]["registers"] = 200
    path.write_text(json.dumps(doc))
    ok, lines = model.check_budget([record(regs=190)], path, "12.9")
    assert not ok and "edited by hand" in lines[0]
    with pytest.raises(ValueError, match="one non-empty line"):
        model.update_budget([record()], path, "two\nlines", "12.9")
    with pytest.raises(ValueError, match="one non-empty line"):
        model.update_budget([record()], path, "  ", "12.9")
    model.update_budget([record(regs=190)], path, "kernel grew on purpose", "12.9")
    assert model.check_budget([record(regs=190)], path, "12.9")[0]
    assert [u["reason"] for u in json.loads(path.read_text())["updates"]] == ["first", "kernel grew on purpose"]


def test_update_keeps_the_other_architectures(tmp_path):
    path = tmp_path / "budget.json"
    model.update_budget([record(arch="sm_80"), record(arch="sm_90")], path, "both", "12.9")
    model.update_budget([record(arch="sm_90", regs=90)], path, "sm_90 only", "12.9")
    kernels_ = json.loads(path.read_text())["kernels"]
    assert kernels_["sm_80 float64 n=16 group"]["registers"] == 100
    assert kernels_["sm_90 float64 n=16 group"]["registers"] == 90


def test_partial_budget_update_keeps_the_other_entries(tmp_path):
    path = tmp_path / "budget.json"
    model.update_budget([record(arch="sm_80"), record(arch="sm_90"), record(arch="sm_90", n=8)], path, "all", "12.9")
    new = {**record(arch="sm_90", n=3), "kind": "chol-thread", "op": "chol"}
    model.update_budget([new], path, "chol kernels: new", "12.9", partial=True)
    doc = json.loads(path.read_text())
    assert len(doc["kernels"]) == 4 and "sm_90 float64 n=3 chol-thread" in doc["kernels"]
    assert doc["digest"] == model._digest(doc["kernels"])
    assert model.check_budget([record(arch="sm_80"), record(arch="sm_90"), record(arch="sm_90", n=8), new],
                              path, "12.9")[0]


def test_committed_budget_is_consistent():
    from gpuinv.kernels.tooling.cli import DEFAULT_BUDGET

    doc = json.loads(DEFAULT_BUDGET.read_text())
    assert doc["digest"] == model._digest(doc["kernels"])
    assert all(u["reason"].strip() and "\n" not in u["reason"] for u in doc["updates"])
    expected = {f"{a} {s.dtype.name} n={s.n} {s.kind}" for a in _check.ARCHS for s in kernels.instantiations()}
    assert set(doc["kernels"]) == expected


def test_cli_rejects_one_json_path_for_two_archs(capsys):
    from gpuinv.kernels.tooling.cli import main

    with pytest.raises(SystemExit):
        main(["--model", "--json", "model.json"])
    assert "{arch}" in capsys.readouterr().err


def test_cli_op_selects_kernels_but_not_for_the_budget(capsys, monkeypatch):
    from gpuinv.kernels.tooling import cli

    with pytest.raises(SystemExit):
        cli.main(["--budget", "--op", "tril"])
    assert "leave out --op" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--check", "--op", "lu"])
    seen = {}

    def collect(archs, include_non_default=False, keep_code=False, ops=None):
        seen.update(archs=archs, ops=ops)
        return []

    monkeypatch.setattr(cli, "collect_reports", collect)
    monkeypatch.setattr(cli, "run_check", lambda archs, include_non_default, reports: 0)
    assert cli.main(["--check", "--op", "tril", "--op", "diag", "--arch", "sm_90"]) == 0
    assert seen == {"archs": ("sm_90",), "ops": ("tril", "diag")}


def test_collect_reports_keeps_only_the_ops_asked_for(monkeypatch):
    jobs = []
    monkeypatch.setattr(_check, "_load_nvrtc", lambda: None)
    monkeypatch.setattr(_check, "_compile_job", lambda job: jobs.append(job) or [])
    _check.collect_reports(("sm_90",), include_non_default=True, workers=1, ops=("triu", "diag"))
    specs = [s for job in jobs for s in job[0]]
    assert {s.op for s in specs} == {"triu", "diag"}
    assert len(specs) == sum(1 for s in kernels.instantiations(True) if s.op in ("triu", "diag"))


# --- end to end: NVRTC and nvdisasm ------------------------------------------------


@pytest.fixture(scope="module")
def tools():
    pytest.importorskip("cupy")
    try:
        nvrtc = _check._load_nvrtc()
    except ImportError as exc:
        pytest.skip(f"NVRTC cannot be loaded: {exc}")
    if sass.find_nvdisasm() is None:
        pytest.skip("nvdisasm is not installed (pip install nvidia-cuda-nvdisasm)")
    return nvrtc


STAGE_SOURCE = r"""
extern "C" __global__ void stage(const float* __restrict__ a, float* __restrict__ b, long long m) {
    __shared__ float s[32 * 8];
    for (long long c = blockIdx.x; c < m; c += gridDim.x) {
        UNROLL
        for (int g = threadIdx.x; g < 32 * 8; g += 32) s[g] = a[c * 256 + g];
        __syncwarp();
        float v = s[threadIdx.x * 8];
        v = v + __shfl_xor_sync(0xffffffffu, v, 1);
        b[c * 32 + threadIdx.x] = 1.0f / v;
        __syncwarp();
    }
}
"""


def compile_stage(nvrtc, arch: str, unroll: str) -> str:
    prog = nvrtc.createProgram(STAGE_SOURCE.replace("UNROLL", unroll), "stage.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}"])
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return sass.disassemble(sass.kernel_code(cubin, "stage"), arch)


@pytest.mark.parametrize("arch", _check.ARCHS)
@pytest.mark.parametrize("unroll", ["#pragma unroll 1", "#pragma unroll 4", "#pragma unroll"])
def test_counts_on_a_compiled_kernel_do_not_depend_on_unrolling(tools, arch, unroll):
    # 8 loads a lane, whether the loop stays rolled, is unrolled by 4, or
    # fully: the counter must find the same per-trip traffic every time.
    path = sass.count_main_path(sass.parse_sass(compile_stage(tools, arch, unroll)), staging_trips=8)
    mix = path.mix()
    assert mix["global"] == 8 + 1
    assert mix["shared"] == 8 + 1
    assert mix["shuffle"] == 1
    assert path.unknown_loops == 0
    if unroll == "#pragma unroll 1":
        assert [(lp.unroll, lp.trips) for lp in path.loops] == [(1, 8)]
    assert path.bytes <= path.kernel_bytes
    # The IEEE reciprocal's subroutine lies past the main path, its call is not counted.
    assert all(i.base != "RET" for i in path.instructions)
    assert all(path.weights[a] == 0 for a in path.rare)


COMPUTE_SOURCE = r"""
extern "C" __global__ void compute(const float* __restrict__ a, float* __restrict__ b, long long m) {
    __shared__ float s[32 * 8];
    for (long long c = blockIdx.x; c < m; c += gridDim.x) {
        #pragma unroll
        for (int g = threadIdx.x; g < 32 * 8; g += 32) s[g] = a[c * 256 + g];
        __syncwarp();
        float v = 0.0f;
        #pragma unroll 1
        for (int k = 0; k < 8; ++k) v = fmaf(v, v, s[k * 32 + threadIdx.x]);
        b[c * 32 + threadIdx.x] = v;
        __syncwarp();
    }
}
"""


@pytest.mark.parametrize("arch", _check.ARCHS)
def test_a_rolled_compute_loop_counts_its_trips(tools, arch):
    # A loop without global accesses has no trip count the SASS shows: the
    # caller gives it (the group kernel's k loop runs n times), else it is
    # counted once and reported as unknown.
    nvrtc = tools
    prog = nvrtc.createProgram(COMPUTE_SOURCE, "compute.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}"])
        code = sass.kernel_code(nvrtc.getCUBIN(prog), "compute")
    finally:
        nvrtc.destroyProgram(prog)
    instrs = sass.parse_sass(sass.disassemble(code, arch))
    once = sass.count_main_path(instrs, staging_trips=8)
    counted = sass.count_main_path(instrs, staging_trips=8, compute_trips=8)
    assert once.unknown_loops == 1 and counted.unknown_loops == 0
    (loop,) = [lp for lp in counted.loops if lp.unroll == 0]
    assert loop.trips == 8
    # Exactly the loop body is weighted 8 times instead of once: 8 shared
    # loads and 8 FMAs a trip of the chunk loop.
    assert counted.weighted() - once.weighted() == 7 * loop.body_instructions
    assert counted.mix()["shared"] == 8 + 8
    assert sum(1 for i in counted.instructions if i.base == "FFMA" and loop.start <= i.addr <= loop.end) == 1


CALL_SOURCE = r"""
__device__ __noinline__ float twice(float v) { return v + v; }
extern "C" __global__ void call(const float* __restrict__ a, float* __restrict__ b, int m) {
    #pragma unroll 1
    for (int c = blockIdx.x; c < m; c += gridDim.x) b[c * 32 + threadIdx.x] = twice(a[c * 32 + threadIdx.x]) * 3.0f;
}
"""


@pytest.mark.parametrize("arch", _check.ARCHS)
def test_an_unconditional_call_in_a_compiled_kernel_is_counted(tools, arch):
    # The call of a __noinline__ function runs on every trip of the loop:
    # its block is counted, and its callee through RET.
    nvrtc = tools
    prog = nvrtc.createProgram(CALL_SOURCE, "call.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}"])
        code = sass.kernel_code(nvrtc.getCUBIN(prog), "call")
    finally:
        nvrtc.destroyProgram(prog)
    path = sass.count_main_path(sass.parse_sass(sass.disassemble(code, arch)), staging_trips=1)
    (call,) = [i for i in path.instructions if i.base == "CALL"]
    assert path.rare == set() and path.weights[call.addr] == 1
    callee = [i for i in path.instructions if i.addr >= path.end]
    assert callee and callee[0].addr == call.target and callee[-1].base == "RET"
    assert all(path.weights[i.addr] == 1 for i in callee)
    assert any(i.base == "FADD" for i in callee)  # v + v, in the callee
    assert any(i.base == "FMUL" and i.addr < path.end for i in path.instructions)  # * 3, after the call
    assert path.weighted() == len(path.instructions)
    assert path.mix()["global"] == 2


def test_model_of_real_instantiations(tools):
    specs = [kernels.kernel_spec(2, np.float32), kernels.kernel_spec(4, np.float32), kernels.kernel_spec(9, np.float32)]
    assert [s.direct for s in specs] == [True, False, False]
    reports = _check.compile_report(specs, "sm_90", set(specs), keep_code=True)
    records = model.model_reports(reports, workers=1)
    thread, staged, group = records
    for r, spec in zip(records, specs):
        assert r["main_path_bytes"] <= r["kernel_bytes"]
        assert r["unknown_loops"] == 0 and r["spill_bytes"] == 0
        # The one-thread kernels' staging is straight-line (unrolled, or no
        # stage at all); the group kernel's staging loops stay rolled.
        assert bool(r["staging_loops"]) == (spec.shape == "group")
        assert all(lp["unroll"] > 0 for lp in r["staging_loops"])
        # The lane-group kernel's k loop stays rolled and runs n times; the
        # one-thread kernel unrolls everything but its staging loops.
        expect = [r["n"]] if r["shape"] == "group" else []
        assert [lp["trips"] for lp in r["compute_loops"]] == expect
        assert sum(r["mix"].values()) == pytest.approx(r["warp_instructions_per_matrix"], abs=0.05)  # each rounded
        assert set(r["bounds"]) == {"H200", "H100"}
        assert r["limiter"] in r["bounds"]["H200"]
        assert r["ceiling_matrices_per_s"] == pytest.approx(r["bounds"]["H200"][r["limiter"]], rel=1e-3)
        assert 0 < r["hbm_share_ceiling"] <= 1
        assert r["occupancy_warps"] > 0
    assert thread["mix"]["shuffle"] == 0 and staged["mix"]["shuffle"] == 0
    # 4x4 float32 through the stage: all 16 loads of a thread in flight at once.
    assert staged["bytes_in_flight_per_warp"] == 32 * 16 * 4 and staged["shared_bytes"] == 16 * 129 * 4
    # 2x2 float32 without a stage: 256 matrices a tile (two a thread), and
    # both matrices' loads (4 + 4 floats) are in flight at once.
    assert thread["matrices_per_block"] == 256 and thread["shared_bytes"] == 0
    assert thread["mix"]["shared"] == 0 and thread["bytes_in_flight_per_warp"] == 32 * 8 * 4
    # The group kernel's shuffles have divergent-collective slow paths: not on the main path.
    assert group["mix"]["shuffle"] > 0 and group["main_path_bytes"] < group["kernel_bytes"]
    assert group["bytes_per_matrix"] == 2 * 81 * 4 + 4
    assert model.format_table(records)[1].startswith("sm_90 float32     2 thread")


def test_model_of_the_solve_kernel_at_k_1(tools):
    # The solve kernel is modelled with one right-hand side: the staged
    # kernel solves it outside its loop over columns (0 trips), the
    # stage-less one inside it (1 trip); that loop's loads (after the
    # factorization) are not in flight with the staging loads.
    specs = [kernels.kernel_spec(2, np.float32, "solve"), kernels.kernel_spec(4, np.float32, "solve")]
    assert [s.direct for s in specs] == [True, False]
    reports = _check.compile_report(specs, "sm_90", set(specs), keep_code=True)
    direct, staged = model.model_reports(reports, workers=1)
    for r in (direct, staged):
        assert r["kind"] == "solve-thread" and r["op"] == "solve"
        assert r["unknown_loops"] == 0 and r["spill_bytes"] == 0
        assert r["staging_loops"] == [] and r["compute_loops"] == []
        assert sum(r["mix"].values()) == pytest.approx(r["warp_instructions_per_matrix"], abs=0.05)
    # Stage-less, a thread solves two 2x2 systems a tile: one loop each.
    assert direct["matrices_per_block"] == 256
    assert [lp["trips"] for lp in direct["rhs_loops"]] == [1, 1]
    assert [lp["trips"] for lp in staged["rhs_loops"]] == [0]
    # A (n^2) and b (n) read, x (n) written, one info word.
    assert direct["bytes_per_matrix"] == (4 + 2 * 2) * 4 + 4
    assert staged["bytes_per_matrix"] == (16 + 2 * 4) * 4 + 4
    # Staged: A's 16 and b's 4 loads of a thread in flight at once; stage-less:
    # the two systems' A (4 + 4 floats) of a thread, not b.
    assert staged["bytes_in_flight_per_warp"] == 32 * (16 + 4) * 4
    assert staged["shared_bytes"] == (16 + 4) * 129 * 4
    assert direct["bytes_in_flight_per_warp"] == 32 * 8 * 4
