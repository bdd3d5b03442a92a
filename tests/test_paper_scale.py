"""Every paper preset family runs its whole recipe at the paper's scale (issue 11).

Each test composes ``experiment=paper/<preset>`` as ``python train.py`` does and runs it through
the entry point's own ``train`` (validation + recipe), overriding only what a CPU smoke run must:
``trainer=cpu``, ``backbone.weights=null`` (no network), one step per stage, the data root, and
``logger=csv``. Everything else is the preset's: VGG-16 / ZF at 600 px (longer side <= 1000), SGD,
2000 training proposals, 300 test proposals. The data is a tiny VOCdevkit / COCO tree written here:
two training images (landscape 200x150 -> 600x800, portrait 150x200 -> 800x600) and one wide
validation image (300x120 -> 400x1000, the longer-side cap).

Finite losses: the presets keep ``recipe.on_nonfinite_loss=error``, so a NaN or inf loss would stop
the stage with an error; the tests check that, and that every final weight is finite.
"""

import json
import math
import shutil

import pytest
import torch

from frcnn.cli.train import train
from frcnn.engine.proposal_files import PROPOSAL_FILE_NAME, load_proposal_file
from frcnn.inference.detector_file import load_detector
from tests.conftest import compose_config, memory_backed_dir
from tests.data_trees import coco_json, draw_image, write_voc_tree

VOC_CLASSES = 20
# id -> (width, height, [(class, VOC 1-based box, difficult)])
VOC_TRAIN = {
    "000001": (200, 150, [("cat", (21, 31, 120, 130), 0), ("dog", (101, 21, 190, 140), 0)]),  # landscape
    "000002": (150, 200, [("dog", (21, 41, 130, 180), 0)]),  # portrait
}
VOC_VAL = {"000003": (300, 120, [("cat", (41, 21, 160, 110), 0), ("dog", (181, 11, 290, 100), 0)])}  # 400x1000
ALT_STAGES = ("stage1_rpn", "stage1_det", "stage2_rpn", "stage2_det")
ONE_STEP_ALT = [f"schedule.alternating.{stage}.max_steps=1" for stage in ALT_STAGES]
ONE_STEP_JOINT = ["schedule.joint.max_steps=1"]

# image id -> (file, width, height, [(category id, [x, y, w, h], iscrowd)])
COCO_CATEGORIES = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
COCO_TRAIN = {1: ("1.jpg", 200, 150, [(17, [20.0, 30.0, 100.0, 100.0], 0), (18, [100.0, 20.0, 90.0, 120.0], 0)]),
              2: ("2.jpg", 150, 200, [(18, [20.0, 40.0, 110.0, 140.0], 0)])}
COCO_VAL = {3: ("3.jpg", 300, 120, [(17, [40.0, 20.0, 120.0, 90.0], 0), (18, [180.0, 10.0, 110.0, 90.0], 0)])}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """{"voc": VOCdevkit year root, "coco": COCO root with annotations/instances_{train,val}2017.json}."""
    base = tmp_path_factory.mktemp("paper_scale_data")
    voc = write_voc_tree(base / "VOCdevkit" / "VOC2007", {**VOC_TRAIN, **VOC_VAL},
                         {"trainval": list(VOC_TRAIN), "test": list(VOC_VAL)})
    coco = base / "coco"
    names = {c["id"]: c["name"] for c in COCO_CATEGORIES}
    for split, images in (("train2017", COCO_TRAIN), ("val2017", COCO_VAL)):
        for file_name, width, height, anns in images.values():
            draw_image(width, height, [(names[c], (x, y, x + w - 1, y + h - 1)) for c, (x, y, w, h), _ in anns],
                       coco / split / file_name)
        (coco / "annotations").mkdir(parents=True, exist_ok=True)
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco_json(images, COCO_CATEGORIES)))
    return {"voc": voc, "coco": coco}


def run_preset(preset: str, data_root, stage_lengths: list[str], run_dir) -> tuple[dict, dict]:
    """Compose ``experiment=paper/<preset>`` with the smoke-run overrides and train -> (config, metrics)."""
    overrides = [f"experiment=paper/{preset}", "trainer=cpu", "backbone.weights=null", f"data.root={data_root}",
                 "logger=csv", *stage_lengths]
    cfg = compose_config(overrides, run_dir)
    assert (cfg["data"]["scales"], cfg["data"]["max_size"]) == ([600], 1000)  # the paper's scale, from the preset
    assert cfg["recipe"]["on_nonfinite_loss"] == "error"  # a non-finite loss would have stopped the run
    return cfg, train(cfg)


def check_final(run_dir, metrics: dict, num_classes: int, num_val: int) -> None:
    """final/model.pt loads with finite weights; metrics.json is complete and finite."""
    model, class_names = load_detector(run_dir / "final" / "model.pt")
    assert len(class_names) == num_classes
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["num_images"] == num_val == metrics["num_images"]
    for key in ("map_50", "map_voc07"):
        assert 0.0 <= saved[key] <= 1.0
    assert set(saved["proposal_recall"]["recall"]) == {"300", "1000", "2000"}
    assert all(math.isfinite(v) for v in saved["coco"].values())


def check_proposals(run_dir, stage: str, images: dict) -> None:
    """The stage's proposal file: up to 2000 boxes per training image, in original-image pixels."""
    proposals = load_proposal_file(run_dir / stage / PROPOSAL_FILE_NAME, len(images))
    for index, (width, height, _) in enumerate(images.values()):
        boxes = proposals.boxes(index)
        assert 0 < len(boxes) <= 2000
        assert boxes[:, 2].max() <= width and boxes[:, 3].max() <= height  # mapped back from 600 px


def check_stages(run_dir, stages) -> None:
    for stage in stages:
        assert (run_dir / stage / "DONE").read_text().strip() == "1" and (run_dir / stage / "model.pt").is_file()


@pytest.fixture
def run_dir(tmp_path):
    """The run dir, deleted afterwards (a VGG-16 run writes ~1.5 GB of checkpoints per stage), in
    memory where the machine has room (tests.conftest.memory_backed_dir)."""
    with memory_backed_dir(tmp_path, "frcnn_paper_scale_", 12 * 2**30) as base:
        yield base / "run"
        shutil.rmtree(base / "run", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["voc07_vgg16_alt", "voc07_zf_alt", "voc07_vgg16_alt_pyrelease"])
def test_alternating_preset_runs_at_paper_scale(trees, run_dir, preset):
    cfg, metrics = run_preset(preset, trees["voc"], ONE_STEP_ALT, run_dir)
    assert cfg["recipe"]["name"] == "alternating" and not cfg["recipe"]["unshared"]
    check_stages(run_dir, ALT_STAGES)
    for stage in ("stage1_proposals", "stage2_proposals"):
        check_proposals(run_dir, stage, VOC_TRAIN)
    check_final(run_dir, metrics, VOC_CLASSES, len(VOC_VAL))
    if cfg["roi_head"].get("target_normalization") == "empirical":  # the release's per-class statistics, saved with it
        stds = torch.load(run_dir / "final" / "model.pt", weights_only=True)["state_dict"]["roi_head.target_stds"]
        assert stds.shape == (VOC_CLASSES + 1, 4) and bool((stds > 0).all())
        assert not torch.allclose(stds[1:], torch.tensor([0.1, 0.1, 0.2, 0.2]).expand(VOC_CLASSES, 4))


@pytest.mark.slow
def test_unshared_preset_runs_at_paper_scale(trees, run_dir):
    cfg, metrics = run_preset("voc07_vgg16_unshared", trees["voc"], ONE_STEP_ALT, run_dir)
    assert cfg["recipe"]["unshared"]
    check_stages(run_dir, ("stage1_rpn", "stage1_det"))
    check_proposals(run_dir, "stage1_proposals", VOC_TRAIN)
    assert not (run_dir / "stage2_rpn").exists()  # unshared stops after step 3
    check_final(run_dir, metrics, VOC_CLASSES, len(VOC_VAL))


@pytest.mark.slow
@pytest.mark.parametrize("preset, data, num_classes", [
    ("voc07_vgg16_joint", "voc", VOC_CLASSES),
    ("coco_vgg16_joint", "coco", len(COCO_CATEGORIES)),
])
def test_joint_preset_runs_at_paper_scale(trees, run_dir, preset, data, num_classes):
    cfg, metrics = run_preset(preset, trees[data], ONE_STEP_JOINT, run_dir)
    assert cfg["recipe"]["name"] == "joint" and cfg["data"]["name"] == data
    check_stages(run_dir, ("joint",))
    check_final(run_dir, metrics, num_classes, len(COCO_VAL if data == "coco" else VOC_VAL))
