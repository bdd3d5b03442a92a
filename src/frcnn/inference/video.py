"""A detector on a video: frames decoded by PyAV (FFmpeg's libraries; ``pip install 'frcnn[video]'``) in
batches, detected, drawn, and encoded into a new video of the same size and frame rate, with one JSON line
per frame (its index, its time in seconds, and the boxes, scores, labels and class names in its pixels).

    from frcnn.inference.video import detect_video
    detect_video(Detector.from_checkpoint(...), "clip.mp4", "out/clip.mp4", "out/clip.jsonl")

The written video is H.264 (libx264, yuv420p, CRF 18) in an MP4 file; H.264 needs an even width and height,
so a frame of odd size gets one black row / column at its bottom / right. A file FFmpeg cannot read
(or that holds no video stream) stops with a :class:`BadVideoError` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from frcnn.inference.drawing import draw_detections
from frcnn.inference.predictor import Detections, Detector
from frcnn.utils.progress import start_progress

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg")
FRAMES_PER_BATCH = 16  # frames decoded, then detected together (the Detector batches them by its batch_size)
CODEC, CODEC_OPTIONS, PIXEL_FORMAT = "libx264", {"crf": "18"}, "yuv420p"
DEFAULT_FPS = 25


class BadVideoError(ValueError):
    """A video file that cannot be decoded; the message names it."""


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def import_av():
    try:
        import av
    except ImportError:
        raise BadVideoError("detection on a video needs PyAV: pip install 'frcnn[video]' (or pip install av)") from None
    return av


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's reason without the file name PyAV appends (the message names the file once)."""
    return getattr(exc, "strerror", None) or str(exc)


def frame_record(index: int, time_s: float, found: Detections) -> dict:
    """One JSON line: frame index, time (s), and the detections in the frame's pixels."""
    return {"frame": index, "time_s": round(float(time_s), 6),
            "boxes": [[round(v, 2) for v in box] for box in found.boxes.tolist()],
            "scores": [round(v, 5) for v in found.scores.tolist()], "labels": found.labels.tolist(),
            "class_names": list(found.class_names)}


def even_sized(frame_rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> padded with black to an even height and width (H.264's 4:2:0 needs them)."""
    height, width = frame_rgb.shape[:2]
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w):
        return frame_rgb
    return np.pad(frame_rgb, ((0, pad_h), (0, pad_w), (0, 0)))


def _frames(av, container, stream, path: Path) -> Iterator[tuple[np.ndarray, float]]:
    """(RGB [H, W, 3] uint8, time in s) of every frame, in order; a decoding error names the file and frame."""
    rate = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
    index = 0
    try:
        for frame in container.decode(stream):
            time_s = frame.time if frame.time is not None else index / rate
            yield frame.to_ndarray(format="rgb24"), time_s
            index += 1
    except av.FFmpegError as exc:
        raise BadVideoError(f"{path}: cannot decode frame {index} ({ffmpeg_reason(exc)})") from exc


def open_video(path: str | Path):
    """-> (av module, container, its first video stream); BadVideoError naming a file FFmpeg cannot read."""
    av = import_av()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise BadVideoError(f"{path}: cannot read the video ({ffmpeg_reason(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise BadVideoError(f"{path}: holds no video stream")
    return av, container, container.streams.video[0]


def detect_video(detector: Detector, path: str | Path, out_video: str | Path, out_jsonl: str | Path,
                 frames_per_batch: int = FRAMES_PER_BATCH) -> dict:
    """Detect on every frame of ``path``; write the drawn frames to ``out_video`` (MP4, H.264, the input's frame
    rate) and one JSON line per frame to ``out_jsonl``. Progress in frames with frames/s
    (:func:`frcnn.utils.progress.start_progress`). -> {"video", "jsonl", "frames", "detections", "fps"}."""
    path, out_video, out_jsonl = Path(path), Path(out_video), Path(out_jsonl)
    av, container, stream = open_video(path)
    rate = stream.average_rate or stream.guessed_rate or Fraction(DEFAULT_FPS)
    total = int(stream.frames or 0) or int(round(float(stream.duration * stream.time_base * rate))
                                          if stream.duration else 0)
    out_video.parent.mkdir(parents=True, exist_ok=True)
    progress = start_progress(f"detect {path.name}", total, "frames")
    frames = detections = 0
    try:
        with av.open(str(out_video), "w") as output, open(out_jsonl, "w") as lines:
            encoder = None
            decoded = _frames(av, container, stream, path)
            while True:
                batch = [item for _, item in zip(range(frames_per_batch), decoded)]
                if not batch:
                    break
                for (pixels, time_s), found in zip(batch, detector([pixels for pixels, _ in batch])):
                    drawn = even_sized(np.asarray(draw_detections(Image.fromarray(pixels), found.boxes, found.labels,
                                                                  found.scores, detector.class_names)))
                    if encoder is None:
                        encoder = output.add_stream(CODEC, rate=rate, options=CODEC_OPTIONS)
                        encoder.height, encoder.width = drawn.shape[:2]
                        encoder.pix_fmt = PIXEL_FORMAT
                    output.mux(encoder.encode(av.VideoFrame.from_ndarray(drawn, format="rgb24")))
                    lines.write(json.dumps(frame_record(frames, time_s, found)) + "\n")
                    frames += 1
                    detections += len(found)
                progress.update(frames)
            if encoder is not None:
                output.mux(encoder.encode())  # flush the encoder's delayed frames
        if frames == 0:
            raise BadVideoError(f"{path}: no frame could be decoded")
    except BadVideoError:
        out_video.unlink(missing_ok=True)  # no half-written outputs
        out_jsonl.unlink(missing_ok=True)
        raise
    finally:
        progress.close()
        container.close()
    return {"video": str(out_video), "jsonl": str(out_jsonl), "frames": frames, "detections": detections,
            "fps": float(rate)}
