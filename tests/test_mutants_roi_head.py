"""frcnn.modeling.roi_head where the suite left mutants alive (scripts/mutation_test.sh)."""
