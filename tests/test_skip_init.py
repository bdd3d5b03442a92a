"""frcnn.checkpoint.skip_init: a model built to be loaded is not filled first, and nothing else changes."""

import pytest
import torch

from frcnn.checkpoint.skip_init import INIT_FILLERS, weights_left_unfilled
from frcnn.inference.detector_file import load_detector, save_detector
from frcnn.modeling.build import build_model
from tests.conftest import compose_config


def test_fillers_do_nothing_inside_draw_no_random_numbers_and_come_back_after(tmp_path):
    originals = {name: getattr(torch.nn.init, name) for name in INIT_FILLERS}
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    with weights_left_unfilled():
        weight = torch.full((4, 4), 7.0)
        torch.nn.init.normal_(weight)
        torch.nn.init.kaiming_uniform_(weight)
        torch.nn.Conv2d(3, 8, 3)
        torch.nn.Linear(16, 16)
    assert torch.equal(weight, torch.full((4, 4), 7.0))  # left as it was
    assert torch.equal(torch.random.get_rng_state(), state)  # no random numbers drawn
    assert {name: getattr(torch.nn.init, name) for name in INIT_FILLERS} == originals
    with pytest.raises(RuntimeError), weights_left_unfilled():
        raise RuntimeError("a failed build")
    assert {name: getattr(torch.nn.init, name) for name in INIT_FILLERS} == originals  # restored on errors too
    torch.nn.init.normal_(weight)
    assert not torch.equal(weight, torch.full((4, 4), 7.0))


def test_a_loaded_detector_equals_the_saved_one_and_a_missing_weight_is_still_an_error(tmp_path):
    cfg = compose_config(["backbone.weights=null"], tmp_path)
    model_cfg = {key: cfg[key] for key in ("backbone", "rpn", "roi_head")}
    torch.manual_seed(3)
    saved = build_model(model_cfg, 3).eval()
    save_detector(saved, model_cfg, ["a", "b", "c"], tmp_path / "model.pt")
    loaded, _ = load_detector(tmp_path / "model.pt")
    assert saved.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in saved.state_dict().items())
    assert torch.equal(loaded.pixel_mean, saved.pixel_mean)  # non-persistent buffers: built from values
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(saved(image)[0]["boxes"], loaded(image)[0]["boxes"])

    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    del payload["state_dict"]["roi_head.predictor.cls_score.weight"]
    torch.save(payload, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="weights do not fit the architecture"):
        load_detector(tmp_path / "short.pt")
