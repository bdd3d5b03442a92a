"""scripts/export.py: torch.export (.pt2), ONNX and TorchScript files of the whole detector against eager frcnn.

Parity rule (issue 14): on the built-in data's val images (and crops of other sizes, none a multiple
of the stride) the same number of detections, the same labels, boxes within 0.5 px and scores within
1e-4 of eager frcnn, for every format and for the unshared pair.
"""

import json
import zipfile

import pytest
import torch

from frcnn.cli.export_detector import main as export_main
from frcnn.data.synthetic import CLASS_NAMES, ShapesDataset
from frcnn.inference.detector_file import save_detector
from frcnn.inference.exportable import (
    ExportableDetector,
    SUFFIXES,
    ExportError,
    export_detector,
    parity,
    parity_problem,
    run_exported,
)
from frcnn.inference.predictor import network_input
from frcnn.modeling.build import build_model
from frcnn.modeling.faster_rcnn import UnsharedFasterRCNN
from frcnn.modeling.rpn import ProposalSettings
from tests.cli_runner import run_fresh
from tests.conftest import compose_config, memory_backed_dir

BOX_TOLERANCE_PX, SCORE_TOLERANCE = 0.5, 1e-4
# The paper's minimum proposal size (original-image px): on an image enlarged 3x it is 48 px at the network input
# and drops every proposal of the 32-px anchors (22.6 x 45.3 and 45.3 x 22.6 with ratios 1:2 and 2:1). The default
# preset's 4 px (12 px at 3x) dropped no proposal of the untrained detector, so the 3x parity case gave the same
# detections as without its factor: a graph that ignored image_scale passed it.
MIN_SIZE = "rpn.min_size=16"
ENLARGED = 3.0  # the resize factor of assert_parity's enlarged case


def model_cfg(overrides=()):
    cfg = compose_config([MIN_SIZE, *overrides], "unused")
    return {k: cfg[k] for k in ("backbone", "rpn", "roi_head")}


def built(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, num_classes=len(CLASS_NAMES)).eval()


@pytest.fixture(scope="module")
def val_images():
    """Network-scale inputs: 2 val images of the built-in data (256 x 256) and 2 crops of other sizes."""
    raw = [ShapesDataset("val", num_images=2).raw(i)[0] for i in range(2)]  # uint8 [256, 256, 3]
    crops = [raw[0][:200, :237], raw[1][19:, :170]]
    return [network_input(pixels, 256, 1000) for pixels in raw + crops]


@pytest.fixture(scope="module")
def model():
    return built(model_cfg())


@pytest.fixture(scope="module")
def export_once(model, tmp_path_factory):
    """format -> file of the default detector, each format exported once per module."""
    files = {}

    def get(export_format):
        if export_format == "onnx":
            pytest.importorskip("onnxruntime", reason="the deploy extra: pip install -e '.[deploy]'")
        if export_format not in files:
            out = tmp_path_factory.mktemp("exported") / f"det{SUFFIXES[export_format]}"
            files[export_format] = export_detector(model, list(CLASS_NAMES), 256, 1000, export_format, out)
        return files[export_format]

    return get


def assert_parity(model, path, images):
    # the first image also as if enlarged 3x: the minimum proposal size (original pixels) then drops more boxes
    for image, image_scale in [(images[0], ENLARGED), *((image, 1.0) for image in images)]:
        report = parity(model, run_exported(path, image, image_scale), image, image_scale=image_scale)
        assert report["eager"] > 0 and parity_problem(report, BOX_TOLERANCE_PX, SCORE_TOLERANCE) is None, \
            (tuple(image.shape), report)
    # the enlarged case depends on its factor: eager frcnn's detections without it break the parity rule
    with torch.inference_mode():
        unscaled = model([images[0]], image_scales=[1.0])[0]
    without_factor = (unscaled["boxes"], unscaled["scores"], unscaled["labels"])
    report = parity(model, without_factor, images[0], image_scale=ENLARGED)
    assert parity_problem(report, BOX_TOLERANCE_PX, SCORE_TOLERANCE) is not None, \
        f"the {ENLARGED:g}x case gives the same detections without its factor ({MIN_SIZE}): {report}"


def test_parity_report_shows_a_score_or_box_beyond_tolerance(model, val_images):
    """parity() pairs detections by label and box even when a score is off, so max_score_diff can exceed the
    tolerance (it once paired only within it, and could not); parity_problem names what breaks the rule."""
    image = val_images[0]
    with torch.inference_mode():
        eager = model([image])[0]
    exact = (eager["boxes"].clone(), eager["scores"].clone(), eager["labels"].clone())
    assert parity_problem(parity(model, exact, image, eager=eager)) is None
    off_score = (exact[0], exact[1] + torch.linspace(0, 1e-3, exact[1].numel()), exact[2])
    report = parity(model, off_score, image, eager=eager)
    assert report["matched"] == report["eager"] and report["max_score_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert "scores differ by up to 0.001" in parity_problem(report)
    shifted = (exact[0] + 2.0, exact[1], exact[2])
    assert "boxes differ by up to 2 px" in parity_problem(parity(model, shifted, image, eager=eager))
    dropped = tuple(value[1:] for value in exact)
    assert "exported detections against" in parity_problem(parity(model, dropped, image, eager=eager))


@pytest.mark.parametrize("export_format", ["pt2", "torchscript", "onnx"])
def test_exported_detector_matches_eager_frcnn_on_val_images(model, export_once, export_format, val_images):
    assert_parity(model, export_once(export_format), val_images)


@pytest.mark.parametrize("export_format, suffix", [pytest.param("pt2", ".pt2", marks=pytest.mark.slow),
                                                   ("torchscript", ".pt"), ("onnx", ".onnx")])
def test_unshared_pair_and_roi_align_export_too(export_format, suffix, val_images, tmp_path):
    if export_format == "onnx":
        pytest.importorskip("onnxruntime", reason="the deploy extra: pip install -e '.[deploy]'")
    cfg = model_cfg(["roi_head.pool_type=align"])
    model = UnsharedFasterRCNN(built(cfg, seed=1), built(cfg, seed=2)).eval()
    path = export_detector(model, list(CLASS_NAMES), 256, 1000, export_format, tmp_path / f"pair{suffix}")
    assert_parity(model, path, val_images[2:3])  # one crop: 256 x 303 at network scale


class FixedRPNHead(torch.nn.Module):
    def __init__(self, logits, deltas):
        super().__init__()
        self.logits, self.deltas = logits, deltas

    def forward(self, features):
        return self.logits, self.deltas


def test_exported_proposal_layer_drops_small_boxes_before_the_pre_nms_cut(model):
    """The graph's proposal layer follows the authors' order as eager frcnn does: on a 4 x 4 feature map
    the 48 anchors of scale 32 (under 40 px once clipped) score highest, the pre-NMS N is 48, so only
    boxes of the other scales reach NMS (cutting first would leave none)."""
    gen = torch.Generator().manual_seed(0)
    anchors = model.rpn.anchor_generator((4, 4))  # [144, 4]: scales 32 / 64 / 128 per location
    scale_32 = torch.arange(144) % 3 == 0  # anchor index = location * 9 + ratio * 3 + scale
    logits = torch.rand(1, 144, generator=gen) + 10.0 * scale_32  # [1, A]
    deltas = torch.randn(1, 144, 4, generator=gen) * 0.1 * ~scale_32[:, None]  # [1, A, 4]; scale 32: the anchors
    exportable = ExportableDetector(model)
    exportable.rpn_head = FixedRPNHead(logits, deltas)
    exportable.pre_nms_top_n = 48
    graph = exportable.proposals(torch.zeros(1, 8, 4, 4), 64, 64, torch.tensor(40.0))
    settings = ProposalSettings(pre_nms_top_n=48, post_nms_top_n=model.rpn.test_proposals.post_nms_top_n,
                                nms_thresh=model.rpn.test_proposals.nms_thresh, min_size_px=40.0)
    eager, _ = model.rpn.propose(anchors, logits, deltas, [(64, 64)], settings)
    assert graph.shape[0] > 0 and torch.equal(graph, eager[0])
    assert ((graph[:, 2:] - graph[:, :2]) >= 40.0).all()


@pytest.mark.parametrize("export_format", ["pt2", "torchscript", "onnx"])
def test_an_image_whose_proposals_are_all_too_small_gives_no_detections(model, export_once, export_format, val_images):
    """An image enlarged 100x from its original: 16 original px are 1,600 px on the network input, so no
    proposal passes the minimum size; eager frcnn and the exported file return zero detections, not an error."""
    image = val_images[0]
    with torch.no_grad():
        (eager,) = model([image], image_scales=[100.0])
    boxes, scores, labels = run_exported(export_once(export_format), image, 100.0)
    assert eager["boxes"].shape == boxes.shape == (0, 4)
    assert eager["scores"].numel() == scores.numel() == labels.numel() == 0


LOADERS = {  # how a user without frcnn loads each format (the README's lines)
    "torchscript": "module = torch.jit.load({path!r}, _extra_files=files)\n",
    "pt2": "module = torch.export.load({path!r}, extra_files=files).module()\n",
}


@pytest.mark.parametrize("export_format", [pytest.param("pt2", marks=pytest.mark.slow), "torchscript"])
def test_exported_file_runs_without_frcnn(model, export_once, val_images, tmp_path, export_format):
    path = export_once(export_format)
    torch.save(val_images[2], tmp_path / "image.pt")
    script = (
        "import json, sys, torch, torchvision\n"
        "files = {'frcnn.json': ''}\n"
        + LOADERS[export_format].format(path=str(path)) +
        f"boxes, scores, labels = module(torch.load({str(tmp_path / 'image.pt')!r}), torch.tensor(1.0))\n"
        "assert not any(name.startswith('frcnn') for name in sys.modules), 'frcnn was imported'\n"
        f"torch.save((boxes, scores, labels), {str(tmp_path / 'out.pt')!r})\n"
        "print(json.loads(files['frcnn.json'])['input']['scale'])\n"
    )
    result = run_fresh(["-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "256"
    outputs = torch.load(tmp_path / "out.pt")  # (boxes, scores, labels): tensors only
    report = parity(model, outputs, val_images[2])
    assert report["eager"] == report["exported"] == report["matched"] > 0
    assert report["max_box_diff_px"] <= BOX_TOLERANCE_PX


def test_export_refuses_what_it_cannot_reproduce():
    model = built(model_cfg(["rpn.test.ranking=random"]))
    with pytest.raises(ExportError, match=r"rpn\.test\.ranking='random'.*deterministic"):
        ExportableDetector(model)
    warping = built(model_cfg())
    warping.roi_head.warp_boxes = True  # what recipe=joint recipe.approximate=false trains
    with pytest.raises(ExportError, match=r"roi_head\.warp_boxes=true.*approximate=false"):
        ExportableDetector(warping)


def test_export_command_writes_the_file_and_checks_it(model, tmp_path, capsys, monkeypatch):
    cfg = model_cfg()
    save_detector(model, cfg, list(CLASS_NAMES), tmp_path / "model.pt")
    assert export_main([str(tmp_path / "model.pt"), "--format", "torchscript", "--out", str(tmp_path / "d.pt"),
                        "--scale", "128"]) == 0
    printed = capsys.readouterr().out
    assert "shorter side 128, longer side <= 1000" in printed and "max_box_diff_px" in printed
    with zipfile.ZipFile(tmp_path / "d.pt") as archive:
        name = next(n for n in archive.namelist() if n.endswith("extra/frcnn.json"))
        metadata = json.loads(archive.read(name))
    assert metadata["class_names"] == list(CLASS_NAMES) and metadata["input"]["max_size"] == 1000
    assert export_main([str(tmp_path / "model.pt"), "--format", "pt2", "--out", str(tmp_path / "d.pt2"),
                        "--scale", "128"]) == 0
    assert "max_box_diff_px" in capsys.readouterr().out
    files = {"frcnn.json": ""}
    torch.export.load(str(tmp_path / "d.pt2"), extra_files=files)
    assert json.loads(files["frcnn.json"])["format"] == "frcnn-exported-detector-v1/pt2"

    # beyond the parity rule the command removes the file and exits 1 naming the difference
    from frcnn.cli import export_detector as command

    exported_run = command.run_exported

    def one_px_off(*args, **kwargs):  # a file whose boxes are 1 px off eager frcnn's
        boxes, scores, labels = exported_run(*args, **kwargs)
        return boxes + 1.0, scores, labels

    monkeypatch.setattr(command, "run_exported", one_px_off)
    assert export_main([str(tmp_path / "model.pt"), "--format", "torchscript", "--out", str(tmp_path / "far.pt"),
                        "--scale", "128"]) == 1
    err = capsys.readouterr().err
    assert "does not reproduce eager frcnn: boxes differ by up to 1 px (tolerance 0.5 px)" in err, err
    assert not (tmp_path / "far.pt").exists()
    monkeypatch.setattr(command, "run_exported", exported_run)

    (tmp_path / "notes.pt").write_text("not a detector")

    for argv, message in (([str(tmp_path / "model.pt"), "--format", "onnx", "--out", str(tmp_path / "d.pt")],
                           "a onnx file is named *.onnx"),
                          ([str(tmp_path / "missing.pt"), "--format", "torchscript", "--out", str(tmp_path / "m.pt")],
                           "missing.pt"),
                          ([str(tmp_path / "notes.pt"), "--format", "torchscript", "--out", str(tmp_path / "n.pt")],
                           "notes.pt: ")):
        with pytest.raises(SystemExit) as stop:
            export_main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture
def big_files_dir(tmp_path):
    with memory_backed_dir(tmp_path, "frcnn_vgg_export_", 4 * 2**30) as folder:
        yield folder


@pytest.mark.slow
def test_paper_preset_vgg16_exports_and_runs(big_files_dir):
    """VGG-16 as the paper preset builds it (600 / 1000, random weights), both formats; run on one
    small image (the graph takes any size) to keep the test cheap: the cost is the ~550 MB files,
    written in memory (/dev/shm) where the machine has room for them."""
    tmp_path = big_files_dir
    cfg = compose_config(["experiment=paper/voc07_vgg16_alt", "backbone.weights=null"], "unused")
    model = built({k: cfg[k] for k in ("backbone", "rpn", "roi_head")})
    image = torch.rand(3, 224, 299, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eager = model([image])[0]
    formats = [("torchscript", ".pt")]
    try:
        import onnxruntime  # noqa: F401

        formats.append(("onnx", ".onnx"))
    except ImportError:
        pass
    for export_format, suffix in formats:
        path = export_detector(model, list(CLASS_NAMES), 600, 1000, export_format, tmp_path / f"vgg{suffix}")
        report = parity(model, run_exported(path, image), image, eager=eager)
        assert report["eager"] == report["exported"] == report["matched"] > 0, report
        assert report["max_box_diff_px"] <= BOX_TOLERANCE_PX and report["max_score_diff"] <= SCORE_TOLERANCE, report
        path.unlink()


def test_an_export_torch_cannot_trace_is_one_line_naming_the_format(model, tmp_path, capsys, monkeypatch):
    from frcnn.inference import exportable

    def refuses(module):
        raise RuntimeError("Constraints violated (height, width)!\n  - Not all values of height ... (a page)")

    monkeypatch.setattr(exportable, "exported_program", refuses)
    save_detector(model, model_cfg(), list(CLASS_NAMES), tmp_path / "model.pt")
    with pytest.raises(SystemExit) as stop:
        export_main([str(tmp_path / "model.pt"), "--format", "pt2", "--out", str(tmp_path / "d.pt2")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--format pt2: RuntimeError while exporting" in err and "Constraints violated (height, width)!" in err
    assert not (tmp_path / "d.pt2").exists()


@pytest.mark.slow
def test_pt2_trace_takes_a_body_with_tf_same_padding():
    """timm's TF-"same" convolutions (tf_efficientnet_lite*, the own-data preset's body) pad by ceil / max formulas
    of the input size: four of them stride 2, and a torch.export Dim with a range refuses the trace ("Constraints
    violated", the symbolic reasoning takes ~20 s); Dim.DYNAMIC keeps the size symbolic and the program right at
    other sizes."""
    from timm.layers import create_conv2d

    from frcnn.inference.torch_export import exported_program

    class Body(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.Sequential(*[create_conv2d(3 if i == 0 else 4, 4, 3, stride=2, padding="same")
                                               for i in range(4)])

        def forward(self, image, image_scale):
            return self.convs(image[None])[0] * image_scale

    torch.manual_seed(0)
    body = Body().eval()
    program = exported_program(body).module()
    for height, width in ((33, 45), (97, 200)):
        image = torch.rand(3, height, width)
        with torch.no_grad():
            torch.testing.assert_close(program(image, torch.tensor(2.0)), body(image, torch.tensor(2.0)))
