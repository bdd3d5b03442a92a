"""The console of a run (frcnn/cli/console.py): every log line printed once, frcnn's warnings kept,
Lightning's tips and other packages' deprecation warnings dropped. The end-to-end check on a real
`python train.py` is :func:`console_problems`, applied in
tests/test_end_to_end.py::test_cli_runs_with_overrides_and_writes_metrics (one subprocess for both).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections import Counter

import pytest

from frcnn.cli.console import FOREIGN_LOGGERS, ForeignTipFilter, _ignore_foreign_deprecations, configure_console

HYDRA_PREFIX = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[[^\]]+\]\[[A-Z]+\] - ")  # [time][logger][LEVEL] -
LIGHTNING_PREFIX = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL): ")  # Lightning's own handler
FOREIGN_NOISE = re.compile(r"💡|litlogger|is deprecated|DeprecationWarning|FutureWarning|faster_coco_eval")


def console_problems(stdout: str, stderr: str) -> list[str]:
    """Lines a run printed more than once (whatever handler printed them) and foreign noise."""
    messages = []
    for line in (stdout + "\n" + stderr).split("\n"):  # not splitlines(): a "\r" progress bar stays one line
        if "\r" in line or not re.search(r"[A-Za-z]", line):  # progress bars, table rules
            continue
        messages.append(LIGHTNING_PREFIX.sub("", HYDRA_PREFIX.sub("", line)).strip())
    problems = [f"printed {n} times: {m}" for m, n in Counter(messages).items() if n > 1]
    return problems + [f"foreign noise: {m}" for m in messages if FOREIGN_NOISE.search(m)]


def test_console_problems_finds_a_line_printed_by_two_handlers_and_a_tip():
    stdout = ("[2026-12-01 05:28:03,700][lightning.pytorch.utilities.rank_zero][INFO] - GPU available: False\n"
              "----------\nmAP 0.5 0.5\n----------\n")
    stderr = "INFO: GPU available: False\nINFO: 💡 Tip: try installing [litlogger]\n"
    assert console_problems(stdout, stderr) == ["printed 2 times: GPU available: False",
                                                "foreign noise: 💡 Tip: try installing [litlogger]"]
    assert console_problems("mAP 0.5\n", "epoch 1 ...\r epoch 1 ...\r") == []


@pytest.fixture
def root_stream():
    """A handler on the root logger (as Hydra's job logging installs), removed afterwards with
    everything configure_console changed."""
    import lightning  # noqa: F401 - attaches Lightning's handler, as in a real run

    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
             for name in FOREIGN_LOGGERS}
    if not logging.getLogger("lightning").handlers:  # an earlier in-process train.py job configured the console
        logging.getLogger("lightning").addHandler(logging.StreamHandler(io.StringIO()))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)
    for h in root.handlers:
        for f in [f for f in h.filters if isinstance(f, ForeignTipFilter)]:
            h.removeFilter(f)
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


def test_lightning_lines_reach_the_root_handler_once_and_tips_are_dropped(root_stream):
    assert logging.getLogger("lightning").handlers  # Lightning's own StreamHandler: the second copy of each line
    configure_console()
    configure_console()  # idempotent: still one filter per handler
    assert all(not logging.getLogger(name).handlers for name in FOREIGN_LOGGERS)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.setLevel(logging.INFO)
    rank_zero.info("GPU available: False, used: False")
    rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
    logging.getLogger("frcnn.test").warning("💡 frcnn's own lines are never filtered")
    assert root_stream.getvalue().splitlines() == ["GPU available: False, used: False",
                                                   "💡 frcnn's own lines are never filtered"]
    root = logging.getLogger()
    assert all(sum(isinstance(f, ForeignTipFilter) for f in h.filters) == 1 for h in root.handlers)


def test_deprecation_warnings_of_other_packages_are_ignored_and_frcnns_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _ignore_foreign_deprecations()
        for category in (DeprecationWarning, FutureWarning):
            warnings.warn_explicit("old API", category, "pytree.py", 21, module="lightning.pytorch.utilities._pytree")
            warnings.warn_explicit("old key", category, "config.py", 1, module="frcnn.config.checks")
        warnings.warn_explicit("few batches", UserWarning, "fit_loop.py", 3, module="lightning.pytorch.loops")
    assert [(w.category, str(w.message)) for w in caught] == [
        (DeprecationWarning, "old key"), (FutureWarning, "old key"), (UserWarning, "few batches")]
