"""frcnn.modeling.rpn where the suite left mutants alive (scripts/mutation_test.sh)."""
