"""Run the benchmarks: `python -m bench [--quick] [name ...]` (names without `_bench`).

`platform` (AIA against the bare platform floor) includes `cold_start`, so a run
of everything runs cold starts once; name `cold_start` alone to run just it.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

# Benchmarks another one runs as part of itself: skipped when that one runs too.
PART_OF = {"cold_start": "platform"}


def available() -> list[str]:
    """Benchmark modules are found, not listed, so adding one needs no edit here."""
    here = [str(Path(__file__).parent)]
    return sorted(m.name for m in pkgutil.iter_modules(here) if m.name.endswith("_bench"))


def main(argv: list[str] | None = None) -> int:
    names = [name.removesuffix("_bench") for name in available()]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("only", nargs="*", metavar="name", help=f"one of {', '.join(names)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(names)}")
    chosen = args.only or names
    for name in chosen:
        if PART_OF.get(name) in chosen:
            print(f"== {name} == (part of {PART_OF[name]})")
            continue
        module = importlib.import_module(f"bench.{name}_bench")
        print(f"== {name} ==")
        module.main(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
