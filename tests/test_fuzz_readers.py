"""The data readers under a seeded fuzzer (tests/fuzz_trees.py, tests/fuzz_mutations.py): 1,050
effective one-file mutations of a valid VOCdevkit and COCO tree (35 of each of 30 kinds; no-ops, which
change nothing the loaded split reads, are drawn on top, must load, and are not counted), each ending
in a load, a DataError naming the file and the field (counted as a skip under on_bad_sample=skip), or
a file-level DataError; never another exception, a hang or a non-finite tensor. The outcome table prints with `pytest -s`;
`python scripts/fuzz_report.py` runs the same fuzzer with other sizes and seeds.
"""

from __future__ import annotations

import pytest
import torch

from frcnn.data.checks import DataError
from frcnn.data.transforms import collate_detection
from frcnn.modeling.build import build_model
from tests.conftest import compose_config
from tests.fuzz_trees import (
    CASE_TIME_LIMIT_S,
    MUTATIONS,
    build_dataset,
    effective,
    mutated,
    outcome_table,
    run_case,
    run_cases,
    write_trees,
)

EFFECTIVE_PER_KIND = 35  # x 30 kinds = 1,050 effective cases


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    return write_trees(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.timeout(120)  # the issue: 1,000+ cases within two minutes
def test_fuzzed_trees_load_or_fail_with_a_named_data_error(trees, caplog):
    caplog.set_level("ERROR", logger="frcnn")  # a skip is counted in the table, not logged 1,200 times
    outcomes = run_cases(trees, EFFECTIVE_PER_KIND, seed=0)
    print("\n" + outcome_table(outcomes))
    assert len(effective(outcomes)) == EFFECTIVE_PER_KIND * len(MUTATIONS) >= 1000  # no-ops not counted
    crashes = [f"{o.kind} seed={o.seed} ({o.tree}, {o.detail}): {o.message[:300]}"
               for o in outcomes if o.result == "crash"]
    assert not crashes, f"{len(crashes)} cases broke the contract:\n" + "\n".join(crashes[:10])
    assert max(o.seconds for o in outcomes) < CASE_TIME_LIMIT_S
    results = {kind: {o.result for o in outcomes if o.kind == kind} for kind in MUTATIONS}
    for kind in ("imagesets.crlf", "imagesets.bom", "imagesets.blank_lines", "imagesets.spaces", "json.bom",
                 "xml.crlf_bom"):
        assert results[kind] == {"ok"}, kind  # harmless: they just work
    for kind in ("image.truncation", "xml.nan", "xml.wrong_type", "json.wrong_type", "imagesets.odd_ids"):
        assert "skipped" in results[kind], kind  # the fuzzer does reach the readers' checks


def test_a_case_is_reproducible_from_its_seed(trees):
    first, second = run_case(trees, "json.wrong_type", 3), run_case(trees, "json.wrong_type", 3)
    assert (first.detail, first.result, first.message) == (second.detail, second.result, second.message)
    assert all(path.read_bytes() == data for path, data in trees.original.items())  # every file restored


def _first_box_case(trees, kind: str) -> int:
    """Seed of the first case of ``kind`` that changes a box coordinate and still loads."""
    for seed in range(200):
        with mutated(trees, kind, seed) as (tree, mutation):
            if "bndbox/" in mutation.detail or "bbox[]" in mutation.detail:
                try:
                    build_dataset(trees, tree, "error")
                    return seed
                except DataError:
                    continue
    raise AssertionError(f"no loading box mutation among 200 {kind} cases")


@pytest.mark.parametrize("kind", ["xml.huge", "json.negative"])
def test_a_training_step_on_fuzzed_boxes_has_finite_losses(trees, kind, tmp_path):
    """Huge and negative coordinates that load (clipped to the image) give a finite loss and gradient."""
    cfg = compose_config([], tmp_path)  # the small backbone of the CPU experiment
    model_cfg = {"backbone": dict(cfg["backbone"]), "rpn": dict(cfg["rpn"]), "roi_head": dict(cfg["roi_head"])}
    torch.manual_seed(0)
    model = build_model(model_cfg, num_classes=2).train()
    with mutated(trees, kind, _first_box_case(trees, kind)) as (tree, _):
        dataset = build_dataset(trees, tree, "skip")
        images, targets = collate_detection([dataset[i] for i in range(len(dataset))])
    losses = model(images, targets)
    assert all(torch.isfinite(value).all() for value in losses.values()), losses
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_data_errors_share_one_base_and_keep_their_old_types():
    import pickle

    from frcnn.data.checks import BadAnnotationError, BadImageError, DatasetLayoutError, NoUsableImagesError

    for error in (BadAnnotationError("a.xml: x"), BadImageError("a.jpg: x"), NoUsableImagesError("VOC: none"),
                  DatasetLayoutError("/data", "no Annotations/ folder")):
        assert isinstance(error, DataError)
        again = pickle.loads(pickle.dumps(error))  # crosses DataLoader worker processes
        assert type(again) is type(error) and str(again) == str(error)
    assert isinstance(BadAnnotationError("x"), ValueError) and isinstance(BadImageError("x"), ValueError)
    assert isinstance(DatasetLayoutError("/data", "x"), FileNotFoundError)
