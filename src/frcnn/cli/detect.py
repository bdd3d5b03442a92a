"""`python scripts/detect.py CHECKPOINT IMAGE_OR_FOLDER_OR_VIDEO... --out-dir DIR`: run a saved detector on
image and video files.

For every input image (jpg / jpeg / png / bmp; a folder contributes its images, not its sub-folders)
the output folder gets a copy of the image, same size and format, with each detection's box, class
name and score drawn, plus ONE ``detections.json`` in COCO results format and its sidecar
``categories.json`` (see :mod:`frcnn.evaluation.detections_io`). Images enter the network rescaled by
the paper's test rule (shorter side = scale, longer side <= max_size, §3.3) and the boxes are mapped
back to original pixels; ``--tile 400 --overlap 0.2`` detects each image by overlapping tiles of 400 of
its px instead (:mod:`frcnn.inference.tiling`). An unreadable image is an error naming the file
(``--skip-bad``: a warning, and the image is skipped).

A video file (mp4 / mov / avi / mkv / webm / ...) gives ``<stem>.mp4``, its frames with the detections
drawn, and ``<stem>.jsonl``, one JSON line per frame (:mod:`frcnn.inference.video`; the ``video`` extra).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from frcnn.data.checks import BadImageError
from frcnn.evaluation.detections_io import coco_result_records, write_coco_results
from frcnn.inference.drawing import draw_detections
from frcnn.inference.predictor import Detector, read_image
from frcnn.inference.tiling import DEFAULT_OVERLAP
from frcnn.inference.video import BadVideoError, detect_video, import_av, is_video

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
PIL_FORMAT_BY_EXTENSION = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}
IMAGES_PER_CHUNK = 16  # images decoded and detected together (the Detector batches same-size ones)

# ----------------------------------------------------------------------------- inputs
def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given (any extension) and the jpg/jpeg/png/bmp files of folders (sorted, not recursive)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image / video file or folder")
    if not found:
        raise ValueError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in {[str(i) for i in inputs]}")
    return found


# ----------------------------------------------------------------------------- output
def save_like_input(image: Image.Image, source: Path, out_path: Path, pil_format: str | None) -> None:
    """Save in the input's format (by extension, else the decoded format, else PNG)."""
    fmt = PIL_FORMAT_BY_EXTENSION.get(source.suffix.lower()) or pil_format or "PNG"
    options = {"quality": 95} if fmt == "JPEG" else {}
    image.save(out_path, format=fmt, **options)


def _unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``stem_<k>.ext`` if an earlier input already took it."""
    candidate, k = name, 1
    while candidate in used:
        candidate = f"{Path(name).stem}_{k}{Path(name).suffix}"
        k += 1
    used.add(candidate)
    return candidate


def read_images(paths: Sequence[Path], skip_bad: bool, skipped: list[str]) -> list[tuple[Path, Image.Image, str | None]]:
    """Decode each file -> (path, RGB image, PIL format); an unreadable one raises BadImageError,
    or with ``skip_bad`` is warned about and appended to ``skipped``."""
    decoded = []
    for path in paths:
        try:
            decoded.append((path, *read_image(path)))
        except BadImageError as exc:
            if not skip_bad:
                raise
            log.warning("skipping %s", exc)
            skipped.append(str(path))
    return decoded


def detect_files(checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, score_thresh: float = 0.5,
                 scale: int | None = None, max_size: int | None = None, device: str = "cpu",
                 skip_bad: bool = False, svd_rank: Sequence[int] | None = None, tile: int | None = None,
                 overlap: float = DEFAULT_OVERLAP, batch_size: int = 1) -> dict:
    """Detect, draw and write (module docstring) with :class:`frcnn.Detector`. ``scale`` / ``max_size``
    default to the checkpoint's training values when recorded, else the paper's 600 / 1000. ``tile`` /
    ``overlap``: detect by tiles; ``batch_size``: images, tiles or frames per forward pass.

    -> {"images": processed count, "detections": written count, "skipped": [files], "results": path (None
    without images), "scale": (scale, max_size), "videos": [detect_video's summary per video]}.
    """
    out_dir = Path(out_dir)
    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"--score-thresh must be in [0, 1], got {score_thresh}")
    found_files = find_images(inputs)
    videos = [path for path in found_files if is_video(path)]
    images = [path for path in found_files if not is_video(path)]
    if videos:
        import_av()  # the video extra, before loading a model
    # first: the restricted reader checks the file
    detector = Detector.from_checkpoint(checkpoint, device, scale, max_size, svd_rank=svd_rank,
                                        score_thresh=score_thresh, tile=tile, overlap=overlap, batch_size=batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)

    records, image_entries, skipped, used_names = [], [], [], set()
    for start in range(0, len(images), IMAGES_PER_CHUNK):
        decoded = read_images(images[start:start + IMAGES_PER_CHUNK], skip_bad, skipped)
        found = detector([image for _, image, _ in decoded]) if decoded else []
        for (path, image, pil_format), detections in zip(decoded, found):
            out_name = _unique_name(path.name, used_names)
            drawn = draw_detections(image, detections.boxes, detections.labels, detections.scores,
                                    detector.class_names)
            save_like_input(drawn, path, out_dir / out_name, pil_format)
            image_id = len(image_entries)
            image_entries.append({"id": image_id, "file_name": out_name, "width": image.width,
                                  "height": image.height})
            records += coco_result_records(image_id, out_name, detections.boxes, detections.scores,
                                           detections.labels)
    results_path = write_coco_results(records, detector.class_names, image_entries, out_dir)[0] if images else None
    video_summaries = []
    for path in videos:
        name = _unique_name(f"{path.stem}.mp4", used_names)
        video_summaries.append(detect_video(detector, path, out_dir / name, out_dir / f"{Path(name).stem}.jsonl"))
    return {"images": len(image_entries), "detections": len(records), "skipped": skipped,
            "results": None if results_path is None else str(results_path),
            "scale": (detector.scale, detector.max_size), "videos": video_summaries}


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("checkpoint", help="detector file written by training (<run dir>/final/model.pt)")
    parser.add_argument("inputs", nargs="+", help="image files, folders of jpg/jpeg/png/bmp images, video files "
                                                  "(mp4/mov/avi/mkv/webm: the video extra)")
    parser.add_argument("--out-dir", required=True, help="folder for the drawn images and detections.json")
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="keep (draw and write) detections with score >= this (default 0.5)")
    parser.add_argument("--scale", type=int, default=None,
                        help="shorter side in px the network sees (default: the checkpoint's training scale, else 600)")
    parser.add_argument("--max-size", type=int, default=None,
                        help="cap on the longer side in px (default: the checkpoint's, else 1000)")
    parser.add_argument("--tile", type=int, default=None, metavar="PX",
                        help="detect each image by overlapping tiles of PX of its own pixels (e.g. the 400 of "
                             "scripts/tile_voc.py's training tiles), merged by class-wise NMS")
    parser.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP,
                        help="with --tile: neighbouring tiles overlap by this fraction of a tile "
                             f"(default {DEFAULT_OVERLAP})")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images, tiles or video frames per forward pass (same-size ones; default 1)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--skip-bad", action="store_true", help="warn about and skip unreadable images")
    parser.add_argument("--svd-rank", type=int, nargs="+", default=None, metavar="RANK",
                        help="truncated SVD of the RoI head's fc layers, one rank per layer (0 keeps one): "
                             "1024 256 for VGG-16's fc6 fc7 (Fast R-CNN §3.1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = detect_files(args.checkpoint, args.inputs, args.out_dir, args.score_thresh, args.scale,
                               args.max_size, args.device, args.skip_bad, args.svd_rank, args.tile, args.overlap,
                               args.batch_size)
    except (BadImageError, BadVideoError, FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    how = f"at scale {summary['scale'][0]}/{summary['scale'][1]}" + (
        f" by tiles of {args.tile} px (overlap {args.overlap:g})" if args.tile else "")
    if summary["results"] is not None:
        print(f"{summary['images']} images, {summary['detections']} detections (score >= {args.score_thresh}) {how}; "
              f"results in {summary['results']}"
              + (f"; skipped {len(summary['skipped'])} unreadable" if summary["skipped"] else ""))
    for video in summary["videos"]:
        print(f"{video['frames']} frames, {video['detections']} detections (score >= {args.score_thresh}) {how}; "
              f"wrote {video['video']} and {video['jsonl']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
