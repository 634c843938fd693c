"""Read the machine code (SASS) of a compiled kernel and count what one trip costs.

Used by ``python -m gpuinv.kernels --model`` (``model.py``); nothing here
runs when the library inverts matrices.

* :func:`kernel_code` takes one kernel's instructions out of an NVRTC cubin
  (the ``.text.<mangled name>`` section of the ELF file).
* :func:`disassemble` turns them into text with ``nvdisasm --binary SMxy``,
  from the ``nvidia-cuda-nvdisasm`` wheel (the ``[sass]`` extra). The raw
  mode matters: the CUDA 13 tools on the package index reject the ELF files
  that NVRTC 12.x writes (a newer ELF ABI), but the instruction encoding of
  sm_80 and sm_90 is the same in both, so the section's bytes alone
  disassemble.
* :func:`parse_sass` reads that text into :class:`Instr` records and
  :func:`count_main_path` counts the main path (docs/kernels.md, "Cost
  model", has the method and its limits).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CLASSES",
    "Instr",
    "Loop",
    "MainPath",
    "SassError",
    "classify",
    "count_main_path",
    "disassemble",
    "find_nvdisasm",
    "kernel_code",
    "parse_sass",
]


class SassError(RuntimeError):
    """The machine code does not have the shape the counter expects."""


# --- the cubin ----------------------------------------------------------------


def _elf_sections(data: bytes) -> dict[str, bytes]:
    """Section name -> contents of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SassError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    sections = {}
    for name_off, kind, _flags, _addr, offset, size, *_ in headers:
        start = names_at + name_off
        name = data[start : data.index(b"\0", start)].decode()
        sections[name] = b"" if kind == 8 else data[offset : offset + size]  # 8: SHT_NOBITS
    return sections


def kernel_code(cubin: bytes, mangled: str) -> bytes:
    """The instructions of kernel ``mangled`` in an NVRTC cubin."""
    sections = _elf_sections(cubin)
    try:
        return sections[f".text.{mangled}"]
    except KeyError:
        raise SassError(f"the cubin has no code section for {mangled}") from None


# --- the disassembler ---------------------------------------------------------


def find_nvdisasm() -> str | None:
    """Path of ``nvdisasm``: $GPUINV_NVDISASM, the wheel's copy, or the PATH's."""
    env = os.environ.get("GPUINV_NVDISASM")
    if env:
        return env
    # The wheel installs into the `nvidia` namespace package (nvidia/cu13/bin),
    # which puts nothing on PATH.
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            for candidate in sorted(Path(root).glob("*/bin/nvdisasm"), reverse=True):
                if os.access(candidate, os.X_OK):
                    return str(candidate)
    return shutil.which("nvdisasm")


def disassemble(code: bytes, arch: str, nvdisasm: str | None = None) -> str:
    """Disassemble raw instructions of ``arch`` (``"sm_80"``, ``"sm_90"``).

    Raises
    ------
    FileNotFoundError
        If no nvdisasm is found (``pip install nvidia-cuda-nvdisasm``).
    SassError
        If nvdisasm fails.
    """
    tool = nvdisasm or find_nvdisasm()
    if tool is None:
        raise FileNotFoundError(
            "nvdisasm not found: pip install nvidia-cuda-nvdisasm (gpuinv's [sass] extra) "
            "or set GPUINV_NVDISASM"
        )
    target = "SM" + arch.removeprefix("sm_")
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(code)
        f.flush()
        proc = subprocess.run([tool, "--binary", target, f.name], capture_output=True, text=True)
    if proc.returncode != 0 or "error" in proc.stderr:
        raise SassError(f"nvdisasm failed for {arch}: {proc.stderr.strip()[:500]}")
    return proc.stdout


# --- parsing --------------------------------------------------------------------

#: ``/*0c80*/   @!P0 CALL.REL.NOINC 0x1690 ;``
_LINE = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(.*?)\s*;?\s*$")
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class Instr:
    """One instruction: its byte address, guard predicate, opcode and operands."""

    addr: int
    opcode: str  # with modifiers, e.g. "LDG.E.64.CONSTANT"
    operands: str
    pred: str = ""

    @property
    def base(self) -> str:
        """The opcode without modifiers ("LDG")."""
        return self.opcode.split(".", 1)[0]

    @property
    def mods(self) -> tuple[str, ...]:
        return tuple(self.opcode.split(".")[1:])

    @property
    def target(self) -> int | None:
        """The address a branch, call or convergence barrier names (else None)."""
        if self.base in ("BRA", "CALL", "BSSY", "JMP", "BREAK") or self.opcode.startswith("BRA"):
            found = _HEX.findall(self.operands)
            if found:
                return int(found[-1], 16)
        return None

    def width(self) -> int:
        """Bytes per thread moved by a load or store (4 unless a width modifier says)."""
        for mod in self.mods:
            if mod in ("64",):
                return 8
            if mod in ("128",):
                return 16
            if mod in ("U8", "S8"):
                return 1
            if mod in ("U16", "S16"):
                return 2
        return 4


def parse_sass(text: str) -> list[Instr]:
    """Instructions of nvdisasm's text, in address order (other lines are skipped)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        body = m.group(2).strip().rstrip(";").strip()
        if not body:
            continue
        pred = ""
        if p := _PRED.match(body):
            pred = p.group(0).strip()
            body = body[p.end() :]
        opcode, _, operands = body.partition(" ")
        out.append(Instr(int(m.group(1), 16), opcode, operands.strip(), pred))
    out.sort(key=lambda i: i.addr)
    return out


# --- classes --------------------------------------------------------------------

#: The classes of the instruction mix, in the order tables print them.
CLASSES = ("fp", "shuffle", "shared", "global", "select_move", "integer", "control", "other")

_FP32 = {"FADD", "FMUL", "FFMA", "FMNMX", "FSETP", "FSET", "FCHK", "FRND", "FSWZADD",
         "FADD32I", "FMUL32I", "FFMA32I", "HADD2", "HMUL2", "HFMA2", "HSETP2", "HMNMX2"}
_FP64 = {"DADD", "DMUL", "DFMA", "DSETP", "DMNMX"}
_XU = {"MUFU"}
_SHARED = {"LDS", "STS", "ATOMS", "LDSM", "STSM"}
_GLOBAL = {"LDG", "STG", "LD", "ST", "ATOMG", "ATOM", "RED", "LDL", "STL", "LDGSTS"}
_MOVE = {"SEL", "FSEL", "MOV", "MOV32I", "UMOV", "CS2R", "PRMT", "P2R", "R2P", "R2UR", "USEL", "UPRMT"}
_CONTROL = {"BRA", "BRX", "JMP", "JMX", "EXIT", "BSSY", "BSYNC", "BAR", "WARPSYNC", "CALL", "RET",
            "BREAK", "NOP", "YIELD", "BPT", "NANOSLEEP", "DEPBAR", "ENDCOLLECTIVE", "KILL", "ACQBULK"}
_OTHER = {"S2R", "S2UR", "LDC", "ULDC", "VOTE", "VOTEU", "MATCH", "F2I", "I2F", "F2F", "I2I", "F2FP",
          "MEMBAR", "ERRBAR", "FENCE", "CCTL", "REDUX", "CREDUX", "ELECT"}
_INTEGER = {"IMAD", "IADD3", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR", "LEA", "ISETP", "VIADD",
            "VIMNMX", "IMNMX", "IABS", "FLO", "BREV", "POPC", "PLOP3", "IMUL", "IDP", "BMSK", "SGXT",
            "PSETP", "VIADDMNMX", "UIADD3", "ULEA", "ULOP3", "USHF", "UISETP", "UIMAD", "UFLO",
            "UPOPC", "UPLOP3", "UBREV", "UBMSK", "USGXT", "ULOP", "UIABS", "UIMNMX", "USHL", "USHR"}


def classify(ins: Instr) -> str:
    """The mix class of an instruction (one of :data:`CLASSES`)."""
    base = ins.base
    if base == "IMAD" and "MOV" in ins.mods:
        return "select_move"  # IMAD.MOV.U32 r, RZ, RZ, x: the compiler's register move
    if base in _FP32 or base in _FP64 or base in _XU:
        return "fp"
    if base == "SHFL":
        return "shuffle"
    if base in _SHARED:
        return "shared"
    if base in _GLOBAL:
        return "global"
    if base in _MOVE:
        return "select_move"
    if base in _INTEGER:
        return "integer"
    if base in _CONTROL:
        return "control"
    return "other"


def pipe(ins: Instr) -> str | None:
    """The execution pipe whose throughput the model bounds, if any."""
    base = ins.base
    if base in _FP32:
        return "fp32"
    if base in _FP64:
        return "fp64"
    if base in _XU:
        return "xu"
    if base == "SHFL":
        return "shuffle"
    if base in _SHARED:
        return "shared"
    return None


# --- the main path ------------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    """A loop that stays rolled: a backward branch at ``end`` to ``start``."""

    start: int
    end: int
    unroll: int  # global loads or stores in the body: source iterations per body trip
    trips: int  # body trips per tile counted (0 when the trip count is unknown: counted once)
    body_instructions: int
    #: The solve kernel's loop over right-hand side columns (loads b, stores
    #: x: both kinds of global access in a loop that is not the tile loop).
    rhs: bool = False


@dataclass
class MainPath:
    """What one trip of the tile (chunk) loop executes, for one warp."""

    instructions: list[Instr]  # the main path's, then those of the subroutines it always calls
    end: int  # byte address just past the main path
    kernel_bytes: int
    loops: list[Loop]
    unknown_loops: int
    rare: set[int]  # addresses of slow-path call sequences (not counted)
    weights: dict[int, float] = field(default_factory=dict)  # address -> executions per trip

    @property
    def bytes(self) -> int:
        return self.end

    def weighted(self, predicate=lambda ins: True) -> float:
        return sum(self.weights.get(i.addr, 0.0) for i in self.instructions if predicate(i))

    def mix(self) -> dict[str, float]:
        out = dict.fromkeys(CLASSES, 0.0)
        for ins in self.instructions:
            out[classify(ins)] += self.weights.get(ins.addr, 0.0)
        return out

    def pipes(self) -> dict[str, float]:
        """Warp-instructions per trip on the fp32, fp64, xu and shuffle pipes; shared wavefronts."""
        out = {"fp32": 0.0, "fp64": 0.0, "xu": 0.0, "shuffle": 0.0, "shared": 0.0}
        for ins in self.instructions:
            p = pipe(ins)
            if p is None:
                continue
            w = self.weights.get(ins.addr, 0.0)
            # Shared memory serves 128 bytes per clock: a conflict-free warp
            # access of 4, 8 or 16 bytes a lane takes 1, 2 or 4 wavefronts.
            out[p] += w * (max(1, ins.width() // 4) if p == "shared" else 1)
        return out

    def global_bytes_in_flight(self) -> int:
        """Bytes one warp has in flight in its load-staging loop (32 lanes x loads per body trip).

        The loads of a right-hand-side loop (the solve kernel's, after the
        factorization) are not in flight with the staging loads: not counted.
        """
        rhs = [lp for lp in self.loops if lp.rhs]
        loads = [i for i in self.instructions
                 if i.base == "LDG" and not any(lp.start <= i.addr <= lp.end for lp in rhs)]
        for loop in self.loops:
            if loop.rhs:
                continue
            body = [i for i in loads if loop.start <= i.addr <= loop.end]
            if body:
                loads = body
                break
        return 32 * sum(i.width() for i in loads)


def _main_end(instrs: list[Instr]) -> int:
    """Address just past the main path.

    The compiler puts the slow paths after the kernel's last ``EXIT``: the
    divergent-collective fallbacks that ``BRA.DIV`` jumps to and the
    subroutines (IEEE division and reciprocal) that ``CALL.REL`` calls. The
    main path ends where the first of them begins; without any, at the
    instruction after the last ``EXIT``. A ``CALL.REL`` to an address before
    the last ``EXIT`` is a jump within the main path, not a slow path.
    """
    exits = [i.addr for i in instrs if i.base == "EXIT" and not i.pred]
    if not exits:
        raise SassError("no unconditional EXIT")
    # A call into the code before the last EXIT is no slow path: ptxas also
    # leaves a loop through `@P CALL.REL.NOINC` to the code after it (the
    # lane-group kernel's elimination loop, seen with NVRTC 12.9 on sm_80
    # in main's kernels of 0db1be8), a call that never returns. Taken for a
    # slow path, it ended the main path inside the loop and left the rest
    # of the kernel (back substitution, stores) uncounted.
    slow = [i.target for i in instrs if i.opcode.startswith("BRA.DIV")
            or (i.base == "CALL" and i.target is not None and i.target >= max(exits))]
    slow = [t for t in slow if t is not None]
    if not slow:
        return max(exits) + 16
    end = min(slow)
    before = [i for i in instrs if i.addr < end]
    if not before or before[-1].base not in ("EXIT", "BRA") or before[-1].pred:
        raise SassError(f"the first slow path at {end:#x} does not follow an EXIT or a jump")
    return end


def _is_guard(ins: Instr) -> bool:
    """A branch that may or may not be taken: predicated, or ``BRA.CONV`` (taken when converged)."""
    return ins.base == "BRA" and not ins.opcode.startswith("BRA.DIV") and (
        bool(ins.pred) or ins.opcode.startswith("BRA.CONV"))


def _rare_sequences(main: list[Instr], end: int) -> set[int]:
    """Addresses of the basic blocks around each slow-path ``CALL`` (skipped in the common case).

    A reciprocal or division is inlined with a check that branches around
    ``[MOV ...] CALL.REL.NOINC slow ; [MOV ...] [BRA join]``: that block runs
    only for denormal, huge or zero operands (and a warp-synchronizing call
    only when the warp has diverged: ``BRA.CONV`` skips it). A call is a
    slow path only when such a guard skips its block: the instruction just
    before the block is a guard branch (:func:`_is_guard`) whose target lies
    at or past the block's end, and the block holds only the call and the
    moves and integer arithmetic of its operands. An unconditional call in straight-line code
    (a ``__noinline__`` function, or a division the compiler cannot inline)
    runs on every trip: its block is counted, and so is the callee
    (:func:`_callee_path`).
    """
    leaders = _leaders(main, end)
    by_addr = {i.addr: i for i in main}
    rare: set[int] = set()
    for call in (i for i in main if i.base == "CALL"):
        start = max(a for a in leaders if a <= call.addr)
        stop = min((a for a in leaders if a > call.addr), default=end)
        guard = by_addr.get(start - 16)
        if guard is None or not _is_guard(guard) or guard.target is None or guard.target < stop:
            continue
        block = [i for i in main if start <= i.addr < stop]
        # Only the call and the moving of its operands and results: a guard
        # that skips real work (an `if` of the source) is no slow-path check.
        if any(classify(i) not in ("select_move", "integer", "control") for i in block):
            continue
        rare.update(i.addr for i in block)
    return rare


def _leaders(main: list[Instr], end: int) -> list[int]:
    """The sorted start addresses of the main path's basic blocks."""
    leaders = {0}
    for i in main:
        t = i.target
        if t is not None and t < end:
            leaders.add(t)
        if i.base in ("BRA", "EXIT", "RET", "BRX", "JMP") or i.opcode.startswith("BRA"):
            leaders.add(i.addr + 16)
    return sorted(leaders)


def _callee_path(code: list[Instr], entry: int, depth: int = 0) -> list[Instr]:
    """The instructions a subroutine runs from ``entry`` to its ``RET``, branches not taken.

    The path falls through every guard branch and follows every
    unconditional ``BRA``; an unconditional ``CALL`` on it adds its own
    callee's path. Which branches a call really takes depends on its
    operands: the fall-through path is the one the compiler lays out for
    the common case.
    """
    if depth > 4:
        raise SassError(f"calls nested deeper than 4 at {entry:#x}")
    by_addr = {i.addr: i for i in code}
    out: list[Instr] = []
    seen: set[int] = set()
    addr = entry
    while True:
        ins = by_addr.get(addr)
        if ins is None:
            raise SassError(f"the subroutine at {entry:#x} runs past the code at {addr:#x}")
        if addr in seen:
            raise SassError(f"the subroutine at {entry:#x} loops at {addr:#x}: its path is unknown")
        seen.add(addr)
        out.append(ins)
        if ins.base == "RET" and not ins.pred:
            return out
        if ins.base == "EXIT" and not ins.pred:
            raise SassError(f"the subroutine at {entry:#x} exits at {addr:#x} without returning")
        if ins.base == "CALL" and not ins.pred and ins.target is not None:
            out.extend(_callee_path(code, ins.target, depth + 1))
        if ins.base == "BRA" and not _is_guard(ins) and not ins.opcode.startswith("BRA.DIV") and ins.target is not None:
            addr = ins.target
        else:
            addr += 16


def _peel(main: list[Instr], loop_start: int, kind: str) -> tuple[int, list[int], int] | None:
    """The remainder code the compiler peeled off an unrolled loop, if it sits just before it.

    ptxas lays out ``for`` loops unrolled by u as: a convergence region
    (``BSSY Bk, J`` ... ``BSYNC Bk`` at J - 16) whose guard ``@!P BRA J-16``
    skips it when the trip count is a multiple of u, holding up to u - 1
    iterations with an exit branch to the ``BSYNC`` after each; then the
    loop. Returns (guard address, exit-branch addresses, BSYNC address) for
    the last such region before ``loop_start`` that holds accesses of
    ``kind`` ("LDG" or "STG"), or None.
    """
    best = None
    for b in main:
        if b.base != "BSSY" or b.target is None or not (b.addr < b.target <= loop_start):
            continue
        join = b.target - 16
        inside = [i for i in main if b.addr < i.addr < join]
        if not any(i.base == kind for i in inside):
            continue
        if any(i.target is not None and i.base == "BRA" and i.target <= i.addr for i in inside):
            continue  # a loop of its own, not a peel
        branches = [i.addr for i in inside if i.base == "BRA" and i.target == join]
        if not branches:
            continue
        if best is None or join > best[2]:
            best = (branches[0], branches[1:], join)
    return best


def count_main_path(
    instrs: list[Instr], staging_trips: int, staging_trips_min: int | None = None, compute_trips: int | None = None,
    rhs_trips: int | None = None,
) -> MainPath:
    """Weight every instruction of the main path by its executions in one tile trip.

    Parameters
    ----------
    instrs : list of Instr
        The whole kernel, from :func:`parse_sass`.
    staging_trips : int
        Source-level iterations of each staging loop in the lane that runs
        the most of them, for a full tile: ``N * N`` for the thread kernel,
        ``ceil(32/G * N * N / 32)`` for the group kernel.
    staging_trips_min : int, optional
        The same in the lane that runs the fewest (default: all lanes run
        ``staging_trips``).
    compute_trips : int, optional
        Trips of every rolled loop without global accesses (the lane-group
        kernel's elimination loop runs N times). Without it, such a loop is
        counted once and reported in ``unknown_loops``. These loops must not
        nest.
    rhs_trips : int, optional
        The solve kernel: trips of its loop over right-hand side columns
        (a rolled loop, not the tile loop, that holds both global loads and
        stores; :class:`Loop` ``rhs``). The caller models one k: the
        staged kernels take k = 1 outside the loop (0 trips), the stage-less
        ones in it (1 trip). Without it, such a loop is taken for a staging
        loop.

    The widest backward branch whose body holds both global loads and
    stores is the tile loop (weight 1: one trip is what is counted). Every other backward branch closes a loop that stayed rolled;
    each of these holds global loads or stores (the staging loops), one per
    source iteration, so its body runs ``staging_trips // unroll`` times,
    ``unroll`` being the number of global accesses in the body. The
    remainder iterations run in the code ptxas peels off before the loop
    (:func:`_peel`): the warp runs the peel up to the exit branch of the
    largest remainder among its lanes, and skips it when no lane has one. A
    rolled loop without global accesses has no known trip count: it is
    counted once and reported in ``unknown_loops``. Slow-path call
    sequences (a call whose block a guard branch skips) are not counted;
    every other call is counted through: its callee's path to ``RET``
    (:func:`_callee_path`) weighs what the call site weighs, and those
    instructions follow the main path's in ``instructions``.
    """
    if not instrs:
        raise SassError("no instructions")
    if staging_trips_min is None:
        staging_trips_min = staging_trips
    # Trailing `BRA self; NOP...` is alignment padding, not code.
    code = list(instrs)
    while code and (code[-1].base == "NOP" or (code[-1].base == "BRA" and code[-1].target == code[-1].addr)):
        code.pop()
    if not code:
        raise SassError("no instructions")
    kernel_bytes = code[-1].addr + 16
    end = _main_end(code)
    main = [i for i in code if i.addr < end]
    backward = [(i.target, i.addr) for i in main if i.target is not None and i.base == "BRA"
                and not i.opcode.startswith("BRA.DIV") and i.target <= i.addr]
    backward.sort()
    # The tile loop holds the whole computation, so both the loads and the
    # stores; a staging loop holds only one of them.
    tile = next(
        (
            (start, stop)
            for start, stop in backward
            if {"LDG", "STG"} <= {i.base for i in main if start <= i.addr <= stop}
        ),
        None,
    )
    loops: list[Loop] = []
    unknown = 0
    weights = {i.addr: 1.0 for i in main}
    rare = _rare_sequences(main, end)
    for a in rare:
        weights[a] = 0.0
    for start, stop in backward:
        if (start, stop) == tile:
            continue
        body = [i for i in main if start <= i.addr <= stop]
        unroll = sum(1 for i in body if i.base in ("LDG", "STG"))
        if rhs_trips is not None and {"LDG", "STG"} <= {i.base for i in body}:
            loops.append(Loop(start, stop, unroll, rhs_trips, len(body), rhs=True))
            for i in body:
                weights[i.addr] *= rhs_trips
            continue
        if unroll == 0:
            if compute_trips is None:
                unknown += 1
                loops.append(Loop(start, stop, 0, 0, len(body)))
                continue
            for other in loops:
                if other.unroll == 0 and not (other.end < start or stop < other.start):
                    raise SassError(f"nested compute loops at {start:#x} and {other.start:#x}: trips unknown")
            loops.append(Loop(start, stop, 0, compute_trips, len(body)))
            for i in body:
                weights[i.addr] *= compute_trips
            continue
        trips = staging_trips // unroll
        loops.append(Loop(start, stop, unroll, trips, len(body)))
        for i in body:
            weights[i.addr] *= trips
        if unroll > 1:
            kind = "LDG" if any(i.base == "LDG" for i in body) else "STG"
            peel = _peel(main, start, kind)
            if peel is not None:
                guard, exits, join = peel
                remainder = max(staging_trips % unroll, staging_trips_min % unroll)
                # Past the exit branch of the remainder-th iteration the peel
                # is skipped; with no remainder, all of it is.
                stop_at = exits[remainder - 1] if 0 < remainder <= len(exits) else (guard if remainder == 0 else join)
                for i in main:
                    if stop_at < i.addr < join:
                        weights[i.addr] = 0.0
    # Count through every call that runs whenever its block does: the
    # callee's path to RET, as often as the call site.
    called: dict[int, Instr] = {}
    for call in main:
        if call.base != "CALL" or call.pred or call.target is None or call.addr in rare or not weights[call.addr]:
            continue
        for ins in _callee_path(code, call.target):
            called[ins.addr] = ins
            weights[ins.addr] = weights.get(ins.addr, 0.0) + weights[call.addr] if ins.addr >= end else weights[ins.addr]
    instructions = main + [called[a] for a in sorted(called) if a >= end]
    return MainPath(instructions, end, kernel_bytes, loops, unknown, rare, weights)
