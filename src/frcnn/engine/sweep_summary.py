"""Sweep summary: after ``python train.py -m ...`` a table of the swept overrides against
each job's final mAP, printed and written as sweep_summary.csv / sweep_summary.md in the
multirun dir.

Registered in conf/train.yaml as a Hydra callback (``hydra.callbacks.sweep_summary``); it
reads only files (each job's ``.hydra/overrides.yaml`` and ``metrics.json``), so it works the
same for jobs run in-process (basic launcher) or elsewhere (joblib, submitit). A job without
metrics.json is shown as failed, with the reason from its ``FAILED`` file when it wrote one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from frcnn.utils.progress import eta_seconds, format_duration

log = logging.getLogger(__name__)

SUMMARY_NAME = "sweep_summary"
FAILED_MARKER = "FAILED"  # written into a job dir by frcnn.cli.train when the job raised
METRICS = ("map_50", "map_voc07")


@dataclass
class JobResult:
    num: int
    job_dir: Path
    overrides: dict[str, str]  # key as written on the command line (no +/~ prefix) -> value string
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"  # ok | failed
    reason: str = ""


def parse_override(text: str) -> tuple[str, str] | None:
    """'rpn.lambda=10' -> ('rpn.lambda', '10'); '+experiment/x=y' -> ('experiment/x', 'y');
    deletions and unparsable strings -> None. Uses Hydra's own override grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(text)
    except Exception:  # noqa: BLE001 - a hand-edited overrides.yaml must not break the summary
        return None
    if override.is_delete():
        return None
    return override.key_or_group, override.get_value_element_as_str()


def sweep_keys(task_overrides: Iterable[str], sweeper_params: Mapping[str, Any] | None = None) -> list[str]:
    """Keys a multirun sweeps: command-line sweeps (``a=1,2``, ``choice(..)``, ``range(..)``,
    ``'k=[1],[2]'``) and the sweeper's ``params`` (a preset's ``hydra.sweeper.params``, Optuna's
    search space), in that order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: list[str] = []
    parser = OverridesParser.create()
    for text in task_overrides:
        try:
            override = parser.parse_override(str(text))
        except Exception:  # noqa: BLE001
            continue
        if override.is_sweep_override() and override.key_or_group not in keys:
            keys.append(override.key_or_group)
    for key in sweeper_params or {}:
        key = str(key).lstrip("+~")
        if key not in keys:
            keys.append(key)
    return keys


def _read_overrides(job_dir: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    path = job_dir / ".hydra" / "overrides.yaml"
    parsed = (parse_override(str(t)) for t in OmegaConf.to_container(OmegaConf.load(path)))
    return dict(p for p in parsed if p is not None)


def _job_num(job_dir: Path, fallback: int) -> int:
    from omegaconf import OmegaConf

    try:
        return int(OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.num)
    except Exception:  # noqa: BLE001 - missing or partial hydra.yaml: order by directory name
        return fallback


def collect_jobs(sweep_dir: str | Path) -> list[JobResult]:
    """Every job dir under ``sweep_dir`` (a dir holding ``.hydra/overrides.yaml``), by job number."""
    sweep_dir = Path(sweep_dir)
    job_dirs = sorted({p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")},
                      key=lambda d: (len(d.parts), str(d)))
    jobs = []
    for i, job_dir in enumerate(job_dirs):
        job = JobResult(num=_job_num(job_dir, i), job_dir=job_dir, overrides=_read_overrides(job_dir))
        metrics_path = job_dir / "metrics.json"
        failed_path = job_dir / FAILED_MARKER
        if failed_path.exists():
            job.status, job.reason = "failed", failed_path.read_text().strip().splitlines()[0][:200]
        elif not metrics_path.exists():
            job.status, job.reason = "failed", "no metrics.json (killed, or still running)"
        else:
            try:
                job.metrics = json.loads(metrics_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                job.status, job.reason = "failed", f"unreadable metrics.json ({exc})"
        jobs.append(job)
    return sorted(jobs, key=lambda j: j.num)


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * float(value):.1f}"


def summary_rows(jobs: Sequence[JobResult], keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: job, swept values, mAP@0.5 (all-point) and VOC07 11-point mAP in %, status."""
    header = ["job", *keys, "map_50 (%)", "map_voc07 (%)", "status"]
    rows = []
    for job in jobs:
        values = [job.overrides.get(k, "") for k in keys]
        scores = [_percent(job.metrics.get(m)) if job.status == "ok" else "failed" for m in METRICS]
        status = job.status if not job.reason else f"{job.status}: {job.reason}"
        rows.append([str(job.num), *values, *scores, status])
    return header, rows


def format_text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), "-" * sum(widths + [2 * (len(widths) - 1)]), *(line(r) for r in rows)])


def format_markdown(header: Sequence[str], rows: Sequence[Sequence[str]], title: str) -> str:
    escape = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    numeric = {len(header) - 3, len(header) - 2}  # the two mAP columns, right-aligned
    align = ["---:" if i in numeric else ":---" for i in range(len(header))]
    lines = [f"# {title}", "", "| " + " | ".join(map(escape, header)) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(map(escape, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: str | Path, keys: Sequence[str]) -> str:
    """Collect the jobs of ``sweep_dir``, write sweep_summary.csv / .md there, return the text table.

    The CSV holds raw metric fractions (machine-readable: ``map_50``, ``map_voc07`` as in
    metrics.json, empty for a failed job); the markdown and the printed table show percentages.
    """
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    header, rows = summary_rows(jobs, keys)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["job", *keys, *METRICS, "status", "reason", "job_dir"])
    for job in jobs:
        raw = [job.metrics.get(m, "") if job.status == "ok" else "" for m in METRICS]
        writer.writerow([job.num, *(job.overrides.get(k, "") for k in keys), *raw, job.status, job.reason,
                         job.job_dir.relative_to(sweep_dir).as_posix()])
    (sweep_dir / f"{SUMMARY_NAME}.csv").write_text(buffer.getvalue())
    failed = sum(j.status != "ok" for j in jobs)
    title = f"Sweep {sweep_dir.as_posix()}: {len(jobs)} jobs, {failed} failed"
    (sweep_dir / f"{SUMMARY_NAME}.md").write_text(format_markdown(header, rows, title))
    return f"{title}\n{format_text_table(header, rows)}"


def count_sweep_jobs(task_overrides: Iterable[str], sweeper: Mapping[str, Any] | None = None) -> int | None:
    """How many jobs a multirun launches: Optuna's ``n_trials``, else the product of the sizes of the
    command line's and the sweeper's ``params`` sweeps (Hydra's basic sweeper); None when a sweep
    cannot be counted (an interval)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = sweeper or {}
    if sweeper.get("n_trials") is not None:
        return int(sweeper["n_trials"])
    texts = [str(t) for t in task_overrides] + [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    parser, count = OverridesParser.create(), 1
    try:
        for text in texts:
            override = parser.parse_override(text)
            if override.is_sweep_override():
                count *= len(list(override.sweep_string_iterator()))
    except Exception:  # noqa: BLE001 - e.g. interval(0, 1): only a search sweeper can run it
        return None
    return count


class SweepSummaryCallback(Callback):
    """Hydra callback: a line as each job starts (job k of n, the sweep's ETA); on_multirun_end, print
    and write the sweep summary (see module doc)."""

    def __init__(self) -> None:
        self.total_jobs: int | None = None
        self.keys: list[str] = []
        self.start = time.monotonic()

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        sweeper = config.hydra.get("sweeper")
        self.total_jobs = count_sweep_jobs(list(config.hydra.overrides.task), dict(sweeper) if sweeper else None)
        params = sweeper.get("params") if sweeper else None
        self.keys = sweep_keys(list(config.hydra.overrides.task), dict(params) if params else None)
        self.start = time.monotonic()

    def on_job_start(self, config, **kwargs: Any) -> None:
        """'sweep job 2 of 3 (rpn.lambda=10); elapsed 5m02s, ETA of the sweep 10m04s' (jobs run in this
        process: Hydra's basic launcher)."""
        if not self.total_jobs or "num" not in config.hydra.job:
            return
        num, elapsed = int(config.hydra.job.num), time.monotonic() - self.start
        eta = eta_seconds(num, self.total_jobs, elapsed)
        overrides = dict(p for p in map(parse_override, map(str, config.hydra.overrides.task)) if p is not None)
        swept = " ".join(f"{key}={overrides[key]}" for key in self.keys if key in overrides)
        log.info("sweep job %d of %d (%s); elapsed %s, ETA of the sweep %s", num + 1, self.total_jobs,
                 swept or config.hydra.job.override_dirname, format_duration(elapsed),
                 format_duration(eta) if eta is not None else "-")

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            log.warning("sweep summary: no sweep dir %s (no job ran)", sweep_dir)
            return
        params = config.hydra.sweeper.get("params") if "sweeper" in config.hydra else None
        keys = sweep_keys(list(config.hydra.overrides.task), dict(params) if params else None)
        text = write_summary(sweep_dir, keys)
        print(f"\n{text}\nsweep summary written to {sweep_dir / (SUMMARY_NAME + '.csv')} and .md", flush=True)
