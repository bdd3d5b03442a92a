"""eval.py's mistakes (frcnn.evaluation.mistakes): the detection confusion matrix, precision / recall / F1 at a
score threshold and the best-F1 threshold per class, on hand-made detections with exact answers, and in
eval.py's metrics.json and confusion_matrix.png."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from frcnn.cli.eval import evaluate_checkpoint
from frcnn.data.synthetic import CLASS_NAMES
from frcnn.evaluation.mistakes import best_f1_threshold, confusion_matrix, detection_mistakes
from frcnn.evaluation.voc_ap import DetectionEvaluator
from frcnn.inference.detector_file import save_detector
from frcnn.modeling.build import build_model
from tests.conftest import compose_config
from tests.test_eval_detect import compose_eval

CAT, DOG = 1, 2


def box(x):
    return [x, 0.0, x + 10, 10]


@pytest.fixture
def evaluator():
    """Objects: cat A (x 0), dog B (20), cat C (40), dog D (60, difficult), cat E (80). Detections:
    1 cat on A .9 (right), 2 cat on A .8 (duplicate), 3 cat on B .7, 4 dog on B .6 (right), 5 dog on D .6
    (ignored: difficult), 6 dog on C .55, 7 cat on nothing .3 (under the threshold .5)."""
    evaluator = DetectionEvaluator(2, ["cat", "dog"])
    target = {"boxes": torch.tensor([box(0), box(20), box(40), box(60), box(80)]),
              "labels": torch.tensor([CAT, DOG, CAT, DOG, CAT]),
              "difficult": torch.tensor([False, False, False, True, False])}
    pred = {"boxes": torch.tensor([box(0), [0, 0, 10, 11], box(20), box(20), box(60), box(40), box(100)]),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.6, 0.55, 0.3]),
            "labels": torch.tensor([CAT, CAT, CAT, DOG, DOG, DOG, CAT])}
    evaluator.update([pred], [target])
    return evaluator


def test_confusion_matrix_counts_each_object_and_detection_once(evaluator):
    matrix = confusion_matrix(evaluator, score_thresh=0.5)
    # rows cat, dog, background; columns cat, dog, missed
    assert matrix.tolist() == [[1, 1, 1],   # A found; C detected as dog; E missed
                               [0, 1, 0],   # B found (by the dog detection, not the cat one that overlaps as much)
                               [2, 0, 0]]   # the duplicate on A and the cat on B (taken) are false positives
    assert confusion_matrix(evaluator, score_thresh=0.0)[2].tolist() == [3, 0, 0]  # the .3 cat counts too


def test_a_duplicate_stays_a_false_positive_beside_a_free_object_of_its_class():
    """As the devkit counts it (and so the precision): the second cat on F is a duplicate, although it overlaps
    the free cat G by 0.82; it is not paired with G on the diagonal."""
    evaluator = DetectionEvaluator(2, ["cat", "dog"])
    evaluator.update([{"boxes": torch.tensor([box(0), box(0)]), "scores": torch.tensor([0.9, 0.85]),
                       "labels": torch.tensor([CAT, CAT])}],
                     [{"boxes": torch.tensor([box(0), box(1)]), "labels": torch.tensor([CAT, CAT])}])
    assert confusion_matrix(evaluator, 0.5).tolist() == [[1, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_precision_recall_f1_at_the_threshold_and_the_best_threshold(evaluator):
    mistakes = detection_mistakes(evaluator, 0.5)
    cat, dog = mistakes["per_class"]["cat"], mistakes["per_class"]["dog"]
    assert (cat["precision"], cat["recall"], cat["objects"], cat["detections"]) == (1 / 3, 1 / 3, 3, 3)
    assert cat["f1"] == pytest.approx(1 / 3)
    assert (dog["precision"], dog["recall"], dog["f1"], dog["objects"]) == (0.5, 1.0, pytest.approx(2 / 3), 1)
    # cat cut at .9: P 1, R 1/3 (F1 .5) beats .8 (.4), .7 (1/3), .3 (2/7); dog at .6: P 1, R 1 (the .55 is wrong)
    assert cat["best_f1"] == {"score_thresh": pytest.approx(0.9), "precision": 1.0, "recall": 1 / 3, "f1": 0.5}
    assert dog["best_f1"] == {"score_thresh": pytest.approx(0.6), "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert mistakes["confusion"]["rows"] == ["cat", "dog", "background"]
    assert mistakes["confusion"]["columns"] == ["cat", "dog", "missed"]


def test_the_best_threshold_never_splits_equal_scores():
    evaluator = DetectionEvaluator(1, ["cat"])
    evaluator.update([{"boxes": torch.tensor([box(0), box(50)]), "scores": torch.tensor([0.8, 0.8]),
                       "labels": torch.tensor([1, 1])}],
                     [{"boxes": torch.tensor([box(0)]), "labels": torch.tensor([1])}])
    assert best_f1_threshold(evaluator, 1) == {"score_thresh": pytest.approx(0.8), "precision": 0.5, "recall": 1.0,
                                               "f1": pytest.approx(2 / 3)}


def test_eval_writes_the_mistakes_and_draws_them(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = compose_config([], run)
    torch.manual_seed(0)
    model_cfg = {k: cfg[k] for k in ("backbone", "rpn", "roi_head")}
    save_detector(build_model(model_cfg, num_classes=5), model_cfg, list(CLASS_NAMES), run / "final" / "model.pt")
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    out = tmp_path / "eval"
    metrics = evaluate_checkpoint(compose_eval([f"checkpoint={run / 'final' / 'model.pt'}", f"out_dir={out}",
                                                "data.num_val=4", "coco=false", "proposal_recall.top_ns=[]",
                                                "score_thresh=0.1"]))
    mistakes = json.loads((out / "metrics.json").read_text())["mistakes"]
    assert mistakes == json.loads(json.dumps(metrics["mistakes"])) and mistakes["score_thresh"] == 0.1
    counts = np.asarray(mistakes["confusion"]["counts"])
    assert counts.shape == (6, 6) and counts.sum() > 0
    for index, name in enumerate(CLASS_NAMES):
        row = mistakes["per_class"][name]
        assert row["objects"] == counts[index].sum() and row["detections"] == counts[:, index].sum()
    with Image.open(out / "confusion_matrix.png") as picture:
        assert picture.format == "PNG" and picture.width > 600
    printed = capsys.readouterr().out
    assert "best F1" in printed and "most frequent mistakes" in printed
