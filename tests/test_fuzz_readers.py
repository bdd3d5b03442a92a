"""The data readers under a seeded fuzzer (tests/fuzz_trees.py, tests/fuzz_mutations.py): 1,050
effective one-file mutations of a valid VOCdevkit and COCO tree (35 of each of 30 kinds; no-ops, which
change nothing the loaded split reads, are drawn on top, must load, and are not counted), each ending
in a load, a DataError naming the file and the field (counted as a skip under on_bad_sample=skip), or
a file-level DataError; never another exception, a hang or a non-finite tensor. The outcome table prints with `pytest -s`;
`python scripts/fuzz_report.py` runs the same fuzzer with other sizes and seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
    check_items,
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


OPENED: list[str] | None = None  # paths opened while a load is audited (sys.audit "open" events)


def _record_open(event, args):
    if event == "open" and OPENED is not None and isinstance(args[0], (str, Path)):
        OPENED.append(str(args[0]))


def _files_a_load_opens(trees, tree: str) -> set[Path]:
    """The tree's files that building the split's data set and reading every item opens, as the
    interpreter reports them (an audit hook: independent of the fuzzer's own list)."""
    global OPENED
    OPENED = []
    try:
        check_items(build_dataset(trees, tree, "error"))
        opened = {Path(path).resolve() for path in OPENED}
    finally:
        OPENED = None
    return {path for path in trees.original if path.resolve() in opened}


def test_only_mutations_of_files_the_split_opens_count_as_effective(trees):
    """A case counts toward the 1,000 only when its file is one the loaded split opens: damage to the
    test split's images and annotations (never opened) is a no-op, however many bytes it changes."""
    sys.addaudithook(_record_open)
    opened = {tree: _files_a_load_opens(trees, tree) for tree in ("voc", "coco")}
    assert any(path.parent.name == "Annotations" for path in opened["voc"]) and opened["coco"]
    outside = 0
    for kind in MUTATIONS:
        for seed in range(8):
            with mutated(trees, kind, seed) as (tree, mutation):
                if mutation.file not in opened[tree]:
                    outside += 1
                    assert mutation.noop, f"{kind} seed={seed}: {mutation.file.name} is never opened, counted as effective"
    assert outside > 0  # the draws do reach files outside the split


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
