"""frcnn.modeling.faster_rcnn and frcnn.modeling.build where the suite left mutants alive (scripts/mutation_test.sh)."""
