"""frcnn.config.schema where the suite left mutants alive (scripts/mutation_test.sh)."""
