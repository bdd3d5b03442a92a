"""The console of frcnn's Hydra command lines: every log line printed once, frcnn's own warnings
kept, other packages' noise dropped. :func:`configure_console` is called once at the start of a job.

Rules:

* One handler prints a line. Hydra's job logging owns the root logger (console on stdout and
  ``<run dir>/<job>.log``). Lightning's top-level package attaches its own StreamHandler to the
  ``lightning`` logger at import and lets records propagate too, so every Lightning line used to
  appear twice (``INFO: ...`` on stderr and Hydra's ``[time][logger][INFO] - ...``). The handlers
  Lightning attached to its loggers are removed and its records propagate to Hydra's handlers
  (one line, in Hydra's format, also in the job's log file). Without root handlers (no Hydra job
  logging) Lightning keeps its own.
* Advertisements are not log lines: Lightning's "💡 Tip: ... try installing [litlogger] ..." is
  dropped by a filter on the root handlers. Records of frcnn's loggers are never filtered.
* Deprecation warnings (DeprecationWarning, PendingDeprecationWarning, FutureWarning) raised
  from code outside frcnn are ignored: they speak to the maintainers of the package that calls a
  deprecated API, and a user running ``train.py`` cannot act on them. Those attributed to frcnn
  stay visible. Warnings of other kinds (e.g. Lightning's PossibleUserWarning about the user's own
  settings) are untouched, and so is everything when the user chose filters with ``python -W`` /
  ``PYTHONWARNINGS``.
"""

from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["FOREIGN_LOGGERS", "ForeignTipFilter", "configure_console"]

# loggers of Lightning that may carry a handler of their own (lightning/__init__.py,
# lightning/pytorch/__init__.py, lightning/fabric/__init__.py and the standalone packages)
FOREIGN_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
TIP_MARKERS = ("💡",)  # how Lightning's advertisements start
# libraries that print, at INFO, what frcnn prints itself: faster_coco_eval's 12-line COCO summary per evaluation
QUIET_LOGGERS = ("faster_coco_eval",)
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
FRCNN_MODULES = r"frcnn(\..*)?$"


class ForeignTipFilter(logging.Filter):
    """Drops advertisement lines ("💡 Tip: ...") of loggers outside frcnn."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "frcnn" or record.name.startswith("frcnn."):
            return True
        return not str(record.getMessage()).lstrip().startswith(TIP_MARKERS)


def _route_foreign_loggers_to_root() -> None:
    """Remove the handlers Lightning attached to its loggers; their records reach the root's."""
    import lightning  # noqa: F401 - importing it attaches its handler, which is removed next

    for name in FOREIGN_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def _ignore_foreign_deprecations() -> None:
    for category in DEPRECATIONS:
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=FRCNN_MODULES)  # in front: frcnn's win


def configure_console() -> None:
    """Apply the module's rules once (idempotent): one handler per line, no tips, no foreign deprecations,
    no foreign repeats of frcnn's own lines (QUIET_LOGGERS)."""
    root = logging.getLogger()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if root.handlers:
        _route_foreign_loggers_to_root()
        for handler in root.handlers:
            if not any(isinstance(f, ForeignTipFilter) for f in handler.filters):
                handler.addFilter(ForeignTipFilter())
    if not sys.warnoptions:
        _ignore_foreign_deprecations()
