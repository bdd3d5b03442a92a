"""Files another person could have written are data, never code (issue 13, "Model files never run code").

Every crafted file here would create a marker file if it were unpickled without restriction; each
test checks that frcnn refuses it with a message naming the file, and that the marker never appears.
"""

import builtins
import re

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from frcnn.checkpoint.safe_load import UnreadableFileError, UnsafeFileError, read_torch_file
from frcnn.cli.convert_detector import main as convert_main
from frcnn.cli.detect import main as detect_main
from frcnn.engine.proposal_files import load_proposal_file
from frcnn.engine.resume import resume_checkpoint
from frcnn.inference.detector_file import DetectorFileError, load_detector, save_detector
from frcnn.modeling.backbone import build_backbone
from frcnn.modeling.build import build_model
from tests.cli_runner import run_script
from tests.conftest import compose_config

REFUSED = "holds pickled objects frcnn does not load"


class CreatesFileWhenUnpickled:
    """Unpickling this calls open(marker, "w"): the marker file appears iff the object was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """(path of a current detector file, its model_cfg, its state dict) for the small backbone."""
    folder = tmp_path_factory.mktemp("detector")
    cfg = compose_config([], folder)
    model_cfg = {k: cfg[k] for k in ("backbone", "rpn", "roi_head")}
    torch.manual_seed(0)
    model = build_model(model_cfg, num_classes=2)
    save_detector(model, model_cfg, ["cat", "dog"], folder / "model.pt")
    return folder / "model.pt", model_cfg, model.state_dict()


def crafted(tmp_path, payload_key="state_dict", base=None):
    """A file that looks like a detector but carries an object that writes a marker when unpickled."""
    marker = tmp_path / "PWNED"
    payload = dict(base or {"format": "frcnn-detector-v1"})
    payload[payload_key] = CreatesFileWhenUnpickled(marker)
    path = tmp_path / "crafted.pt"
    torch.save(payload, path)
    return path, marker


def test_a_current_detector_file_loads_with_the_restricted_reader(detector):
    path, _, state = detector
    model, names = load_detector(path)
    assert names == ["cat", "dog"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert isinstance(read_torch_file(path, "detector file"), dict)  # nothing in it needs more than plain types


def test_crafted_detector_file_is_refused_by_detect_without_running_it(tmp_path, detector, capsys):
    path, marker = crafted(tmp_path, base=torch.load(detector[0], weights_only=True))
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48)).save(image)
    with pytest.raises(SystemExit) as stop:
        detect_main([str(path), str(image), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and str(path) in err and REFUSED in err and "a reference to io.open" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_crafted_detector_file_is_refused_by_the_eval_and_detect_commands(tmp_path, detector):
    """The real scripts in fresh processes: exit 2, one line naming the file, no marker."""
    path, marker = crafted(tmp_path, base=torch.load(detector[0], weights_only=True))
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48)).save(image)
    commands = [
        ["scripts/detect.py", str(path), str(image), "--out-dir", str(tmp_path / "det")],
        ["scripts/eval.py", f"checkpoint={path}", f"out_dir={tmp_path / 'eval'}", "data.num_val=2",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
    ]
    for command in commands:
        result = run_script(command)
        assert result.returncode == 2, result.stderr[-2000:]
        assert str(path) in result.stderr and REFUSED in result.stderr
        assert "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["proposal file", "checkpoint", "backbone weights", "stage weights"])
def test_every_other_file_frcnn_reads_refuses_pickled_objects(tmp_path, kind):
    marker = tmp_path / "PWNED"
    evil = CreatesFileWhenUnpickled(marker)
    if kind == "proposal file":
        path = tmp_path / "proposals.safetensors"  # a pickle where raw arrays belong: never unpickled
        torch.save({"format": "frcnn-proposals-v2", "num_images": 1, "boxes": [evil], "scores": []}, path)
        with pytest.raises(UnreadableFileError, match=r"proposals\.safetensors: not a readable proposal file"):
            load_proposal_file(path, 1)
    elif kind == "checkpoint":  # a resume checkpoint in the run dir: never used, moved aside
        (tmp_path / "checkpoints").mkdir()
        path = tmp_path / "checkpoints" / "last.ckpt"
        torch.save({"global_step": 5, "state_dict": {}, "optimizer_states": [], "loops": evil}, path)
        assert resume_checkpoint(tmp_path) == (None, 0)
        assert (tmp_path / "checkpoints" / "last.ckpt.corrupt").exists()
    elif kind == "backbone weights":
        path = tmp_path / "vgg.pth"
        torch.save({"features.0.weight": evil}, path)
        with pytest.raises(UnsafeFileError, match=rf"vgg\.pth: refused: this backbone weights file {REFUSED}"):
            build_backbone("small", weights=str(path))
    else:
        path = tmp_path / "model.pt"
        torch.save({"body.0.weight": evil}, path)
        with pytest.raises(UnsafeFileError, match=rf"model\.pt: refused: this stage weights file {REFUSED}"):
            read_torch_file(path, "stage weights file")
    assert not marker.exists()


def _truncated(tmp_path, detector):
    data = detector[0].read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 3])
    return tmp_path / "truncated.pt"


def _foreign(tmp_path, detector):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "foreign.pt")  # someone's .pt, not frcnn's
    return tmp_path / "foreign.pt"


def _other_architecture(tmp_path, detector):
    payload = torch.load(detector[0], weights_only=True)
    payload["state_dict"] = {k: v for k, v in list(payload["state_dict"].items())[1:]}  # a layer missing
    payload["state_dict"]["extra.weight"] = torch.zeros(2)
    torch.save(payload, tmp_path / "other.pt")
    return tmp_path / "other.pt"


def _lightning(tmp_path, detector):
    torch.save({"state_dict": {}, "global_step": 3, "pytorch-lightning_version": "2.5"}, tmp_path / "last.ckpt")
    return tmp_path / "last.ckpt"


def _newer(tmp_path, detector):
    payload = torch.load(detector[0], weights_only=True)
    torch.save({**payload, "format": "frcnn-detector-v9"}, tmp_path / "newer.pt")
    return tmp_path / "newer.pt"


def _text(tmp_path, detector):
    (tmp_path / "notes.pt").write_text("this is not a model\n")
    return tmp_path / "notes.pt"


@pytest.mark.parametrize("make, message", [
    (_truncated, r"truncated\.pt: not a readable detector file: truncated, damaged or not a PyTorch file"),
    (_foreign, r"foreign\.pt: not an frcnn detector file: .*no 'format' entry"),
    (_other_architecture, r"other\.pt: weights do not fit the architecture in its model_cfg: .*missing 1: .*"
                          r"unexpected 1: extra\.weight"),
    (_lightning, r"last\.ckpt: not an frcnn detector file: it is a Lightning training checkpoint.*final/model\.pt"),
    (_newer, r"newer\.pt: .*'frcnn-detector-v9'.*written by a newer frcnn: upgrade frcnn"),
    (_text, r"notes\.pt: not a readable detector file"),
], ids=["truncated", "foreign-pt", "other-architecture", "lightning-ckpt", "newer-format", "text-file"])
def test_bad_detector_files_get_one_line_naming_the_file(tmp_path, detector, capsys, make, message):
    path = make(tmp_path, detector)
    with pytest.raises((UnreadableFileError, DetectorFileError), match=message):
        load_detector(path)
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48)).save(image)
    with pytest.raises(SystemExit) as stop:
        detect_main([str(path), str(image), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_older_detector_file_with_omegaconf_values_is_refused_then_converted(tmp_path, detector, capsys):
    """An older frcnn could pickle OmegaConf containers in model_cfg: refused with the conversion
    command; converting needs --trust-source and gives a file that loads with the same weights."""
    _, model_cfg, state = detector
    old = tmp_path / "old.pt"
    torch.save({"format": "frcnn-detector-v1", "model_cfg": OmegaConf.create(model_cfg), "class_names": ["cat", "dog"],
                "unshared": False, "state_dict": state}, old)
    with pytest.raises(UnsafeFileError, match=r"old\.pt: refused: .*omegaconf.*scripts/convert_detector\.py .*"
                                              r"--trust-source"):
        load_detector(old)
    with pytest.raises(SystemExit) as stop:
        convert_main([str(old), str(tmp_path / "new.pt")])
    assert stop.value.code == 2 and "--trust-source" in capsys.readouterr().err
    assert convert_main([str(old), str(tmp_path / "new.pt"), "--trust-source"]) == 0
    model, names = load_detector(tmp_path / "new.pt")
    assert names == ["cat", "dog"] and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("bad", ["crafted backbone weights", "truncated image"])
def test_train_stops_with_one_line_naming_a_bad_file_from_outside(tmp_path, capsys, bad):
    """run_job (the train.py task): a bad weights file or data file -> exit 2, one line naming it."""
    from frcnn.cli.train import run_job
    from tests.data_trees import TREE_CLASSES, truncate_file, write_voc_tree

    overrides = ["recipe=joint", "logger=none", "schedule.joint.max_steps=1", "schedule.joint.lr_steps=[1]"]
    if bad == "crafted backbone weights":
        overrides += ["data.num_train=2", "data.num_val=1"]
        path = tmp_path / "weights.pth"
        torch.save({"body.0.weight": CreatesFileWhenUnpickled(tmp_path / "PWNED")}, path)
        overrides.append(f"backbone.weights={path}")
        expected = rf"{path}: refused: this backbone weights file {REFUSED}"
    else:
        root = write_voc_tree(tmp_path / "VOC2007")
        path = sorted((root / "JPEGImages").iterdir())[0]
        truncate_file(path)
        overrides += ["data=voc", f"data.root={root}", f"data.classes=[{','.join(TREE_CLASSES)}]", "data.scales=[64]",
                      "data.verify_images=true"]
        expected = rf"{path.name}"
    cfg = OmegaConf.create(compose_config(overrides, tmp_path / "run"))
    with pytest.raises(SystemExit) as stop:
        run_job(cfg)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert stop.value.code == 2 and len(lines) == 1 and "Traceback" not in err
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "PWNED").exists()
