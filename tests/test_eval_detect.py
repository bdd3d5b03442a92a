"""scripts/eval.py and scripts/detect.py on an untrained tiny detector and generated images."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from frcnn.cli.detect import BadImageError, detect_files, draw_detections
from frcnn.cli.detect import main as detect_main
from frcnn.cli.eval import evaluate_checkpoint
from frcnn.data.synthetic import CLASS_NAMES, ShapesDataset
from frcnn.evaluation.detections_io import check_coco_results, coco_result_records
from frcnn.evaluation.plots import plot_pr_curves
from frcnn.evaluation.voc_ap import DetectionEvaluator
from frcnn.inference.detector_file import checkpoint_input_scale, save_detector
from frcnn.modeling.build import build_model
from tests.cli_runner import run_script
from tests.conftest import REPO_ROOT, compose_config


def compose_eval(overrides):
    """conf/eval.yaml as `python scripts/eval.py <overrides>` composes it, as a plain dict."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
        cfg = compose("eval", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def assert_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run dir like training leaves: .hydra/config.yaml and final/model.pt (untrained weights)."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_config([], run)
    torch.manual_seed(0)
    model_cfg = {k: cfg[k] for k in ("backbone", "rpn", "roi_head")}
    save_detector(build_model(model_cfg, num_classes=5), model_cfg, list(CLASS_NAMES), run / "final" / "model.pt")
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    return run


# ----------------------------------------------------------------------------- eval
def test_eval_writes_metrics_table_and_pictures(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    cfg = compose_eval([f"checkpoint={run_dir / 'final' / 'model.pt'}", f"out_dir={out}", "data.num_val=4",
                        "batch_size=2"])
    metrics = evaluate_checkpoint(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert {"map_50", "map_voc07", "ap_per_class", "coco", "proposal_recall", "num_images"} <= set(saved)
    assert set(saved["ap_per_class"]) == set(CLASS_NAMES) and saved["num_images"] == 4
    assert set(saved["coco"]) == {"map", "map_50", "map_75", "map_small", "map_medium", "map_large"}
    assert set(saved["proposal_recall"]["recall"]) == {"300", "1000", "2000"}
    assert set(saved["proposal_recall"]["average_recall"]) == {"300", "1000", "2000"}
    table = (out / "ap_table.md").read_text()
    assert table.startswith("| class |") and all(f"| {name} |" in table for name in CLASS_NAMES)
    assert_png(out / "pr_curves.png")
    assert_png(out / "proposal_recall.png")
    printed = capsys.readouterr().out
    assert "mAP" in printed and "COCO AP" in printed and "average recall" in printed


def test_eval_runs_at_the_checkpoints_training_scale_unless_scale_is_given(run_dir, tmp_path, caplog):
    checkpoint = run_dir / "final" / "model.pt"  # its run trained at 256 (checked by checkpoint_input_scale)
    common = [f"checkpoint={checkpoint}", "data.num_val=2", "batch_size=2", "proposal_recall.top_ns=[]", "coco=false"]
    metrics = evaluate_checkpoint(compose_eval([*common, f"out_dir={tmp_path / 'a'}", "data.scales=[600]"]))
    assert metrics["input_scale"] == [256, 1000]
    assert "training scale 256" in caplog.text and "data.scales=[600]" in caplog.text
    metrics = evaluate_checkpoint(compose_eval([*common, f"out_dir={tmp_path / 'b'}", "scale=192"]))
    assert metrics["input_scale"][0] == 192


def test_eval_refuses_a_checkpoint_with_other_classes(run_dir, tmp_path):
    cfg = compose_config([], tmp_path)
    model_cfg = {k: cfg[k] for k in ("backbone", "rpn", "roi_head")}
    other = tmp_path / "other.pt"
    save_detector(build_model(model_cfg, num_classes=5), model_cfg, ["a", "b", "c", "d", "e"], other)
    eval_cfg = compose_eval([f"checkpoint={other}", f"out_dir={tmp_path / 'out'}", "data.num_val=2"])
    with pytest.raises(ValueError, match=r"other\.pt was trained on classes \['a'.*data='shapes' has \['circle'"):
        evaluate_checkpoint(eval_cfg)


def test_pr_curves_come_from_the_voc_evaluator_and_are_drawn(tmp_path):
    evaluator = DetectionEvaluator(num_classes=2, class_names=["cat", "dog"])
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 1])}
    pred = {"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
            "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1])}
    evaluator.update([pred], [gt])
    metrics = evaluator.compute()
    curves = evaluator.pr_curves()
    np.testing.assert_allclose(curves["cat"]["recall"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(curves["cat"]["precision"], [1.0, 0.5, 2 / 3])
    assert curves["cat"]["ap"] == metrics["ap_per_class"]["cat"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert curves["dog"]["ap"] is None and curves["dog"]["npos"] == 0  # absent class
    assert_png(plot_pr_curves(curves, tmp_path / "pr.png"))


# ----------------------------------------------------------------------------- detect
def test_detect_maps_boxes_back_to_original_pixels():
    from frcnn.inference.predictor import Detector

    class OneBox(torch.nn.Module):  # one box in network-input pixels
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, images, image_scales=None):
            self.seen.append((tuple(images[0].shape), image_scales))
            return [{"boxes": torch.tensor([[20.0, 40.0, 100.0, 120.0]]), "scores": torch.tensor([0.9]),
                     "labels": torch.tensor([2])}]

    model = OneBox()
    image = Image.fromarray(np.zeros((100, 200, 3), dtype=np.uint8))  # H 100, W 200
    out = Detector(model, CLASS_NAMES, scale=200, max_size=1000)(image)  # x2 (paper rule)
    assert model.seen == [((3, 200, 400), [2.0])]  # the resize factor: rpn.min_size is in original pixels
    assert out.boxes.tolist() == [[10.0, 20.0, 50.0, 60.0]] and out.labels.tolist() == [2]
    assert out.class_names == [CLASS_NAMES[1]] and out.image_size == (100, 200)


def test_draw_detections_draws_the_box_and_keeps_the_size():
    image = Image.fromarray(np.full((80, 120, 3), 255, dtype=np.uint8))
    drawn = draw_detections(image, torch.tensor([[20.0, 30.0, 90.0, 70.0]]), torch.tensor([1]),
                            torch.tensor([0.87]), CLASS_NAMES)
    assert drawn.size == image.size and np.asarray(image).min() == 255  # input untouched
    pixels = np.asarray(drawn)
    assert (pixels[50, 20] != 255).any() and (pixels[50, 90] != 255).any()  # left / right edges
    assert (pixels[50, 55] == 255).all()  # box interior unchanged


def test_coco_records_use_xywh_and_one_based_labels():
    records = coco_result_records(7, "a.png", torch.tensor([[10.0, 20.0, 50.0, 80.0]]), torch.tensor([0.5]),
                                  torch.tensor([3]))
    assert records == [{"image_id": 7, "file_name": "a.png", "category_id": 3, "bbox": [10.0, 20.0, 40.0, 60.0],
                        "score": 0.5}]
    check_coco_results(records, num_classes=5)
    with pytest.raises(ValueError, match="record 0: category_id 0"):
        check_coco_results([{**records[0], "category_id": 0}])


@pytest.fixture
def image_folder(tmp_path):
    """Two generated shapes images (png and jpg, different sizes) and a corrupt jpg."""
    folder = tmp_path / "images"
    folder.mkdir()
    small = ShapesDataset("val", num_images=2, image_size=(160, 224))
    Image.fromarray(small.raw(0)[0]).save(folder / "a.png")
    Image.fromarray(ShapesDataset("val", num_images=2).raw(1)[0]).save(folder / "b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return folder


def test_detect_writes_drawn_images_and_coco_results(run_dir, image_folder, tmp_path):
    out = tmp_path / "det"
    summary = detect_files(run_dir / "final" / "model.pt", [image_folder], out, score_thresh=0.0)
    assert summary["scale"] == (256, 1000)  # the run's .hydra/config.yaml: data.scales[0], data.max_size
    assert summary["images"] == 2 and summary["detections"] > 0
    for name, fmt in (("a.png", "PNG"), ("b.jpg", "JPEG")):
        with Image.open(image_folder / name) as original, Image.open(out / name) as drawn:
            assert drawn.format == fmt and drawn.size == original.size
    records = json.loads((out / "detections.json").read_text())
    check_coco_results(records, num_classes=5)
    assert {r["file_name"] for r in records} <= {"a.png", "b.jpg"}
    assert all(r["score"] >= 0.0 for r in records)
    png_records = [r for r in records if r["file_name"] == "a.png"]
    assert png_records  # an untrained head still scores every class ~1/6 > 0.05
    assert not np.array_equal(np.asarray(Image.open(out / "a.png")), np.asarray(Image.open(image_folder / "a.png")))
    for r in png_records:  # boxes in original pixels of the 224 x 160 image
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 224.01 and y + h <= 160.01

    # the sidecar makes the results loadable by pycocotools
    from pycocotools.coco import COCO

    sidecar = json.loads((out / "categories.json").read_text())
    assert sidecar["categories"][0] == {"id": 1, "name": "circle"} and len(sidecar["images"]) == 2
    gt = COCO()
    gt.dataset = {**sidecar, "annotations": []}
    gt.createIndex()
    loaded = gt.loadRes(str(out / "detections.json"))
    assert len(loaded.getAnnIds()) == len(records)


def test_detect_names_a_corrupt_image_or_skips_it(run_dir, image_folder, tmp_path):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(BadImageError, match="broken.jpg"):
        detect_files(run_dir / "final" / "model.pt", [image_folder], tmp_path / "det", scale=128)
    summary = detect_files(run_dir / "final" / "model.pt", [image_folder], tmp_path / "det", scale=128, skip_bad=True)
    assert summary["images"] == 2 and [p.endswith("broken.jpg") for p in summary["skipped"]] == [True]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        detect_files(run_dir / "final" / "model.pt", [image_folder / "missing.png"], tmp_path / "det")


def test_scale_falls_back_to_the_paper_value_without_a_run_config(run_dir, tmp_path):
    lone = tmp_path / "lone" / "model.pt"
    lone.parent.mkdir()
    lone.write_bytes((run_dir / "final" / "model.pt").read_bytes())
    assert checkpoint_input_scale(lone) is None
    assert checkpoint_input_scale(run_dir / "final" / "model.pt") == (256, 1000)


# ----------------------------------------------------------------------------- the scripts as users call them
@pytest.mark.slow
def test_eval_and_detect_scripts_run_from_the_command_line(run_dir, image_folder, tmp_path):
    checkpoint = run_dir / "final" / "model.pt"
    result = run_script(["scripts/eval.py", f"checkpoint={checkpoint}", f"out_dir={tmp_path / 'eval'}",
                         "data.num_val=2", "proposal_recall.top_ns=[100,300]"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mAP" in result.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["proposal_recall"]["recall"]) == {"100", "300"}
    assert (tmp_path / "eval" / ".hydra" / "config.yaml").exists()

    (image_folder / "broken.jpg").write_bytes(b"not a jpeg")
    cmd = ["scripts/detect.py", str(checkpoint), str(image_folder), "--out-dir", str(tmp_path / "det"),
           "--score-thresh", "0.1", "--skip-bad"]
    result = run_script(cmd)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 images" in result.stdout and "broken.jpg" in result.stderr  # the warning names the file
    assert (tmp_path / "det" / "a.png").exists() and (tmp_path / "det" / "detections.json").exists()


def test_detect_command_line_exits_2_naming_the_bad_file(run_dir, image_folder, tmp_path, capsys):
    (image_folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit) as stop:
        detect_main([str(run_dir / "final" / "model.pt"), str(image_folder), "--out-dir", str(tmp_path / "det")])
    assert stop.value.code == 2 and "broken.png: cannot read the image" in capsys.readouterr().err


def test_coco_boxes_are_mapped_back_to_original_pixels():
    from frcnn.evaluation.evaluate import detections_in_original_pixels

    image = torch.zeros(3, 200, 400)  # network input: the 100 x 200 original rescaled x2
    dets, targets = detections_in_original_pixels([{"boxes": torch.tensor([[20.0, 40.0, 100.0, 120.0]])}],
                                       [{"boxes": torch.tensor([[0.0, 0.0, 40.0, 20.0]]), "orig_size": (100, 200)}],
                                       [image])
    assert dets[0]["boxes"].tolist() == [[10.0, 20.0, 50.0, 60.0]]
    assert targets[0]["boxes"].tolist() == [[0.0, 0.0, 20.0, 10.0]] and targets[0]["orig_size"] == (100, 200)
