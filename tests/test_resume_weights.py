"""A stopped run, rerun, ends with the weights of an uninterrupted run (issue 34, item 4): the 4-step
alternating recipe stopped inside each stage that trains, and joint training with
``schedule.joint.batches_per_update=2`` stopped mid-epoch and on an epoch boundary.

The stop is real and so is the resume: the run stops at the fault point of a training step
(frcnn.utils.fault_injection, called by the FaultPoint callback before every step), either with an
exception that unwinds ``run_recipe`` like a crash (only the last ``last.ckpt`` survives; the steps
after it are lost and run again) or with a real SIGTERM sent to this process (``FRCNN_FAULT=...:TERM``:
Lightning finishes the step, CheckpointOnSigterm writes ``last.ckpt``, exit status 143). The rerun
is a new ``run_recipe`` call in the same run dir: new modules, Trainers and loaders, the finished
stages read from disk, the stopped one resumed by Lightning from ``last.ckpt``. In-process rather
than a process per run (tests/test_kill_resume.py does that, with SIGKILL, marked slow): the same
code paths, and the whole file takes seconds.

Tolerance: none (``torch.equal`` on every tensor of the state dicts). Both runs are in this process,
on the CPU, with the same thread count and seeds; a resumed stage replays exactly the batches,
augmentation and sampling of the uninterrupted run (frcnn.data.resumable, StepSeed) with the
optimiser and lr-schedule state restored, so the weights are bit-identical (as test_kill_resume
asserts). A tolerance would hide what these tests are for: with a handful of warm-up steps at
lr 1e-4, a resume that lost the optimiser's moments or replayed one batch twice moves the weights by
amounts an ``allclose`` could accept.
"""

import json
import threading

import pytest
import torch

from frcnn.engine import recipes
from frcnn.lit import callbacks
from frcnn.lit.joint import JointModule
from frcnn.lit.stages import StageModule
from frcnn.modeling.faster_rcnn import FasterRCNN

# 128-px images; anchor and RoI mini-batches smaller than what an image offers (at 128 px fewer than 256 anchors
# are eligible, so the default would take them all), so each step's sampling is random and a resume must replay it
SMALL = ["logger=none", "data.image_size=[128,128]", "data.scales=[128]", "data.num_val=2", "rpn.batch_size=32",
         "roi_head.rois_per_minibatch=16"]

STAGES = ("stage1_rpn", "stage1_det", "stage2_rpn", "stage2_det")
STAGE_STEPS, ALT_EVERY = 4, 2  # 6 images, 2 per batch: 3 steps an epoch; last.ckpt at steps 2 and 4
ALTERNATING = ["recipe=alternating", "data.num_train=6", f"recipe.checkpoint_every_n_steps={ALT_EVERY}",
               "recipe.proposals.post_nms_top_n=50", *SMALL] + [
    f"schedule.alternating.{s}.{k}" for s in STAGES
    for k in (f"max_steps={STAGE_STEPS}", "lr_steps=[3]", "images_per_batch=2")]

UPDATES, UPDATES_PER_EPOCH = 6, 4  # 8 images, 2 passes of 1 image per update: epoch 0 = steps 0-3, epoch 1 = 4-5
JOINT = ["recipe=joint", f"data.num_train={2 * UPDATES_PER_EPOCH}", "schedule.joint.images_per_batch=1",
         "++schedule.joint.batches_per_update=2", f"schedule.joint.max_steps={UPDATES}", "schedule.joint.lr_steps=[4]",
         "recipe.val_every_n_epochs=null", *SMALL]


class Stopped(RuntimeError):
    """The crash of a stopped run (raised before a training step)."""


def crash_before(monkeypatch, stage, step):
    """The next run raises Stopped before training step ``step`` of ``stage``."""
    def fault_point(at_stage, at_step):
        if (at_stage, at_step) == (stage, step):
            raise Stopped(f"{stage} stopped before step {step}")

    monkeypatch.setattr(callbacks, "fault_point", fault_point)


def no_faults(monkeypatch):
    monkeypatch.setattr(callbacks, "fault_point", lambda stage, step: None)
    monkeypatch.delenv("FRCNN_FAULT", raising=False)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_weights(path):
    """(global step, model weights) of a Lightning checkpoint (the module's "model." prefix removed)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["global_step"], {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}


def differing(got, want):
    """Names of the tensors that are not bit-identical (or present in only one of the two)."""
    return sorted(set(got) ^ set(want)) + [k for k in got.keys() & want.keys() if not torch.equal(got[k], want[k])]


def count_training_steps(monkeypatch):
    """{stage: training steps run} from now on (StageModule and JointModule)."""
    counts = {}

    def counting(original):
        def training_step(self, batch, batch_idx):
            name = getattr(self.hparams, "stage_name", None) or "joint"
            counts[name] = counts.get(name, 0) + 1
            return original(self, batch, batch_idx)
        return training_step

    for module in (StageModule, JointModule):
        monkeypatch.setattr(module, "training_step", counting(module.training_step))
    return counts


@pytest.fixture(scope="module")
def alternating_reference(tmp_path_factory):
    from tests.conftest import compose_config

    run_dir = tmp_path_factory.mktemp("alternating_reference")
    recipes.run_recipe(compose_config(ALTERNATING, run_dir), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def joint_reference(tmp_path_factory):
    from tests.conftest import compose_config

    run_dir = tmp_path_factory.mktemp("joint_reference")
    recipes.run_recipe(compose_config(JOINT, run_dir), run_dir)
    return run_dir


def test_alternating_run_crashed_inside_each_training_stage_resumes_to_the_uninterrupted_weights(
        alternating_reference, compose_cfg, tmp_path, monkeypatch):
    """One run crashed before step 3 of stage1_rpn; its rerun resumes stage1_rpn and crashes before step 3 of
    stage1_det; and so on through stage2_rpn (step 4 of the paper: conv frozen, RPN layers only) and stage2_det,
    whose rerun finishes. Each time last.ckpt holds step 2, mid-epoch (3 steps an epoch), and the lost step 2
    runs again. Each resumed stage must run only the steps after its checkpoint and end bit-identical to the
    uninterrupted run's stage; the final detector too."""
    cfg = compose_cfg(ALTERNATING, tmp_path)
    steps = count_training_steps(monkeypatch)
    crash_before(monkeypatch, STAGES[0], 3)
    with pytest.raises(Stopped):
        recipes.run_recipe(cfg, tmp_path)
    for i, stage in enumerate(STAGES):
        assert not (tmp_path / stage / "DONE").exists()
        ckpt_step, at_checkpoint = checkpoint_weights(tmp_path / stage / "checkpoints" / "last.ckpt")
        assert ckpt_step == ALT_EVERY and ckpt_step % 3 != 0  # mid-epoch
        expected = weights(alternating_reference / stage / "model.pt")
        assert differing(at_checkpoint, expected), f"{stage}: its last 2 steps changed no weight, nothing to test"

        steps.clear()
        if i + 1 < len(STAGES):  # the rerun resumes `stage`, then crashes inside the next one
            crash_before(monkeypatch, STAGES[i + 1], 3)
            with pytest.raises(Stopped):
                recipes.run_recipe(cfg, tmp_path)
        else:
            no_faults(monkeypatch)
            recipes.run_recipe(cfg, tmp_path)
        assert list(steps) == list(STAGES[i:i + 2]), steps  # the finished stages were loaded, not trained again
        assert steps[stage] == STAGE_STEPS - ckpt_step  # resumed at its checkpoint, not from step 0
        resumed = weights(tmp_path / stage / "model.pt")
        assert not differing(resumed, expected), f"{stage} resumed to other weights: {differing(resumed, expected)}"

    final = weights(tmp_path / "final" / "model.pt")["state_dict"]
    expected = weights(alternating_reference / "final" / "model.pt")["state_dict"]
    assert not differing(final, expected), differing(final, expected)


def count_passes(monkeypatch):
    """Images of each training forward pass of the detector from now on."""
    passes = []
    forward = FasterRCNN.forward

    def counting(self, images, targets=None, **kwargs):
        if targets is not None:
            passes.append(len(images))
        return forward(self, images, targets, **kwargs)

    monkeypatch.setattr(FasterRCNN, "forward", counting)
    return passes


def resume_joint_and_compare(run_dir, reference, cfg, monkeypatch, ckpt_step):
    """Rerun the stopped joint run in ``run_dir``: it must run the updates after ``ckpt_step`` only (2 passes
    of 1 image each) and end with the reference run's weights and mAP."""
    no_faults(monkeypatch)
    passes = count_passes(monkeypatch)
    metrics = recipes.run_recipe(cfg, run_dir)
    assert passes == [1, 1] * (UPDATES - ckpt_step)
    final = weights(run_dir / "final" / "model.pt")["state_dict"]
    expected = weights(reference / "final" / "model.pt")["state_dict"]
    assert not differing(final, expected), f"resumed to other weights: {differing(final, expected)}"
    assert metrics["map_50"] == json.loads((reference / "metrics.json").read_text())["map_50"]


def test_joint_two_passes_per_update_crashed_mid_epoch_resumes_to_the_uninterrupted_weights(
        joint_reference, compose_cfg, tmp_path, monkeypatch):
    """Crash before update 3 (the last of epoch 0), last.ckpt at update 2: the resumed run replays the rest of
    epoch 0 from its third batch, then epoch 1."""
    cfg = compose_cfg(JOINT + ["recipe.checkpoint_every_n_steps=2"], tmp_path)
    crash_before(monkeypatch, "joint", 3)
    with pytest.raises(Stopped):
        recipes.run_recipe(cfg, tmp_path)
    ckpt_step, at_checkpoint = checkpoint_weights(tmp_path / "joint" / "checkpoints" / "last.ckpt")
    assert ckpt_step == 2 and ckpt_step % UPDATES_PER_EPOCH != 0  # mid-epoch
    assert differing(at_checkpoint, weights(joint_reference / "final" / "model.pt")["state_dict"])
    resume_joint_and_compare(tmp_path, joint_reference, cfg, monkeypatch, ckpt_step)


@pytest.mark.parametrize("stop", ["crash", "sigterm"])
def test_joint_two_passes_per_update_stopped_on_an_epoch_boundary_resumes_to_the_uninterrupted_weights(
        stop, joint_reference, compose_cfg, tmp_path, monkeypatch):
    """last.ckpt at update 4, the end of epoch 0: written by the step checkpoint (crash before update 5, one
    update lost), or on SIGTERM during update 3, which Lightning acts on after the epoch has ended. Before
    frcnn.lit.callbacks.start_next_epoch_if_ended the SIGTERM case resumed into epoch 1 as if its 4 batches were
    done: update 4 on epoch 1's first batch, update 5 on epoch 2's first (other weights, no error)."""
    if stop == "crash":
        cfg = compose_cfg(JOINT + ["recipe.checkpoint_every_n_steps=4"], tmp_path)
        crash_before(monkeypatch, "joint", 5)
        with pytest.raises(Stopped):
            recipes.run_recipe(cfg, tmp_path)
    else:
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("Lightning handles SIGTERM in the main thread only; here the signal would end pytest")
        cfg = compose_cfg(JOINT + ["recipe.checkpoint_every_n_steps=100"], tmp_path)
        monkeypatch.setenv("FRCNN_FAULT", f"joint:{UPDATES_PER_EPOCH - 1}:TERM")  # a real SIGTERM to this process
        with pytest.raises(SystemExit) as stopped:
            recipes.run_recipe(cfg, tmp_path)
        assert stopped.value.code == recipes.SIGTERM_EXIT_STATUS
    ckpt_step, _ = checkpoint_weights(tmp_path / "joint" / "checkpoints" / "last.ckpt")
    assert ckpt_step == UPDATES_PER_EPOCH  # the epoch boundary
    resume_joint_and_compare(tmp_path, joint_reference, cfg, monkeypatch, ckpt_step)
