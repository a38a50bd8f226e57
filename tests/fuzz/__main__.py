"""The long fuzz run: ``python -m tests.fuzz --examples 20000 --target reader|cstore|all``.

The suite runs the same properties with a short, derandomized set of inputs; this runs N fresh
random inputs per target (hypothesis' database in ``.hypothesis/`` keeps every failure and
replays it first next time) and prints, per target, the inputs it ran and what became of them.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import pytest

TARGETS = {"reader": "tests/fuzz/test_fuzz_reader.py", "cstore": "tests/fuzz/test_fuzz_cstore.py"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000, help="inputs per target (default 3000)")
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    args = parser.parse_args(argv)
    os.environ["MURA_FUZZ_EXAMPLES"] = str(args.examples)  # read by tests.fuzz.strategies at import
    files = list(TARGETS.values()) if args.target == "all" else [TARGETS[args.target]]
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MURA_FUZZ_REPORT"] = summary = os.path.join(folder, "summary.jsonl")
        code = pytest.main(["-q", "-W", "ignore::UserWarning", *files])
        if os.path.exists(summary):
            print(open(summary).read(), end="")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
