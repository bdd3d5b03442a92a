"""Precomputed RPN proposals for the detector stages of the 4-step recipe (paper §3.2).

A proposal file holds, for every training image, the RPN's boxes in the image's *original*
pixel coordinates (so the detector's transforms rescale and flip them with the image) and
their scores, sorted by score, in the flat-array format of :mod:`frcnn.engine.proposal_store`:
written as a stream, atomically, checked when opened, and read one image at a time. Under DDP each
rank proposes a consecutive range of the images into a shard; rank 0 concatenates the shards on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from frcnn.data.transforms import resize_factor
from frcnn.engine.proposal_store import ProposalFile, merge_proposal_files, shard_range, write_proposal_file
from frcnn.modeling.rpn import ProposalSettings

PROPOSAL_FILE_NAME = "proposals.safetensors"  # in <run_dir>/stage1_proposals, stage2_proposals
PROPOSE_CHUNK_BATCHES = 16  # proposal batches held in memory before they are written
PROPOSAL_BATCH_SIZE = 4  # images per RPN pass of a proposal stage (the file does not depend on it)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def propose_images(model, dataset, indices: list[int], settings: ProposalSettings, device="cpu",
                   batch_size: int = 4, on_progress: Callable[[int], None] | None = None
                   ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """RPN proposals for ``dataset`` items at ``indices`` with the dataset's *eval* transform
    (no flip), mapped back to original image pixels. -> {index: (boxes [N, 4], scores [N])}.
    ``on_progress(images_done)`` is called before each batch (the fault-injection point).
    The result does not depend on ``batch_size``: ``model.propose`` runs images of one padded size
    together (:func:`frcnn.modeling.faster_rcnn.padded_size_groups`), as if each were alone."""
    model.eval()
    rpn = model.rpn
    saved = rpn.test_proposals
    rpn.test_proposals = settings
    out = {}
    try:
        for start in range(0, len(indices), batch_size):
            if on_progress is not None:
                on_progress(start)
            chunk = indices[start : start + batch_size]
            images, factors = [], []
            for index in chunk:
                image, boxes, labels = dataset.raw(index)
                h, w = image.shape[:2]
                transformed, _, _ = dataset.eval_transform(image, boxes[:0], labels[:0])
                images.append(transformed.to(device))
                factors.append(resize_factor(transformed.shape[-2:], (h, w)))
            proposals, scores = model.propose(images, factors)  # min size in original pixels, as the authors'
            for index, boxes, image_scores, factor in zip(chunk, proposals, scores, factors):
                out[index] = ((boxes / factor).cpu(), image_scores.cpu())
    finally:
        rpn.test_proposals = saved
    return out


def _proposals_in_order(model, dataset, indices: range, settings: ProposalSettings, device, batch_size: int,
                        on_progress: Callable[[int], None] | None):
    """(boxes [n, 4], scores [n]) float32 numpy, image after image of ``indices``, proposed
    PROPOSE_CHUNK_BATCHES batches at a time (memory: one chunk). ``on_progress(images_done)`` is
    called before each batch, as :func:`propose_images` calls it."""
    chunk_images = batch_size * PROPOSE_CHUNK_BATCHES
    for chunk_start in range(0, len(indices), chunk_images):
        chunk = list(indices[chunk_start : chunk_start + chunk_images])
        progress = None if on_progress is None else (lambda done, before=chunk_start: on_progress(before + done))
        found = propose_images(model, dataset, chunk, settings, device, batch_size=batch_size, on_progress=progress)
        for index in chunk:
            boxes, scores = found.pop(index)
            yield boxes.float().numpy(), scores.float().numpy()


def _use_rank0_weights(model: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (the weights the stage saved): DDP keeps the
    parameters in step, but each rank's BatchNorm statistics follow its own batches, and the
    proposals must not depend on which rank proposed an image."""
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None  # NCCL: GPU tensors
    for tensor in [*model.parameters(), *model.buffers()]:
        if device is None or tensor.device == device:
            dist.broadcast(tensor.data, src=0)
        else:
            moved = tensor.data.to(device)
            dist.broadcast(moved, src=0)
            tensor.data.copy_(moved)


def shard_path(path: Path, rank: int, world: int) -> Path:
    return path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}")


def images_of_this_rank(num_images: int, batch_size: int = PROPOSAL_BATCH_SIZE) -> int:
    """How many of ``num_images`` this process proposes (all of them without torch.distributed)."""
    rank, world = _dist_info()
    return len(shard_range(num_images, rank, world, batch_size))


def generate_proposal_file(model, dataset, settings: ProposalSettings, path: str | Path, device="cpu",
                           on_progress: Callable[[int], None] | None = None,
                           batch_size: int = PROPOSAL_BATCH_SIZE) -> Path:
    """Propose boxes for every image of ``dataset`` and write one complete file at ``path``
    (:mod:`frcnn.engine.proposal_store`; the same bytes for every ``batch_size``: see
    :func:`propose_images`), streaming: memory does not grow with the dataset.

    Under torch.distributed, every rank first takes rank 0's weights and buffers, then rank r of W
    takes the consecutive whole batches :func:`shard_range`
    (nothing computed twice) and writes them as a shard beside ``path``; rank 0 then concatenates
    the W shards on disk into ``path`` (:func:`merge_proposal_files`): the file one process writes
    with the same batches (the same bytes, where the ranks run with the same number of threads).
    Every rank must see ``path``'s folder (on several nodes: a shared file system).
    """
    path = Path(path)
    rank, world = _dist_info()
    if world > 1:
        _use_rank0_weights(model)
    indices = shard_range(len(dataset), rank, world, batch_size)
    target = path if world == 1 else shard_path(path, rank, world)
    write_proposal_file(target, _proposals_in_order(model, dataset, indices, settings, device, batch_size, on_progress),
                        len(indices), settings.post_nms_top_n, first_image=indices.start)
    if world == 1:
        return path
    dist.barrier()
    if rank == 0:
        shards = [shard_path(path, r, world) for r in range(world)]
        merge_proposal_files(shards, path)
        for stale in path.parent.glob(f"{path.stem}.rank*-of-*{path.suffix}"):  # these and any of an older run
            stale.unlink(missing_ok=True)
    dist.barrier()
    return path


def load_proposal_file(path: str | Path, num_images: int) -> ProposalFile:
    """The checked proposal file of a dataset of ``num_images`` images (read one image at a time).
    Raises FileNotFoundError, or UnreadableFileError (a ValueError) naming the file and the field."""
    return ProposalFile(path, num_images)


class ProposalDataset(Dataset):
    """Training images with their ground truth *and* precomputed proposals, transformed
    together (the proposals ride through the same rescale and flip as the boxes).

    Items: (image [3, H, W], target dict with boxes, labels, proposals [N, 4], image_id, ...).
    """

    def __init__(self, base_dataset, proposals: ProposalFile):
        self.base = base_dataset
        self.proposals = proposals  # read one image at a time: memory does not grow with the dataset

    def __len__(self) -> int:
        return len(self.base)

    @property
    def class_names(self):
        return self.base.class_names

    def __getitem__(self, index: int):
        image, gt_boxes, gt_labels = self.base.raw(index)
        proposals = self.proposals.boxes(index)  # [N, 4] float32, original-image px
        all_boxes = np.concatenate((np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4), proposals.reshape(-1, 4)))
        # label 0 marks a proposal; ground truth keeps 1..C
        all_labels = np.concatenate((np.asarray(gt_labels, dtype=np.int64), np.zeros(len(proposals), dtype=np.int64)))
        tensor, boxes, labels = self.base.transform(image, all_boxes, all_labels)
        is_gt = labels > 0
        target = {
            "boxes": boxes[is_gt], "labels": labels[is_gt], "proposals": boxes[~is_gt],
            "image_id": index, "difficult": torch.zeros(int(is_gt.sum()), dtype=torch.bool),
        }
        return tensor, target
