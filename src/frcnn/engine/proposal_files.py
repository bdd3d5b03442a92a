"""Precomputed RPN proposals for the detector stages of the 4-step recipe (paper §3.2).

A proposal file holds, for every training image, the RPN's boxes in the image's *original*
pixel coordinates (so the detector's transforms rescale and flip them with the image) and
their scores, sorted by score. Files are written atomically and checked when loaded.
Under DDP each rank proposes a disjoint shard of the images; rank 0 merges the shards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from frcnn.checkpoint.safe_load import read_torch_file
from frcnn.data.transforms import resize_factor
from frcnn.modeling.rpn import ProposalSettings
from frcnn.utils.atomic_io import atomic_torch_save

PROPOSAL_FORMAT = "frcnn-proposals-v1"


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


def generate_proposal_file(model, dataset, settings: ProposalSettings, path: str | Path, device="cpu",
                           on_progress: Callable[[int], None] | None = None, batch_size: int = 4) -> Path:
    """Propose boxes for every image of ``dataset`` and write one complete file at ``path``
    (the same file for every ``batch_size``: see :func:`propose_images`).

    Under torch.distributed, rank r takes images r, r + W, r + 2W, ... (no padding, nothing
    computed twice), writes a shard, and rank 0 merges the W shards into the final file.
    """
    path = Path(path)
    rank, world = _dist_info()
    indices = list(range(rank, len(dataset), world))
    shard = propose_images(model, dataset, indices, settings, device, batch_size=batch_size, on_progress=on_progress)
    if world == 1:
        _write(path, shard, len(dataset), settings)
        return path
    shard_path = path.with_name(f"{path.stem}.rank{rank}.pt")
    atomic_torch_save(shard, shard_path)
    dist.barrier()
    if rank == 0:
        merged = {}
        for r in range(world):
            part = path.with_name(f"{path.stem}.rank{r}.pt")
            merged.update(read_torch_file(part, "proposal shard"))
        _write(path, merged, len(dataset), settings)
        for r in range(world):
            path.with_name(f"{path.stem}.rank{r}.pt").unlink(missing_ok=True)
    dist.barrier()
    return path


def _write(path: Path, by_index: dict, num_images: int, settings: ProposalSettings) -> None:
    missing = sorted(set(range(num_images)) - set(by_index))
    if missing:
        raise RuntimeError(f"proposals missing for {len(missing)} images (first: {missing[:5]}) while writing {path}")
    atomic_torch_save({
        "format": PROPOSAL_FORMAT,
        "num_images": num_images,
        "post_nms_top_n": settings.post_nms_top_n,
        "boxes": [by_index[i][0].float() for i in range(num_images)],
        "scores": [by_index[i][1].float() for i in range(num_images)],
    }, path)


def load_proposal_file(path: str | Path, num_images: int) -> dict:
    """Load and check a proposal file: right format, one entry per image, [N, 4] boxes."""
    path = Path(path)
    payload = read_torch_file(path, "proposal file")  # tensors and plain values only, never code; FileNotFoundError
    if not isinstance(payload, dict) or payload.get("format") != PROPOSAL_FORMAT:
        raise ValueError(f"{path} is not an frcnn proposal file (format {PROPOSAL_FORMAT!r} expected)")
    if not isinstance(payload.get("boxes"), list) or not all(isinstance(b, torch.Tensor) for b in payload["boxes"]):
        raise ValueError(f"{path}: its 'boxes' entry is not a list of tensors")
    if payload.get("num_images") != num_images or len(payload["boxes"]) != num_images:
        raise ValueError(f"{path} holds proposals for {len(payload['boxes'])} images, the dataset has {num_images}")
    for i, boxes in enumerate(payload["boxes"]):
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"{path}: entry {i} has shape {tuple(boxes.shape)}, expected [N, 4]")
    return payload


class ProposalDataset(Dataset):
    """Training images with their ground truth *and* precomputed proposals, transformed
    together (the proposals ride through the same rescale and flip as the boxes).

    Items: (image [3, H, W], target dict with boxes, labels, proposals [N, 4], image_id, ...).
    """

    def __init__(self, base_dataset, proposals: dict):
        self.base = base_dataset
        self.boxes = proposals["boxes"]

    def __len__(self) -> int:
        return len(self.base)

    @property
    def class_names(self):
        return self.base.class_names

    def __getitem__(self, index: int):
        image, gt_boxes, gt_labels = self.base.raw(index)
        proposals = self.boxes[index].numpy()
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
