"""Faults other than a kill: damaged checkpoint / proposal files, NaN losses, changed configs,
the exact-resume data order, the fault-injection variable. Fast (in-process, tiny runs)."""

import json
import signal

import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from frcnn.data.resumable import ResumeBatchSampler, StepSeededDataset
from frcnn.data.synthetic import ShapesDataset
from frcnn.data.transforms import DetectionTransform
from frcnn.engine import recipes
from frcnn.engine.loggers import read_csv_rows_before
from frcnn.engine.proposal_files import load_proposal_file
from frcnn.engine.proposal_store import write_proposal_file
from frcnn.engine.resume import RunConfigMismatch, check_run_config, resume_checkpoint
from frcnn.lit.guards import LossGuard, NonFiniteLossError
from frcnn.modeling.faster_rcnn import FasterRCNN
from frcnn.utils.fault_injection import parse_fault

JOINT = ["recipe=joint", "logger=none", "data.num_train=4", "data.num_val=2", "schedule.joint.images_per_batch=2",
         "schedule.joint.max_steps=3", "schedule.joint.lr_steps=[2]", "recipe.val_every_n_epochs=null",
         "recipe.checkpoint_every_n_steps=1"]


def test_fault_variable_is_parsed_or_named_when_wrong():
    assert parse_fault("stage1_det:7") == ("stage1_det", 7, signal.SIGKILL)
    assert parse_fault("stage2_rpn:3:TERM") == ("stage2_rpn", 3, signal.SIGTERM)
    with pytest.raises(ValueError, match="FRCNN_FAULT='stage1_det'"):
        parse_fault("stage1_det")
    with pytest.raises(ValueError, match="FRCNN_FAULT"):
        parse_fault("stage1_det:x")


def _batches(start_step, epochs, seed=3):
    generator = torch.Generator()
    sampler = ResumeBatchSampler(BatchSampler(RandomSampler(range(10), generator=generator), 3, False), generator,
                                 seed, start_step)
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.extend(iter(sampler))
    return out


def test_resumed_batch_sampler_continues_the_uninterrupted_sequence():
    full = _batches(0, range(3))  # 4 batches per epoch, 12 steps
    assert [b[0][0] for b in full] == list(range(12))  # items carry their step
    assert full[:4] != full[4:8]  # every epoch its own order
    assert _batches(6, range(1, 3)) == full[6:]  # resumed mid-epoch 1
    assert _batches(8, range(2, 3)) == full[8:]  # resumed at an epoch boundary
    generator = torch.Generator()  # an iterator Lightning starts and discards changes nothing
    sampler = ResumeBatchSampler(BatchSampler(RandomSampler(range(10), generator=generator), 3, False), generator, 3)
    sampler.set_epoch(1)
    next(iter(sampler))
    assert list(sampler) == full[4:8]


def test_item_augmentation_depends_on_step_and_index_only():
    dataset = ShapesDataset(split="train", num_images=4, image_size=(64, 64), seed=0,
                            transform=DetectionTransform(scales=(64,), max_size=100, hflip_prob=0.5, seed=0))
    seeded = StepSeededDataset(dataset, seed=0)
    first = [seeded[(step, 1)][0] for step in range(8)]
    seeded[(0, 2)], seeded[(5, 3)]  # other reads in between
    again = [seeded[(step, 1)][0] for step in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(first[0], f) for f in first[1:])  # the flip varies with the step


def test_half_written_checkpoint_is_moved_aside_and_never_used(tmp_path):
    stage = tmp_path / "stage1_rpn"
    (stage / "checkpoints").mkdir(parents=True)
    good = {"global_step": 4, "state_dict": {}, "optimizer_states": []}
    torch.save(good, stage / "checkpoints" / "last.ckpt")
    data = (stage / "checkpoints" / "last.ckpt").read_bytes()
    (stage / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) // 2])  # killed while writing
    (stage / "checkpoints" / "last.ckpt.tmp").write_bytes(b"partial")  # a temporary name is never read
    assert resume_checkpoint(stage) == (None, 0)
    assert (stage / "checkpoints" / "last.ckpt.corrupt").exists()
    assert not (stage / "checkpoints" / "last.ckpt").exists()


def test_newest_of_last_and_slurm_requeue_checkpoint_is_resumed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 4, "state_dict": {}, "optimizer_states": []}, tmp_path / "checkpoints" / "last.ckpt")
    torch.save({"global_step": 7, "state_dict": {}, "optimizer_states": []}, tmp_path / "hpc_ckpt_1.ckpt")
    assert resume_checkpoint(tmp_path) == (tmp_path / "hpc_ckpt_1.ckpt", 7)


def test_half_written_proposal_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "proposals.safetensors"
    write_proposal_file(path, [(torch.zeros(2, 4).numpy(), torch.zeros(2).numpy())], 1, post_nms_top_n=2)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"proposals\.safetensors: not a readable proposal file"):
        load_proposal_file(path, 1)


def test_changed_config_in_a_used_run_dir_is_refused_naming_the_keys(compose_cfg, tmp_path):
    check_run_config(compose_cfg(JOINT, tmp_path), tmp_path)
    check_run_config(compose_cfg(JOINT + ["logger=csv", "recipe.checkpoint_every_n_steps=5"], tmp_path), tmp_path)
    with pytest.raises(RunConfigMismatch, match=r"rpn\.lambda: 10\.0 -> 1.*optim\.lr|optim\.lr.*rpn\.lambda"):
        check_run_config(compose_cfg(JOINT + ["rpn.lambda=1", "optim.lr=0.5"], tmp_path), tmp_path)


def test_loss_guard_names_step_and_term_or_counts_skips():
    finite, bad = torch.tensor(1.0), torch.tensor(float("nan"))
    guard = LossGuard("error", "stage1_rpn")
    assert guard.check({"rpn_cls": finite}, 0)
    with pytest.raises(NonFiniteLossError, match=r"stage stage1_rpn, step 7: loss term rpn_reg=nan"):
        guard.check({"rpn_cls": finite, "rpn_reg": bad}, 7)
    skip = LossGuard("skip", "joint")
    assert not skip.check({"det_reg": torch.tensor(float("inf"))}, 3) and skip.skipped_steps == [3]
    with pytest.raises(ValueError, match="recipe.on_nonfinite_loss='ignore'"):
        LossGuard("ignore")


def _nan_at_call(monkeypatch, call_index):
    """FasterRCNN's training forward returns a NaN rpn_reg loss on its call_index-th call."""
    original, calls = FasterRCNN.forward, []

    def forward(self, images, targets=None, **kwargs):
        out = original(self, images, targets, **kwargs)
        if targets is not None:
            calls.append(1)
            if len(calls) == call_index:
                out = {**out, "rpn_reg": out["rpn_reg"] * float("nan")}
        return out

    monkeypatch.setattr(FasterRCNN, "forward", forward)


def test_nan_loss_stops_the_stage_naming_step_and_term_before_any_nan_checkpoint(compose_cfg, tmp_path, monkeypatch):
    _nan_at_call(monkeypatch, 2)
    with pytest.raises(NonFiniteLossError, match=r"stage joint, step 1: loss term rpn_reg=nan"):
        recipes.run_recipe(compose_cfg(JOINT, tmp_path), tmp_path)
    ckpt = torch.load(tmp_path / "joint" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1  # written after step 0; nothing after the NaN
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "joint" / "DONE").exists()


def test_nan_loss_with_skip_skips_the_batch_and_finishes(compose_cfg, tmp_path, monkeypatch, caplog):
    _nan_at_call(monkeypatch, 2)
    metrics = recipes.run_recipe(compose_cfg(JOINT + ["recipe.on_nonfinite_loss=skip"], tmp_path), tmp_path)
    assert "map_50" in metrics and (tmp_path / "joint" / "DONE").read_text().strip() == "3"
    assert "1 batches skipped for a non-finite loss" in caplog.text


def test_csv_rows_from_before_the_resume_step_are_kept(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss,step\n0,1.0,0\n0,0.9,1\n0,0.8,2\n0,,3\n")
    assert read_csv_rows_before(path, 2) == [{"epoch": "0", "loss": "1.0", "step": "0"},
                                             {"epoch": "0", "loss": "0.9", "step": "1"}]
    assert read_csv_rows_before(tmp_path / "absent.csv", 2) == []


def test_config_key_on_nonfinite_loss_is_checked(compose_cfg, tmp_path):
    from frcnn.config.checks import validate_config
    from frcnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"recipe\.on_nonfinite_loss='ignore' is not allowed; allowed: error, skip"):
        validate_config(compose_cfg(["recipe.on_nonfinite_loss=ignore"], tmp_path))
    assert json.loads(json.dumps(compose_cfg([], tmp_path)["recipe"]))["on_nonfinite_loss"] == "error"
