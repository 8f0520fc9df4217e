"""`python -m benchmarks [--quick] [NAME ...]`: run every bench_*.py module's main(), or the
named ones (`data` runs benchmarks/bench_data.py)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from benchmarks.common import QUICK_ENV


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"from: {', '.join(names)}")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer repeats (a smoke test, not a figure)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from "
                     f"{', '.join(names)}")
    if args.quick:
        os.environ[QUICK_ENV] = "1"
    for name in args.names or names:
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
