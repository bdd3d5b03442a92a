"""Proposal generation sharded over 2 processes (gloo on CPU): one complete file, nothing twice, the same
bytes one process writes."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from frcnn.data.synthetic import ShapesDataset
from frcnn.data.transforms import DetectionTransform
from frcnn.engine.proposal_files import generate_proposal_file, load_proposal_file, propose_images
from frcnn.modeling.build import build_model
from frcnn.modeling.rpn import ProposalSettings
from tests.cli_runner import fork_server
from tests.conftest import compose_config

SETTINGS = ProposalSettings(pre_nms_top_n=-1, post_nms_top_n=20)


def make_model_and_data(run_dir):
    cfg = compose_config([], run_dir)
    torch.manual_seed(0)
    model = build_model({"backbone": cfg["backbone"], "rpn": cfg["rpn"], "roi_head": cfg["roi_head"]}, num_classes=5)
    dataset = ShapesDataset("train", num_images=5, image_size=(64, 96))
    dataset.eval_transform = DetectionTransform(scales=(64,), max_size=1000, train=False)
    return model, dataset


def _worker(rank, world, port, out_path, run_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, dataset = make_model_and_data(run_dir)
        if rank == 1:  # as after DDP training: same parameters, BatchNorm statistics of this rank's own batches
            for name, buffer in model.named_buffers():
                if name.endswith("running_mean"):
                    buffer += 0.5
        calls = []
        import frcnn.engine.proposal_files as proposals

        original = proposals.propose_images

        def counting(model, dataset, indices, *args, **kwargs):
            calls.append(list(indices))
            return original(model, dataset, indices, *args, **kwargs)

        proposals.propose_images = counting
        generate_proposal_file(model, dataset, SETTINGS, out_path)
        torch.save(calls, f"{out_path}.calls{rank}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_write_one_complete_file_and_split_the_work(tmp_path):
    out = tmp_path / "proposals.safetensors"
    fork_server()  # the two ranks start from it with torch already imported (as spawn would, without the imports)
    mp.start_processes(_worker, args=(2, 29517, str(out), str(tmp_path)), nprocs=2, join=True,
                       start_method="forkserver")
    payload = load_proposal_file(out, num_images=5)
    calls = [torch.load(f"{out}.calls{r}") for r in range(2)]
    assert sorted(i for c in calls for chunk in c for i in chunk) == [0, 1, 2, 3, 4]  # each image once
    assert sorted(calls[0][0] + calls[1][0]) == calls[0][0] + calls[1][0]  # consecutive ranges: rank 0 first
    assert not list(tmp_path.glob("proposals.rank*"))  # shards merged and removed
    # same proposals as one process computes alone
    model, dataset = make_model_and_data(tmp_path)
    single = propose_images(model, dataset, list(range(5)), SETTINGS)
    for i in range(5):
        assert torch.allclose(torch.from_numpy(payload.boxes(i)), single[i][0], atol=1e-4)
    alone = generate_proposal_file(model, dataset, SETTINGS, tmp_path / "alone.safetensors")
    assert alone.read_bytes() == out.read_bytes()  # the merged shards are the file one process writes (rank 0's model)
