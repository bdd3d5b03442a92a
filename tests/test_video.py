"""frcnn-detect on a video (frcnn.inference.video): a drawn video of the same frames, size and rate, one JSON line
per frame holding the detector's own detections on that frame, progress in frames/s, one line for a bad file."""

import json
import logging
from fractions import Fraction

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from frcnn.cli.detect import main as detect_main
from frcnn.data.synthetic import CLASS_NAMES, ShapesDataset
from frcnn.inference.detector_file import save_detector
from frcnn.inference.predictor import Detector
from frcnn.inference.video import detect_video, frame_record
from frcnn.modeling.build import build_model
from frcnn.utils.progress import configure_progress, progress_settings
from tests.conftest import compose_config

av = pytest.importorskip("av", reason="the video extra: pip install -e '.[video]'")

FRAMES, FPS, HEIGHT, WIDTH = 5, 10, 95, 128  # an odd height: the written video gets one black row


def write_video(path, frames, fps=FPS):
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p"  # 4:4:4 takes an odd side
        for pixels in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        output.mux(stream.encode())


def read_video(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], stream.average_rate


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = compose_config([], run)
    torch.manual_seed(0)
    model_cfg = {k: cfg[k] for k in ("backbone", "rpn", "roi_head")}
    save_detector(build_model(model_cfg, num_classes=5), model_cfg, list(CLASS_NAMES), run / "final" / "model.pt")
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    return run / "final" / "model.pt"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A short video the test writes: shapes pictures cropped to 95 x 128, one per frame, at 10 frames/s."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, [ShapesDataset("val", num_images=FRAMES).raw(i)[0][:HEIGHT, :WIDTH] for i in range(FRAMES)])
    return path


def test_a_video_gives_a_drawn_video_and_one_json_line_per_frame(checkpoint, clip, tmp_path, caplog):
    detector = Detector.from_checkpoint(checkpoint, score_thresh=0.0, batch_size=2)
    old_every_s, _ = progress_settings()
    configure_progress(every_s=1e-6)  # a progress line at every batch
    try:
        with caplog.at_level(logging.INFO, logger="frcnn.progress"):
            summary = detect_video(detector, clip, tmp_path / "out.mp4", tmp_path / "out.jsonl", frames_per_batch=2)
    finally:
        configure_progress(every_s=old_every_s)
    assert summary["frames"] == FRAMES and summary["fps"] == FPS
    assert f"detect clip.mp4: {FRAMES}/{FRAMES} frames (100%)" in caplog.text and "frames/s" in caplog.text

    frames_in, _ = read_video(clip)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["time_s"] for line in lines] == pytest.approx([i / FPS for i in range(FRAMES)])
    for line, pixels in zip(lines, frames_in):  # the detector's own detections on the decoded frame
        expected = frame_record(line["frame"], line["time_s"], detector(pixels))
        assert line == expected and len(line["boxes"]) > 0
    assert summary["detections"] == sum(len(line["scores"]) for line in lines)

    frames_out, rate = read_video(tmp_path / "out.mp4")
    assert len(frames_out) == FRAMES and rate == Fraction(FPS)
    assert frames_out[0].shape == (HEIGHT + 1, WIDTH, 3)  # odd height padded by one black row
    assert np.abs(frames_out[0][:HEIGHT].astype(int) - frames_in[0].astype(int)).mean() > 1  # boxes drawn on it


def test_frcnn_detect_on_a_video_and_on_a_file_it_cannot_read(checkpoint, clip, tmp_path, capsys):
    assert detect_main([str(checkpoint), str(clip), "--out-dir", str(tmp_path / "out"), "--score-thresh", "0.05"]) == 0
    printed = capsys.readouterr().out
    assert f"{FRAMES} frames" in printed and "clip.jsonl" in printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.jsonl", "clip.mp4"]

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(SystemExit) as stop:
        detect_main([str(checkpoint), str(bad), "--out-dir", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {bad}: cannot read the video"), err
