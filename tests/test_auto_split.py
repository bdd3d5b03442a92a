"""The automatic split of a folder without split files (frcnn.data.split): seeded, stratified by class, kept in
the run dir, so that the run's later builds and scripts/eval.py see the same images; for VOC, YOLO and LabelMe."""

import json
import logging
import shutil
from collections import Counter

import pytest

from frcnn.data.build import build_dataset
from frcnn.data.split import SPLIT_FILE_NAME, stratified_split
from frcnn.errors import ConfigError
from frcnn.evaluation.eval_data import evaluation_data_cfg
from tests.cli_runner import run_script
from tests.data_trees import write_voc_tree
from tests.label_trees import many_images, write_labelme_tree, write_yolo_tree


# ----------------------------------------------------------------------------- the rule
def rare_class_set():
    """30 images: 5 with the rare class 2 (3 of them also hold class 1), 20 with class 1 only, 5 without objects."""
    names = [f"i{k:02d}" for k in range(30)]
    classes = [[2, 1] if k < 3 else [2] for k in range(5)] + [[1]] * 20 + [[]] * 5
    return names, classes


def test_stratified_split_holds_out_each_stratum_in_proportion():
    names, classes = rare_class_set()
    train, val = stratified_split(names, classes, 0.2, seed=0)
    assert len(val) == 6 and sorted(train + val) == names and not set(train) & set(val)
    by_stratum = Counter("rare" if int(n[1:]) < 5 else "common" if int(n[1:]) < 25 else "empty" for n in val)
    assert by_stratum == {"rare": 1, "common": 4, "empty": 1}  # 6 x 5/30, 6 x 20/30, 6 x 5/30
    assert stratified_split(names[::-1], classes[::-1], 0.2, seed=0) == (train, val)  # order does not matter
    assert stratified_split(names, classes, 0.2, seed=1)[1] != val  # the seed draws which ones


def test_stratified_split_rounds_and_keeps_an_image_on_each_side():
    two = stratified_split(["a", "b"], [[1], [1]], 0.2, seed=0)
    assert sorted(map(len, two)) == [1, 1]
    assert len(stratified_split([str(k) for k in range(10)], [[1]] * 10, 0.25, seed=0)[1]) == 3  # 2.5 rounds up
    assert len(stratified_split([str(k) for k in range(10)], [[1]] * 10, 0.99, seed=0)[0]) == 1
    # largest remainders: strata of 3 and 2 images at 0.5 -> 2.5 of 5 -> 3 images: 1.8 -> 2, 1.2 -> 1
    _, val = stratified_split(list("abcde"), [[1], [1], [1], [2], [2]], 0.5, seed=0)
    assert Counter(n in "abc" for n in val) == {True: 2, False: 1}
    with pytest.raises(ValueError, match="a split needs at least 2"):
        stratified_split(["a"], [[1]], 0.2, seed=0)


# ----------------------------------------------------------------------------- kept in the run dir
def yolo_cfg(compose_cfg, root, run_dir, *extra):
    return compose_cfg(["data=yolo", f"data.root={root}", *extra], run_dir)["data"]


def test_split_is_written_into_the_run_dir_and_read_back(compose_cfg, tmp_path, caplog):
    root = write_yolo_tree(tmp_path / "yolo", many_images(20))
    cfg = yolo_cfg(compose_cfg, root, tmp_path / "run")
    assert cfg["split_dir"] == str(tmp_path / "run")  # data.split_dir defaults to the run dir
    with caplog.at_level(logging.INFO, logger="frcnn"):
        train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    kept = json.loads((tmp_path / "run" / SPLIT_FILE_NAME).read_text())
    assert [r.name for r in train.records] == kept["train"] and [r.name for r in val.records] == kept["val"]
    assert len(kept["val"]) == 4
    assert sorted(kept["train"] + kept["val"]) == [f"images/img{k:03d}.jpg" for k in range(20)]
    assert sum(r.labels.tolist() == [2] for r in val.records) == 1  # 4 discs in 20: one of the 4 held out
    assert (kept["val_fraction"], kept["seed"], kept["data"]) == (0.2, 0, "yolo")
    assert f"automatic split of its 20 images, 16 train / 4 val, stratified by class (data.val_fraction=0.2, " \
           f"data.seed=0), written to {tmp_path / 'run' / SPLIT_FILE_NAME}" in caplog.text
    assert "read from" in caplog.text  # the val build read the train build's file
    # the folder changes: a later build of this run (a resumed stage, eval.py) keeps the split
    shutil.copy(root / "images" / "img000.jpg", root / "images" / "new.jpg")
    shutil.copy(root / "labels" / "img000.txt", root / "labels" / "new.txt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="frcnn"):
        again = build_dataset(cfg, "val")
    assert [r.name for r in again.records] == kept["val"]
    assert "1 image(s) of" in caplog.text and "are in neither split" in caplog.text
    fresh = build_dataset({**cfg, "split_dir": str(tmp_path / "other")}, "val")  # a new run splits the folder anew
    assert len(fresh) == 4 and json.loads((tmp_path / "other" / SPLIT_FILE_NAME).read_text())["train"] != kept["train"]


def test_a_kept_split_refuses_other_settings_and_missing_images(compose_cfg, tmp_path):
    root = write_yolo_tree(tmp_path / "yolo", many_images(10))
    cfg = yolo_cfg(compose_cfg, root, tmp_path / "run")
    val = build_dataset(cfg, "val")
    with pytest.raises(ConfigError, match=r"made with other settings \(data\.val_fraction=0\.2 there, 0\.3 now\)"):
        build_dataset({**cfg, "val_fraction": 0.3}, "val")
    with pytest.raises(ConfigError, match=r"data\.seed=0 there, 1 now"):
        build_dataset({**cfg, "seed": 1}, "train")
    gone = root / val.records[0].name
    gone.unlink()
    (root / "labels" / gone.with_suffix(".txt").name).unlink()
    with pytest.raises(ConfigError, match=rf"1 val image\(s\) of its {SPLIT_FILE_NAME} are not in {root}"):
        build_dataset(cfg, "val")
    (tmp_path / "run" / SPLIT_FILE_NAME).write_text("{}")
    with pytest.raises(ConfigError, match="is not an frcnn split file"):
        build_dataset(cfg, "val")
    with pytest.raises(ConfigError, match=r"data\.val_fraction=0: expected a number between 0 and 1"):
        build_dataset({**cfg, "val_fraction": 0}, "val")


def test_split_in_memory_without_a_split_dir_is_the_same_split(compose_cfg, tmp_path):
    root = write_yolo_tree(tmp_path / "yolo", many_images(10))
    cfg = yolo_cfg(compose_cfg, root, tmp_path / "run")
    kept = build_dataset(cfg, "val")
    in_memory = build_dataset({**cfg, "split_dir": None}, "val")
    assert [r.name for r in in_memory.records] == [r.name for r in kept.records]


def test_voc_folder_without_imagesets_is_split_automatically(compose_cfg, tmp_path):
    root = write_voc_tree(tmp_path / "voc")
    shutil.rmtree(root / "ImageSets")
    cfg = compose_cfg(["data=voc", f"data.root={root}", "data.classes=[box,disc]", "data.val_fraction=0.34"],
                      tmp_path / "run")["data"]
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert sorted(r.name for r in train.records + val.records) == [f"00000{k}" for k in range(1, 7)]
    assert len(val) == 2 and val.keep_difficult  # evaluation keeps difficult objects flagged, as with split files
    assert json.loads((tmp_path / "run" / SPLIT_FILE_NAME).read_text())["val"] == [r.name for r in val.records]
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")  # one split file: no automatic split
    with pytest.raises(ConfigError, match=r"no split file ImageSets/Main/test\.txt"):
        build_dataset(cfg, "val")


def test_labelme_folder_split_and_eval_reads_the_runs_split(compose_cfg, tmp_path):
    root = write_labelme_tree(tmp_path / "lm")
    run_dir = tmp_path / "run"
    cfg = compose_cfg(["data=labelme", f"data.root={root}"], run_dir)["data"]
    val = build_dataset(cfg, "val")
    assert len(val) == 1 and (run_dir / SPLIT_FILE_NAME).is_file()
    # scripts/eval.py composes the data node without a run dir: split_dir null, found beside the detector's run
    eval_cfg = evaluation_data_cfg({**cfg, "split_dir": None}, run_dir / "final" / "model.pt", scale=None)
    assert eval_cfg["split_dir"] == str(run_dir.resolve())
    assert [r.name for r in build_dataset(eval_cfg, "val").records] == [r.name for r in val.records]
    elsewhere = evaluation_data_cfg({**cfg, "split_dir": None}, tmp_path / "copied" / "model.pt", scale=None)
    assert elsewhere["split_dir"] is None  # no split file there: the folder is split in memory


# ----------------------------------------------------------------------------- train.py and eval.py
@pytest.mark.slow
def test_train_py_on_a_yolo_folder_without_split_files_then_eval_py_on_its_split(tmp_path):
    """train.py data=yolo on a generated folder (4 joint steps of 2 pictures): the split is logged at start-up and
    written into the run dir; eval.py, run after the folder has grown, scores the run's val pictures."""
    root = write_yolo_tree(tmp_path / "yolo", many_images(10))
    run_dir = tmp_path / "run"
    data = ["data=yolo", f"data.root={root}", "data.scales=[96]", "data.max_size=128", "data.num_workers=0"]
    result = run_script(["train.py", *data, "recipe=joint", "logger=none", "schedule.joint.images_per_batch=2",
                         "schedule.joint.max_steps=4", "schedule.joint.lr_steps=[100]",
                         "recipe.val_every_n_epochs=null", f"hydra.run.dir={run_dir}"])
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "data=yolo: no split files in" in out and "8 train / 2 val, stratified by class" in out
    kept = json.loads((run_dir / SPLIT_FILE_NAME).read_text())
    assert len(kept["train"]) == 8 and len(kept["val"]) == 2
    assert json.loads((run_dir / "metrics.json").read_text())["num_images"] == 2
    for k in range(10, 15):  # five more pictures: a fresh split would hold out 3
        for folder, suffix in (("images", ".jpg"), ("labels", ".txt")):
            shutil.copy(root / folder / f"img000{suffix}", root / folder / f"img{k:03d}{suffix}")
    result = run_script(["scripts/eval.py", f"checkpoint={run_dir / 'final' / 'model.pt'}", *data,
                         f"out_dir={tmp_path / 'eval'}", "proposal_recall.top_ns=[]", "coco=false"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 2
