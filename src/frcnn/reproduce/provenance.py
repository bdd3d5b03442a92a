"""Which data a report was made from, and the τ of every data version a report has seen.

Rule against tuning the data to the result (issue 27): the VOC-like generator and its statistics
table are committed before any table runs on them, and the report names that commit. When the data
changes after a table ran (a new generator commit or version), the report keeps the earlier Kendall τ
values beside the new ones: ``<out>/tau_history.json`` holds one entry per data version, added to and
never overwritten but for the current version's own entry.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

from frcnn.reproduce.tables import REPO_ROOT, QuickData
from frcnn.utils.atomic_io import atomic_write_json

GENERATOR_PATHS = ("src/frcnn/data/voclike", "conf/data/voclike.yaml")
HISTORY_FILE = "tau_history.json"


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def generator_commit() -> str:
    """The commit that last changed the VOC-like generator ("<hash> <date>"), "+ uncommitted changes"
    when the working tree differs from it, "unknown (no git checkout)" outside a clone."""
    commit = _git("log", "-1", "--format=%h %cs", "--", *GENERATOR_PATHS)
    if not commit:
        return "unknown (no git checkout)"
    dirty = _git("status", "--porcelain", "--", *GENERATOR_PATHS)
    return commit + (" + uncommitted changes" if dirty else "")


def data_version(data: QuickData) -> str:
    """The identity of the quick data: the generator's version and commit for the VOC-like data."""
    if data.name != "voclike":
        return data.name
    from frcnn.data.voclike.tree import GENERATOR_VERSION

    return f"voclike generator v{GENERATOR_VERSION}, commit {generator_commit()}"


def update_tau_history(out_dir: Path, version: str, taus: Mapping[str, float | None]) -> dict[str, dict]:
    """Record ``taus`` ({table name: τ}) for ``version`` in ``<out_dir>/tau_history.json``; -> every
    version's entry, oldest first (earlier versions are kept as they were)."""
    path = Path(out_dir) / HISTORY_FILE
    history: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}
    history[version] = {name: (None if tau is None else round(float(tau), 4)) for name, tau in taus.items()}
    atomic_write_json(history, path)
    return history


def tau_history_markdown(history: Mapping[str, Mapping[str, float | None]], current: str) -> str:
    """The τ of each table for every data version this report directory has run on."""
    names = sorted({name for taus in history.values() for name in taus})
    lines = ["## Kendall τ by data version", "",
             "Every data version the tables of this directory ran on (the rule against tuning the data to the "
             "result: earlier values stay).", "",
             "| data version | " + " | ".join(names) + " |", "|:---|" + "---:|" * len(names)]
    for version, taus in history.items():
        label = f"**{version}** (this report)" if version == current else version
        cells = ["-" if taus.get(n) is None else f"{taus[n]:.2f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
