"""--mode scale: how the time and the peak memory of the parts that see every image grow with the number of
images (1k, 10k and COCO train2017's 118,287), on generated COCO-size data (issue 25).

Data (written once per size under --scale-dir, not timed): an instances JSON with COCO train2017's
statistics (7.27 boxes per image, ~1 % of images without one, ~1 % crowd boxes, 80 categories with
COCO's ids 1..90 and its gaps, images of ~640 x 480 in COCO's common shapes, a 4-corner polygon per box),
an empty file per image (the index checks that each image exists; nothing decodes them), and 2000
proposals per image (what the RPN keeps after NMS, at most).

Parts, each in a fresh process (its peak RSS is its own; set-up before the part, such as the shards a
merge reads, is excluded by resetting the peak, /proc/self/clear_refs):
  index        COCODataset(annotations, images): parse, check and index every box (frcnn/data/coco.py)
  write        write the proposal file of every image, streamed (frcnn/engine/proposal_store.py)
  merge2/8     concatenate 2 / 8 DDP shards into one file (rank 0's job after a proposal stage)
  read         read every image's proposals back, one image at a time
  epoch        one detector-stage epoch of proposal loading: a DataLoader (2 workers, shuffled, 2 images a
               batch) reading each image's proposals (peak RSS: the largest process, main or worker)
  coco_ap_*    COCO AP (torchmetrics MeanAveragePrecision through frcnn's CocoEvaluator) of --eval-images
               images x 100 detections, one row per backend torchmetrics offers
Growth exponent: the least-squares slope of log(time) and of log(memory above the process's start) against
log(images); 1 is linear, 0 is constant.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCALE_IMAGES = (1000, 10000, 118287)
EVAL_IMAGES = (1000, 5000)
PROPOSALS_PER_IMAGE = 2000
BOXES_PER_IMAGE = 7.27  # COCO train2017: 860,001 boxes on 118,287 images
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # 80
IMAGE_SHAPES_WH = ((640, 480), (480, 640), (640, 427), (427, 640), (500, 375), (640, 360))
SHAPE_SHARES = (0.45, 0.15, 0.2, 0.08, 0.07, 0.05)
DATA_PARTS = ("index", "write", "merge2", "merge8", "read", "epoch")
BACKENDS = ("pycocotools", "faster_coco_eval")


# ------------------------------------------------------------------------------------------- generated data
def write_annotations(path: Path, num_images: int, seed: int = 0) -> int:
    """A COCO instances JSON of ``num_images`` images with COCO's statistics (module docstring),
    written entry by entry. -> the number of boxes."""
    rng = np.random.default_rng(seed)
    shapes = rng.choice(len(IMAGE_SHAPES_WH), size=num_images, p=SHAPE_SHARES)
    counts = np.where(rng.random(num_images) < 0.01, 0, rng.geometric(1 / BOXES_PER_IMAGE, num_images))
    image_ids = rng.permutation(num_images) * 3 + 9  # COCO's ids are sparse and the list is not sorted
    ann_id = 0
    with open(path, "w") as f:
        f.write('{"info": {"description": "frcnn scale benchmark, COCO train2017 statistics"}, "images": [')
        for k in range(num_images):
            w, h = IMAGE_SHAPES_WH[shapes[k]]
            f.write(("," if k else "") + json.dumps({"id": int(image_ids[k]), "file_name": f"{image_ids[k]:012d}.jpg",
                                                     "width": w, "height": h}))
        f.write('], "annotations": [')
        for k in range(num_images):
            w, h = IMAGE_SHAPES_WH[shapes[k]]
            n = int(counts[k])
            size = np.minimum(np.exp(rng.uniform(np.log(4), np.log(0.9 * min(w, h)), (n, 2))), (w - 1, h - 1))
            corner = rng.random((n, 2)) * ((w, h) - size)
            for (x, y), (bw, bh), crowd, cat in zip(corner.round(2).tolist(), size.round(2).tolist(),
                                                    (rng.random(n) < 0.01).tolist(),
                                                    rng.choice(COCO_CATEGORY_IDS, n).tolist()):
                f.write(("," if ann_id else "") + json.dumps({
                    "id": ann_id + 1, "image_id": int(image_ids[k]), "category_id": cat, "iscrowd": int(crowd),
                    "area": round(bw * bh, 2), "bbox": [x, y, bw, bh],
                    "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]}))
                ann_id += 1
        f.write('], "categories": [' + ",".join(json.dumps({"id": c, "name": f"category{c}", "supercategory": "s"})
                                              for c in COCO_CATEGORY_IDS) + "]}")
    return ann_id


def prepare_size(root: Path, num_images: int) -> Path:
    """<root>/<num_images>/: annotations.json and images/ (one empty file per image), made once."""
    folder = root / str(num_images)
    done = folder / "READY"
    if done.exists():
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    write_annotations(folder / "annotations.json", num_images)
    with open(folder / "annotations.json") as f:
        names = [image["file_name"] for image in json.load(f)["images"]]
    for name in names:
        (folder / "images" / name).touch()
    done.touch()
    return folder


class ProposalSource:
    """2000 proposals (boxes inside a 640 x 480 image, scores descending) for image i: one of 16 pre-drawn
    sets, so drawing them costs nothing next to storing them."""

    def __init__(self, per_image: int = PROPOSALS_PER_IMAGE, seed: int = 0):
        rng = np.random.default_rng(seed)
        corners = rng.uniform(0, 400, (16, per_image, 2)).astype(np.float32)
        self.boxes = np.concatenate([corners, corners + rng.uniform(16, 240, (16, per_image, 2))], axis=2)
        self.scores = np.sort(rng.random((16, per_image), dtype=np.float32), axis=1)[:, ::-1].copy()

    def images(self, indices):
        for i in indices:
            yield self.boxes[i % 16], self.scores[i % 16]


# ------------------------------------------------------------------------------------------- one part (child)
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> int:
    """Reset the peak RSS (VmHWM) to the current RSS; -> the current RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status_kib("VmRSS")


def _write_file(path: Path, num_images: int, first: int = 0) -> Path:
    from frcnn.engine.proposal_store import write_proposal_file

    return write_proposal_file(path, ProposalSource().images(range(first, first + num_images)), num_images,
                               PROPOSALS_PER_IMAGE, first_image=first)


class _ProposalRows:
    """What the detector stage's dataset reads of the proposal file for item i (ProposalDataset)."""

    def __init__(self, proposals):
        self.proposals = proposals

    def __len__(self):
        return len(self.proposals)

    def __getitem__(self, index):
        return self.proposals.boxes(index)


def scale_child(part: str, num_images: int, folder: Path) -> None:
    """Run one part in this (fresh) process; prints {"seconds", "peak_mib", "start_mib"} as JSON. The proposal
    file parts import numpy and frcnn.engine.proposal_store only; index, epoch and COCO AP import torch too."""
    from frcnn.engine.proposal_store import ProposalFile, merge_proposal_files, shard_range

    proposal_path = folder / "proposals.safetensors"
    setup = None
    if part.startswith("merge"):
        world = int(part[len("merge"):])
        shards = [folder / f"shard{r}-of-{world}" for r in range(world)]
        for r, shard in enumerate(shards):
            indices = shard_range(num_images, r, world, 2)
            _write_file(shard, len(indices), indices.start)
        setup = shards
    elif part.startswith("coco_ap"):
        setup = _generated_detections(num_images)
    if part == "index":  # imports before the clock starts; each part only what it uses
        from frcnn.data.coco import COCODataset
    elif part == "epoch":
        import torch
        from torch.utils.data import DataLoader
    elif part.startswith("coco_ap"):
        from frcnn.evaluation.coco_map import CocoEvaluator
    start_kib = _reset_peak()
    began = time.perf_counter()
    extra = {}
    if part == "index":
        dataset = COCODataset(folder / "annotations.json", folder / "images")
        extra["boxes"] = int(sum(len(r.boxes_xyxy) for r in dataset.records))
    elif part == "write":
        _write_file(proposal_path, num_images)
    elif part.startswith("merge"):
        merge_proposal_files(setup, folder / "merged.safetensors")
    elif part == "read":
        proposals = ProposalFile(proposal_path, num_images)
        extra["boxes"] = sum(len(proposals.boxes(i)) for i in range(num_images))
    elif part == "epoch":
        loader = DataLoader(_ProposalRows(ProposalFile(proposal_path, num_images)), batch_size=2, shuffle=True,
                            num_workers=2, collate_fn=list, generator=torch.Generator().manual_seed(0))
        extra["boxes"] = sum(len(boxes) for batch in loader for boxes in batch)
    elif part.startswith("coco_ap"):
        evaluator = CocoEvaluator(backend=part[len("coco_ap_"):])
        predictions, targets = setup
        for first in range(0, num_images, 8):
            evaluator.update(predictions[first : first + 8], targets[first : first + 8])
        extra["map_coco"] = evaluator.compute()["map_coco"]
    else:
        raise ValueError(f"unknown scale part {part!r}")
    seconds = time.perf_counter() - began
    peak_kib = max(_status_kib("VmHWM"), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # workers too
    if part.startswith("merge"):
        for path in (*setup, folder / "merged.safetensors"):
            path.unlink()
    print(json.dumps({"part": part, "images": num_images, "seconds": seconds, "peak_mib": peak_kib / 1024,
                      "start_mib": start_kib / 1024, **extra}), flush=True)


def _generated_detections(num_images: int, seed: int = 0):
    """COCO-like evaluation input: ~7.3 ground truths per image, 100 detections per image (the jittered
    ground truth, some with another class, and false positives), 80 classes."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def boxes(n):
        side = 4 + torch.rand(n, 2, generator=g) * 300
        corner = torch.rand(n, 2, generator=g) * (torch.tensor([640.0, 480.0]) - side).clamp(min=1)
        return torch.cat([corner, corner + side], dim=1)

    predictions, targets = [], []
    for _ in range(num_images):
        k = min(int(torch.randint(1, 15, (1,), generator=g)), 100)
        gt, gt_labels = boxes(k), torch.randint(1, 81, (k,), generator=g)
        det = torch.cat([gt + torch.randn(k, 4, generator=g) * 8, boxes(100 - k)])
        det_labels = torch.cat([gt_labels, torch.randint(1, 81, (100 - k,), generator=g)])
        predictions.append({"boxes": det, "scores": torch.rand(100, generator=g), "labels": det_labels})
        targets.append({"boxes": gt, "labels": gt_labels, "difficult": torch.zeros(k, dtype=torch.bool)})
    return predictions, targets


# ------------------------------------------------------------------------------------------- the table
def _run_part(part: str, num_images: int, folder: Path) -> dict | None:
    cmd = [sys.executable, __file__, part, str(num_images), str(folder)]  # this module alone: torch + numpy imported
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        print(f"  {part} at {num_images} images: failed ({result.stderr.strip()[-500:]})", flush=True)
        return None
    measured = json.loads(lines[-1])
    print(f"  {part:>26} {num_images:>7} images: {measured['seconds']:8.2f} s, peak RSS {measured['peak_mib']:7.0f} MiB "
          f"({measured['peak_mib'] - measured['start_mib']:+.0f} over the process's start)", flush=True)
    return measured


def growth_exponent(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(size)."""
    x, y = np.log(sizes), np.log(np.maximum(values, 1e-9))
    return float(np.polyfit(x, y, 1)[0]) if len(sizes) > 1 else math.nan


def _table(results: dict[str, dict[int, dict]]) -> str:
    sizes = sorted({n for by_size in results.values() for n in by_size})
    lines = ["| part | " + " | ".join(f"{n:,} images" for n in sizes) + " | time exp. | memory exp. |",
             "|---|" + "---|" * len(sizes) + "---|---|"]
    for part, by_size in results.items():
        cells = [f"{by_size[n]['seconds']:.2f} s, {by_size[n]['peak_mib']:.0f} MiB" if n in by_size else ""
                 for n in sizes]
        measured = sorted(by_size)
        t_exp = growth_exponent(measured, [by_size[n]["seconds"] for n in measured])
        m_exp = growth_exponent(measured, [max(by_size[n]["peak_mib"] - by_size[n]["start_mib"], 1.0)
                                           for n in measured])
        lines.append(f"| {part} | " + " | ".join(cells) + f" | {t_exp:.2f} | {m_exp:.2f} |")
    return "\n".join(lines)


def bench_scale(sizes: list[int], eval_sizes: list[int], root: Path, parts: list[str]) -> dict:
    """Every part at every size (data parts at ``sizes``, COCO AP at ``eval_sizes``); prints the table."""
    results: dict[str, dict[int, dict]] = {}
    data_parts = [p for p in DATA_PARTS if p in parts]
    for num_images in sizes if data_parts else ():
        began = time.perf_counter()
        folder = prepare_size(root, num_images)
        print(f"[scale] {num_images} images: data in {folder} (made in {time.perf_counter() - began:.0f} s)", flush=True)
        for part in data_parts:
            measured = _run_part(part, num_images, folder)
            if measured is not None:
                results.setdefault(part, {})[num_images] = measured
        (folder / "proposals.safetensors").unlink(missing_ok=True)
    for backend in BACKENDS:
        part = f"coco_ap_{backend}"
        if part not in parts and "coco_ap" not in parts:
            continue
        for num_images in eval_sizes:
            measured = _run_part(part, num_images, root)
            if measured is not None:
                results.setdefault(part, {})[num_images] = measured
    print("\n" + _table(results), flush=True)
    print("(time and peak RSS per part, each in a fresh process; exponents: slope of log time and of log memory "
          "above the process's start against log images)", flush=True)
    return results


if __name__ == "__main__":  # one part in a fresh process: python scripts/bench/scale.py <part> <images> <folder>
    scale_child(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
