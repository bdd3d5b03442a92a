import atexit
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Generated data (data=voclike trees) of this test process: never the user's ~/.cache/frcnn
os.environ["FRCNN_DATA_DIR"] = tempfile.mkdtemp(prefix="frcnn-test-data-")
atexit.register(shutil.rmtree, os.environ["FRCNN_DATA_DIR"], True)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `-n 2` (pyproject's addopts): one core per worker. Two workers with two threads each (and the
    # train.py processes they start, which read OMP_NUM_THREADS) would oversubscribe the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def compose_config(overrides, run_dir):
    """Compose the training config like `python train.py <overrides>` would, as a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
        cfg = compose("train", overrides=list(overrides) + [f"run_dir={run_dir}"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="session", autouse=True)
def _no_tmp_dirs_left_by_mutmut(tmp_path_factory):
    """mutmut (scripts/mutation_test.sh) runs one pytest session per mutant, and pytest cleans up only base temp dirs of
    sessions it saw end: without this, every mutant leaves its base temp dir in /tmp (a 0.5 GB VGG-16 file where the
    backbone tests run), and a run over modeling/backbone fills tens of GB."""
    yield
    if os.environ.get("MUTANT_UNDER_TEST"):
        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)


@pytest.fixture
def offline_torch_hub(monkeypatch, tmp_path):
    """An empty torch hub cache and no network: every download fails as without a connection.
    -> the cache's checkpoints folder (where torchvision looks for its ImageNet files)."""
    import urllib.error

    import torch

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture
def offline_hf_hub(monkeypatch, tmp_path):
    """An empty Hugging Face hub cache (where timm's ImageNet weights are looked for), offline -> its folder."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


@pytest.fixture(scope="module")
def two_torch_threads():
    """At most 2 torch threads for a module of big-net tests (``pytestmark = pytest.mark.usefixtures(...)``)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(min(old, 2))
    yield
    torch.set_num_threads(old)


@pytest.fixture
def compose_cfg():
    return compose_config


@contextmanager
def memory_backed_dir(tmp_path: Path, prefix: str, needed_bytes: int):
    """A folder for GB-sized files (VGG-16 checkpoints, exports): in memory (/dev/shm) where it has
    ``needed_bytes`` free, since writing those GBs to disk is a large part of such a test's time, and
    removed afterwards; else ``tmp_path``."""
    shm = Path("/dev/shm")
    try:
        has_room = shm.is_dir() and shutil.disk_usage(shm).free > needed_bytes
    except OSError:
        has_room = False
    if not has_room:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)



# by measured duration on one core (2026-12-02, AMD EPYC, the 296-s run): 62, 58, 29, 28, 28, 26, 26, 25, 22, 21 s
LONGEST_FIRST = (
    "tests/test_paper_scale.py::test_alternating_preset_runs_at_paper_scale[voc07_vgg16_alt]",
    "tests/test_paper_scale.py::test_alternating_preset_runs_at_paper_scale[voc07_vgg16_alt_pyrelease]",
    "tests/test_paper_scale.py::test_unshared_preset_runs_at_paper_scale",
    "tests/test_model_export.py::test_paper_preset_vgg16_exports_and_runs",
    "tests/test_paper_scale.py::test_joint_preset_runs_at_paper_scale[coco_vgg16_joint",
    "tests/test_nonapprox_joint.py::test_nonapproximate_training_beats_the_untrained_model",
    "tests/test_reproduce_e2e.py::test_table2_quick_trains_two_models_per_seed_and_resumes",
    "tests/test_kill_resume.py::",
    "tests/test_end_to_end.py::test_joint_training_loss_falls_and_map_beats_untrained",
    "tests/test_paper_scale.py::test_alternating_preset_runs_at_paper_scale[voc07_zf_alt]",
    "tests/test_paper_scale.py::test_joint_preset_runs_at_paper_scale[voc07_vgg16_joint",
    "tests/test_ddp_cpu.py::test_ddp_on_two_cpu_processes_writes_each_output_once",
)


def pytest_collection_modifyitems(items):
    """Longest first: the tests of LONGEST_FIRST in its order, then the other slow ones, then the
    rest (each group in collection order). pyproject's ``--dist load --maxschedchunk 1`` hands
    each worker its next test when it frees up, so the long ones alternate between the two
    workers and the short ones fill the end, instead of one worker finishing a minute before the
    other."""
    def rank(item):
        for position, prefix in enumerate(LONGEST_FIRST):
            if item.nodeid.startswith(prefix):
                return position
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)
