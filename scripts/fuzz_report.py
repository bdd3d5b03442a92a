"""Run the data-reader fuzzer of tests/fuzz_trees.py and print its outcome table (Markdown).

`python scripts/fuzz_report.py [--effective-per-kind N] [--seed S]`; only effective cases (a mutation of
something the loaded split reads) count, no-ops are drawn on top and shown apart; crashes are listed
under the table and make the exit status 1. The same fuzzer runs in CI (tests/test_fuzz_readers.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ is importable

from tests.fuzz_trees import effective, outcome_table, run_cases, write_trees  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effective-per-kind", type=int, default=35, help="effective cases per mutation kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("frcnn").setLevel(logging.ERROR)  # skips are counted in the table, not logged
    with tempfile.TemporaryDirectory() as tmp:
        trees = write_trees(Path(tmp))
        start = time.perf_counter()
        outcomes = run_cases(trees, args.effective_per_kind, args.seed)
        seconds = time.perf_counter() - start
    print(outcome_table(outcomes))
    print(f"\n{len(effective(outcomes))} effective cases (+ {len(outcomes) - len(effective(outcomes))} no-ops) "
          f"in {seconds:.1f} s (seed {args.seed})")
    crashes = [o for o in outcomes if o.result == "crash"]
    for o in crashes:
        print(f"CRASH {o.kind} seed={o.seed} tree={o.tree}: {o.detail}\n    {o.message[:400]}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
