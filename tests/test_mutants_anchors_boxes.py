"""frcnn.modeling.anchors, frcnn.modeling.boxes and frcnn.modeling.sampling where the suite left mutants alive (scripts/mutation_test.sh)."""
