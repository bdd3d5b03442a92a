"""DDP on CPU through the CLI (gloo on 127.0.0.1), on one node with two processes (`trainer=ddp
trainer.devices=2`: Lightning re-runs train.py for rank 1) and on two "nodes" of one process each
(`trainer.num_nodes=2 trainer.devices=1`, both started here as a cluster starts them: the alternating
recipe under `torchrun --nnodes=2`, joint training with the environment SLURM's srun gives each task).
Each run dir gets one complete metrics.json, the checkpoints, and logs from rank 0 only; the two-node
run ends with the one-node run's detector, metrics and proposal files, and those files are the bytes one
process writes from the same RPN. Inside a -m sweep DDP is refused before training."""

import csv
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from frcnn.checkpoint.safe_load import read_torch_file
from frcnn.engine import recipes
from frcnn.engine.proposal_files import PROPOSAL_FILE_NAME
from frcnn.modeling.build import build_model
from tests.cli_runner import run_fresh, run_script
from tests.conftest import compose_config

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
       "trainer.log_every_n_steps=1", "logger=csv", "data.num_train=8", "data.num_val=4"]
ONE_NODE, TWO_NODES = ["trainer.devices=2"], ["trainer.devices=1", "trainer.num_nodes=2"]
ALT = "schedule.alternating"
RECIPES = {
    "joint": (["recipe=joint", "schedule.joint.max_steps=4", "schedule.joint.images_per_batch=2",
               "recipe.val_every_n_epochs=null"], {"joint": 4}),
    "alternating": (["recipe=alternating"] + [f"{ALT}.{s}.{k}={v}" for s in ("stage1_rpn", "stage1_det", "stage2_rpn",
                                                                              "stage2_det")
                                              for k, v in (("max_steps", 2), ("images_per_batch", 2))],
                    {"stage1_rpn": 2, "stage1_det": 2, "stage2_rpn": 2, "stage2_det": 2}),
}
LAUNCHERS = {"alternating": "torchrun", "joint": "slurm"}  # each recipe under one of the two cluster launchers
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # every rank of both runs: the same float reductions


def run_cli(*args, timeout=300, env=None):
    return run_script(["train.py", *args], timeout=timeout, env=env)  # Lightning starts rank 1 as `python train.py ...`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_node(launcher: str, node_rank: int, port: int, args: list[str]):
    """One node's process of a two-node job, as the launcher starts it on that node."""
    if launcher == "torchrun":  # the README's command, node ``node_rank`` of 2
        return run_fresh(["-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node_rank}",
                          "--master-addr=127.0.0.1", f"--master-port={port}", "train.py", *args], env=ONE_THREAD,
                         timeout=400)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "frcnn", "SLURM_NNODES": "2", "SLURM_NTASKS": "2",
             "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODELIST": "127.0.0.1", "SLURM_PROCID": str(node_rank),
             "SLURM_NODEID": str(node_rank), "SLURM_LOCALID": "0", "MASTER_PORT": str(port)}  # srun, task node_rank
    # a fresh interpreter, as srun starts one: the fork server's modules read the rank variables when imported
    return run_fresh(["train.py", *args], env={**ONE_THREAD, **slurm}, timeout=400)


def check_each_output_written_once(run_dir, result, recipe: str, stage_steps: dict) -> None:
    """One complete metrics.json, every stage's checkpoint, logs from rank 0 only (two writers would double them)."""
    output = result.stdout + result.stderr
    assert result.stdout.count("metrics written to") == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"map_50", "map_voc07", "ap_per_class", "num_images"} <= set(metrics) and metrics["num_images"] == 4
    assert metrics["recipe"] == recipe and set(stage_steps) <= set(metrics["stage_seconds"])
    assert not list(run_dir.glob("**/*.tmp")) and "distributed_backend=gloo" in output
    assert (run_dir / ".frcnn.lock").read_text() == ""  # rank 0 held the run-dir lock (rank 1 did not try), released
    assert (run_dir / "final" / "model.pt").exists()
    for stage, steps in stage_steps.items():
        assert (run_dir / stage / "checkpoints" / "last.ckpt").exists() and (run_dir / stage / "model.pt").exists()
        assert (run_dir / stage / "DONE").read_text().strip() == str(steps)
        with open(run_dir / "csv" / stage / "metrics.csv") as f:
            steps_logged = [r["step"] for r in csv.DictReader(f) if any(k.endswith("/lr") and v for k, v in r.items())]
        assert len(steps_logged) == len(set(steps_logged)) == steps, steps_logged
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == sorted([*stage_steps, "final"])  # + final metrics
    assert (run_dir / "csv" / "final" / "metrics.csv").read_text().count("\n") == 2  # header + one row: rank 0 only
    assert len(list(run_dir.glob("**/.hydra"))) == 1


def one_process_proposals(overrides: list[str], run_dir, stage: str, out_dir):
    """The proposal file one process writes from the run's trained RPN (stage1_rpn / stage2_rpn weights)."""
    cfg = compose_config(overrides, out_dir)
    data = recipes.build_datamodule(cfg, 2)
    data.setup("fit")
    cfg = recipes.fit_config_to_data(cfg, data.train_dataset)
    model = build_model(recipes.model_config(cfg), num_classes=len(data.class_names))
    model.load_state_dict(read_torch_file(run_dir / stage.replace("proposals", "rpn") / "model.pt"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran
    try:
        recipes.proposal_stage(cfg, out_dir, stage, model, data.train_dataset, {})
    finally:
        torch.set_num_threads(threads)
    return out_dir / stage / PROPOSAL_FILE_NAME


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_two_nodes_end_as_one_node_with_two_processes_each_output_written_once(tmp_path, recipe):
    overrides, stage_steps = RECIPES[recipe]
    one_node, two_nodes = tmp_path / "one_node", tmp_path / "two_nodes"
    result = run_cli(*DDP, *ONE_NODE, *overrides, f"hydra.run.dir={one_node}", env=ONE_THREAD)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr  # two processes really ran
    assert (one_node / "train_ddp_process_1.log").exists()  # rank 1 was train.py re-run by Lightning
    check_each_output_written_once(one_node, result, recipe, stage_steps)

    args, port = [*DDP, *TWO_NODES, *overrides, f"hydra.run.dir={two_nodes}"], free_port()
    with ThreadPoolExecutor(2) as pool:
        nodes = list(pool.map(lambda k: run_node(LAUNCHERS[recipe], k, port, args), (0, 1)))
    for k, node in enumerate(nodes):
        assert node.returncode == 0, f"node {k}: " + (node.stdout + node.stderr)[-4000:]
    assert "GLOBAL_RANK: 1" in nodes[1].stdout + nodes[1].stderr and "MEMBER: 2/2" in nodes[1].stdout + nodes[1].stderr
    check_each_output_written_once(two_nodes, nodes[0], recipe, stage_steps)
    assert "metrics written to" not in nodes[1].stdout

    # the same detector and metrics as one node with two processes
    final = [read_torch_file(d / "final" / "model.pt")["state_dict"] for d in (one_node, two_nodes)]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one_node, two_nodes)]
    for m in metrics:
        m.pop("stage_seconds")
    assert metrics[0] == metrics[1]
    for stage in ("stage1_proposals", "stage2_proposals") if recipe == "alternating" else ():
        merged = two_nodes / stage / PROPOSAL_FILE_NAME
        assert merged.read_bytes() == (one_node / stage / PROPOSAL_FILE_NAME).read_bytes()
        assert not list(merged.parent.glob("*rank*"))  # the shards of both nodes were merged and removed
        alone = one_process_proposals([*overrides, "data.num_train=8"], two_nodes, stage, tmp_path / "one_process")
        assert merged.read_bytes() == alone.read_bytes(), stage  # one process writes the same bytes


@pytest.mark.slow
def test_ddp_inside_a_sweep_stops_at_once_with_an_explanation(tmp_path):
    result = run_cli("-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "rpn.lambda=1,10",
                     "recipe=joint", "logger=csv", f"hydra.sweep.dir={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert "trainer.strategy=ddp with 2 processes cannot run inside a multirun (-m)" in result.stderr
    assert "hydra/launcher=slurm" in result.stderr  # says what to do instead
    assert not list(tmp_path.glob("*/joint")) and not list(tmp_path.glob("*/metrics.json"))  # nothing trained
    assert not (tmp_path / "1").exists()  # the second job never started
