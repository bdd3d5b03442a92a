"""Per-module mutation score of the last `mutmut run` (scripts/mutation_test.sh), and its survivors.

Reads mutmut's result files (mutants/<path>.meta) and prints, per mutated module, the mutants, how many the
tests killed (a test failed) or timed out, how many survived, had no test or were not run, and the score
(killed + timeout) / tested. Then it checks every survivor against docs/mutation_survivors.md, the committed
list of surviving mutants argued equivalent (each mutant's name in back-quotes, beside its argument):
exit status 1 when a survivor is not in that list, or when a listed one no longer survives (killed, or its
function changed so that mutmut renumbered it), 0 otherwise.

    python scripts/mutation_report.py            # the table and the check
    python scripts/mutation_report.py --list     # also each survivor's name, for `mutmut show NAME`
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SURVIVORS_DOC = REPO_ROOT / "docs" / "mutation_survivors.md"

# mutmut 3's exit codes (mutmut/stats.py status_by_exit_code): 1 and 3 a test failed, SIGXCPU / 36 / 255 a timeout
KILLED, TIMEOUT, SURVIVED, NO_TESTS, NOT_RUN, OTHER = "killed", "timeout", "survived", "no tests", "not run", "other"


def status(exit_code: int | None) -> str:
    if exit_code is None:
        return NOT_RUN
    if exit_code in (1, 3):
        return KILLED
    if exit_code in (24, -24, 152, 36, 255):
        return TIMEOUT
    if exit_code == 0:
        return SURVIVED
    if exit_code in (5, 33):
        return NO_TESTS
    return OTHER


def results(mutants_dir: Path) -> dict[str, dict[str, int | None]]:
    """{source path (src/...py): {mutant name: exit code}} of every mutated file mutmut recorded."""
    out = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            out[str(meta.relative_to(mutants_dir))[: -len(".meta")]] = codes
    return out


def listed_equivalent(doc: Path) -> set[str]:
    """Mutant names the survivors document argues equivalent: every `frcnn....__mutmut_N` in back-quotes."""
    if not doc.is_file():
        return set()
    return set(re.findall(r"`(frcnn\.[^`\s]+__mutmut_\d+)`", doc.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=Path, default=REPO_ROOT / "mutants", help="mutmut's folder")
    parser.add_argument("--list", action="store_true", help="print each unlisted survivor's name")
    args = parser.parse_args(argv)
    by_file = results(args.mutants)
    if not by_file:
        print(f"no mutmut results under {args.mutants}: run scripts/mutation_test.sh first", file=sys.stderr)
        return 2

    columns = (KILLED, TIMEOUT, SURVIVED, NO_TESTS, NOT_RUN, OTHER)
    print(f"{'module':46} {'mutants':>7} " + " ".join(f"{c:>8}" for c in columns) + f" {'score':>7}")
    total = Counter()
    survivors: list[str] = []
    for path, codes in by_file.items():
        counts = Counter(status(code) for code in codes.values())
        total.update(counts)
        survivors += [name for name, code in codes.items() if status(code) == SURVIVED]
        print(f"{path:46} {len(codes):7d} " + " ".join(f"{counts[c]:8d}" for c in columns) + f" {score(counts):>7}")
    print(f"{'all':46} {sum(total.values()):7d} " + " ".join(f"{total[c]:8d}" for c in columns)
          + f" {score(total):>7}")

    equivalent = listed_equivalent(SURVIVORS_DOC)
    unlisted = sorted(set(survivors) - equivalent)
    status_of = {name: status(code) for codes in by_file.values() for name, code in codes.items()}
    stale = sorted(name for name in equivalent if status_of.get(name) in (KILLED, TIMEOUT))
    argued = len(set(survivors) & equivalent)
    print(f"\nsurvivors: {len(survivors)}, argued equivalent in {SURVIVORS_DOC.relative_to(REPO_ROOT)}: {argued}, "
          f"not argued: {len(unlisted)}")
    if args.list:
        for name in unlisted:
            print("  survived:", name)
    for name in stale:
        print(f"  listed as a survivor but no longer survives: {name}")
    return 1 if unlisted or stale else 0


def score(counts: Counter) -> str:
    """(killed + timeout) / the mutants a test ran on (no test counts against; not run is left out)."""
    tested = sum(counts.values()) - counts[NOT_RUN]
    return f"{100.0 * (counts[KILLED] + counts[TIMEOUT]) / tested:.1f}%" if tested else "-"


if __name__ == "__main__":
    sys.exit(main())
