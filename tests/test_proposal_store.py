"""The proposal file (frcnn/engine/proposal_store.py): flat arrays + offsets written as a stream, shards
concatenated into the bytes one writer produces, one image read at a time (also from DataLoader workers),
and every damaged file refused naming the file and the field."""

import itertools
import json
import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from frcnn.checkpoint.safe_load import UnreadableFileError
from frcnn.engine import recipes
from frcnn.engine.proposal_files import PROPOSAL_FILE_NAME, load_proposal_file
from frcnn.engine.proposal_store import (
    HEADER_BYTES,
    ProposalFile,
    merge_proposal_files,
    shard_range,
    write_proposal_file,
)
from tests.test_proposals_ddp import make_model_and_data

COUNTS = [3, 0, 7, 1, 0, 12, 5]  # proposals per image, empty images included


def images(counts=COUNTS, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(0, 600, (n, 4)).astype(np.float32), np.sort(rng.random(n, dtype=np.float32))[::-1].copy())
            for n in counts]


def test_every_image_reads_back_as_written_and_shards_concatenate_to_the_same_bytes(tmp_path):
    data = images()
    whole = write_proposal_file(tmp_path / "whole.safetensors", iter(data), len(data), post_nms_top_n=12)
    proposals = ProposalFile(whole, num_images=len(data))
    assert proposals.num_boxes == sum(COUNTS) and len(proposals) == len(data)
    for index, (boxes, scores) in enumerate(data):
        read_boxes, read_scores = proposals.read(index)
        assert read_boxes.dtype == np.float32 and read_boxes.shape == (len(boxes), 4)
        assert np.array_equal(read_boxes, boxes) and np.array_equal(read_scores, scores)
    for cuts in ([2, 2, 5], [1, 6], [7]):  # an empty shard, uneven shards, one shard
        bounds = [0, *cuts, len(data)]
        shards = [write_proposal_file(tmp_path / f"shard{k}", iter(data[a:b]), b - a, 12, first_image=a)
                  for k, (a, b) in enumerate(itertools.pairwise(bounds))]
        merged = merge_proposal_files(shards, tmp_path / "merged.safetensors")
        assert merged.read_bytes() == whole.read_bytes(), cuts
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []  # no side file left


def test_shards_cover_whole_batches_once():
    for num_images, world, batch in ((10, 2, 4), (5, 2, 4), (3, 4, 1), (118, 8, 2)):
        ranges = [shard_range(num_images, r, world, batch) for r in range(world)]
        assert [i for r in ranges for i in r] == list(range(num_images))
        assert all(r.start % batch == 0 for r in ranges)  # the batches one process forms


def test_merge_refuses_shards_that_do_not_follow(tmp_path):
    data = images()
    first = write_proposal_file(tmp_path / "a", iter(data[:2]), 2, 12)
    gap = write_proposal_file(tmp_path / "b", iter(data[3:]), 4, 12, first_image=3)
    with pytest.raises(UnreadableFileError, match=r"b: starts at image 3, but .*a ends at image 2"):
        merge_proposal_files([first, gap], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def _damage(kind, path):
    data = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    if kind == "truncated":
        return bytes(data[:-6]), "bytes, the header describes"
    if kind == "torch pickle":
        torch.save({"boxes": [torch.zeros(2, 4)]}, path)
        return path.read_bytes(), "header length"
    if kind == "offsets decrease":
        start = 8 + header_len + header["offsets"]["data_offsets"][0]
        data[start + 8 * 3 : start + 8 * 4] = struct.pack("<q", 1)  # offsets[3] = 1 < offsets[2] = 3
        return bytes(data), "field 'offsets' is not 0 first and non-decreasing"
    if kind in ("dtype", "format", "shape"):
        if kind == "dtype":
            header["boxes"]["dtype"] = "F16"
        elif kind == "format":
            header["__metadata__"]["format"] = "frcnn-proposals-v1"
        else:
            header["offsets"]["shape"] = [header["offsets"]["shape"][0] + 1]
        text = json.dumps(header).encode().ljust(HEADER_BYTES)
        return bytes(data[:8]) + text + bytes(data[8 + header_len :]), {
            "dtype": "field 'boxes': dtype 'F16'", "format": "__metadata__.format",
            "shape": "field 'offsets'"}[kind]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "torch pickle", "offsets decrease", "dtype", "format", "shape"])
def test_a_damaged_file_is_refused_naming_the_file_and_what_is_wrong(tmp_path, kind):
    path = write_proposal_file(tmp_path / PROPOSAL_FILE_NAME, iter(images()), len(COUNTS), 12)
    damaged, reason = _damage(kind, path)
    path.write_bytes(damaged)
    with pytest.raises(UnreadableFileError) as refused:
        load_proposal_file(path, len(COUNTS))
    assert f"{path}: not a readable proposal file" in str(refused.value) and reason in str(refused.value)


def test_a_file_for_another_dataset_size_is_refused(tmp_path):
    path = write_proposal_file(tmp_path / PROPOSAL_FILE_NAME, iter(images()), len(COUNTS), 12)
    with pytest.raises(UnreadableFileError, match=rf"holds proposals for {len(COUNTS)} images .* the dataset has 9"):
        load_proposal_file(path, 9)


class _Rows(Dataset):
    def __init__(self, proposals):
        self.proposals = proposals

    def __len__(self):
        return len(self.proposals)

    def __getitem__(self, index):
        return self.proposals.read(index)


def test_dataloader_workers_and_pickled_copies_read_with_their_own_descriptor(tmp_path):
    data = images()
    proposals = load_proposal_file(write_proposal_file(tmp_path / "p", iter(data), len(data), 12), len(data))
    proposals.read(0)  # the parent's descriptor is open before the workers fork
    loader = DataLoader(_Rows(proposals), batch_size=None, num_workers=2, multiprocessing_context="fork")
    for (boxes, scores), (expected_boxes, expected_scores) in zip(loader, data, strict=True):
        assert np.array_equal(boxes.numpy(), expected_boxes) and np.array_equal(scores.numpy(), expected_scores)
    copy = pickle.loads(pickle.dumps(proposals))  # what a spawned worker receives
    proposals.close()  # the sender's descriptor is gone: the copy opens its own
    assert np.array_equal(copy.boxes(5), data[5][0])


def test_proposal_stage_moves_a_damaged_file_aside_and_proposes_again(compose_cfg, tmp_path):
    model, dataset = make_model_and_data(tmp_path)
    cfg = compose_cfg(["recipe.proposals.post_nms_top_n=20"], tmp_path)
    path = tmp_path / "stage1_proposals" / PROPOSAL_FILE_NAME
    path.parent.mkdir()
    path.write_bytes(b"half a file")
    timings = {}
    proposals = recipes.proposal_stage(cfg, tmp_path, "stage1_proposals", model, dataset, timings)
    assert (path.parent / f"{PROPOSAL_FILE_NAME}.corrupt").read_bytes() == b"half a file"
    assert "stage1_proposals" in timings and len(proposals) == len(dataset) == 5
    assert all(0 < len(proposals.boxes(i)) <= 20 for i in range(5))
    again = recipes.proposal_stage(cfg, tmp_path, "stage1_proposals", model, dataset, timings := {})
    assert "stage1_proposals" not in timings and again.path == path  # a complete file is used, not redone
