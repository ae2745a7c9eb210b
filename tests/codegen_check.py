#!/usr/bin/python3
"""Checks the compiled micro-kernels for accumulators kept on the stack.

Usage: codegen_check.py OBJDUMP LIBRARY

The register-block micro-kernels (kernels/ukernels/) are written so that
their accumulators live in vector registers. gcc 12 quietly keeps an
accumulator array on the stack when one loop indexing it is left rolled
until after its scalar replacement pass; the kernel still computes the same
bits, only every FMA becomes a load and a store through L1. That happened to
PvFourRowsOnePass (GQA-4 decode's P·V: int8 K/V decode took 0.70x the time once
fixed), and no test of results can see it. This one reads the disassembly.

An accumulator on the stack shows as an FMA whose addend is a stack slot:
`vfmadd213ps OFF(%rsp), b, a` (a = b·a + mem). A multiplicand from the stack
(`vfmadd231ps OFF(%rsp), ...`, a spilled operand) is a load, not a
load-and-store chain, and is not counted.

Checked: every register-block kernel of the AVX3 target (32 registers: each
block is sized to fit) and the AVX2 tile kernels of at most kTileVectors = 2
vectors (the ones AVX2 dispatches; its 6 x 3 and 6 x 4 instances exist only
because the switch over vector counts instantiates them). Allowed:
PvFourRowsOnePass keeps its fourth row in L1 by design (8 vectors a key; up
to 16 such FMAs in its code).
"""

import re
import subprocess
import sys

# Kernel families whose accumulators must stay in registers.
# (Always-inlined kernels such as QkPackedTile have no symbol of their own.)
FAMILIES = ("ScoreTileKernel", "PvTileKernel", "ScoreRowsFourKeys", "ScoreRowsQResident",
            "ScoreFourRowsOnePass", "PvFourRowsOnePass")
# Stack-addend FMAs a function may have by design, per family.
ALLOWED = {"PvFourRowsOnePass": 16}

FUNC = re.compile(r"^[0-9a-f]+ <(.*)>:$")
STACK_ADDEND = re.compile(r"\bvfmadd213p[sd]\s+-?(0x[0-9a-f]+)?\((%rsp|%rbp)")


def checked(name):
    """The kernel family of a function the check covers, or None."""
    for family in FAMILIES:
        if f"::{family}<" not in name:
            continue
        if "attn::N_AVX3::" in name:
            return family
        if "attn::N_AVX2::" in name and family in ("ScoreTileKernel", "PvTileKernel"):
            # Template arguments: <rows, vectors, ...>.
            args = name.split(f"{family}<", 1)[1].split(",")
            if int(args[1].strip().rstrip(">")) <= 2:
                return family
    return None


def main():
    objdump, library = sys.argv[1], sys.argv[2]
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", library],
                          check=True, capture_output=True, text=True).stdout
    counts, family_of = {}, {}
    name = None
    for line in text.splitlines():
        m = FUNC.match(line)
        if m:
            name = m.group(1)
            family = checked(name)
            if family:
                counts.setdefault(name, 0)
                family_of[name] = family
            continue
        if name in counts and STACK_ADDEND.search(line):
            counts[name] += 1
    if not counts:
        print(f"no micro-kernel functions found in {library}: nothing checked")
        return 1
    bad = {n: c for n, c in counts.items() if c > ALLOWED.get(family_of[n], 0)}
    print(f"{len(counts)} micro-kernel functions checked, {len(bad)} with accumulators on the stack")
    for n, c in sorted(bad.items()):
        print(f"  {c:4d} stack-addend FMAs: {n}")
    if bad:
        print("An accumulator loop was left rolled: put ATTN_UNROLLED (kernels/ukernels/common-inl.h)"
              " before every loop that indexes the accumulators.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
