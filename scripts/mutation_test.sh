#!/usr/bin/env bash
# Mutation score of the model code, VOC AP, own-data fitting, the config schema and the proposal store
# (issue 34, item 6): mutmut 3 with the quick tests that exercise them; the configuration is
# [tool.mutmut] in pyproject.toml, the survivors argued equivalent are in docs/mutation_survivors.md.
#
#   scripts/mutation_test.sh                              # every module (hours on 2 cores: docs/RELIABILITY.md)
#   scripts/mutation_test.sh "frcnn.evaluation.voc_ap*"   # one module's mutants (mutmut's name globs)
#
# mutmut copies src/, tests/ and conf/ into mutants/ (git-ignored), runs the quick tests once to learn which
# test calls which function, then, for each mutant, the tests that call its function, one process per
# mutant (MUTMUT_JOBS at a time, default: the CPU count). Results are kept in mutants/: a rerun tests only
# mutants of functions that changed; delete mutants/ to start over. The table and the survivor check
# (scripts/mutation_report.py) come last; the exit status is the check's.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python -c "import mutmut, sys; sys.exit(not mutmut.__version__.startswith('3.'))" 2>/dev/null; then
    echo "mutation_test.sh needs mutmut 3: pip install 'mutmut>=3,<4'" >&2
    exit 2
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one torch thread per mutant's test process
start=$(date +%s)
mutmut run --max-children "${MUTMUT_JOBS:-$(nproc)}" "$@"
echo "mutmut run took $(( $(date +%s) - start )) s"
python scripts/mutation_report.py --list
