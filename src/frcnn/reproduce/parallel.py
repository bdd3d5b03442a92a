"""The tables' trainings and test-time evaluations side by side: ``reproduce.py --jobs N``.

The rows of the tables are independent trainings. On a CPU, N one-thread trainings at a time finish
sooner than the same trainings one after another with N threads each: a small detector's layers do
not keep N threads fully busy, and start-up and evaluation overlap (docs/REPRODUCING_CPU.md: 1.16-1.29x
on 2 cores). :func:`run_ahead` plans every
training and test-time evaluation the tables will ask the :class:`~frcnn.reproduce.runs.RunStore`
for, runs the missing ones in N worker processes, and leaves each where the store reads it back
(``metrics.json``, ``test_time/<row>.json``). The tables' own pass then only reads and reports, and
a killed invocation resumes as before: finished runs are read back, an interrupted one resumes from
its last checkpoint.

Longest first (the 4-step alternating runs before the joint ones): with N workers the last job to
start is then a short one, and no worker waits long for the others at the end. An unshared run starts
after the 4-step run of its config, whose stage 1 it copies (:func:`frcnn.reproduce.runs.reuse_first_stages`).
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frcnn.reproduce.runs import Outcome, RunStore, config_digest, train_in, twin_config
from frcnn.reproduce.tables import PaperTable, merge_overrides, slug
from frcnn.utils.progress import Countdown


@dataclass
class TrainJob:
    """One distinct training (run directory) and the test-time evaluations of its model."""

    run_dir: Path
    cfg: dict
    name: str
    evaluations: list[tuple[dict, int, str]] = field(default_factory=list)  # (rpn.test changes, seed, row label)
    after: Path | None = None  # the run dir of the 4-step run whose stage 1 this unshared run copies

    @property
    def images(self) -> int:
        """Pictures the training sees (its cost, for longest-first): steps x pictures per step of its stages."""
        schedule = self.cfg["schedule"]
        stages = schedule["alternating"].values() if self.cfg["recipe"]["name"] == "alternating" else [schedule["joint"]]
        return sum(int(stage["max_steps"]) * int(stage.get("images_per_batch", 1)) for stage in stages)


def plan(store: RunStore, tables: Sequence[PaperTable], bases: Mapping[str, Sequence[str]], seeds: Sequence[int],
         rows: Callable[[PaperTable], Sequence]) -> list[TrainJob]:
    """Every training the tables' pass (:func:`frcnn.cli.reproduce.run_table`) will ask ``store``
    for, named and configured as that pass does, once per run directory, longest first; each with
    the test-time evaluations of its model that are not cached yet. ``bases``: each table's base
    overrides; ``rows``: a table's settings this invocation runs."""
    jobs: dict[tuple[str, int], TrainJob] = {}  # by (config digest, seed): rows naming one training share it
    for seed in seeds:
        for table in tables:
            default = table.setting(table.default)
            for setting in rows(table):
                trains = default if setting.test is not None else setting
                run_dir, cfg = store.run_dir(merge_overrides(bases[table.key], trains.training), seed,
                                             f"{table.key}_{trains.label}")
                # the first row to name a training names its directory, where the tables' pass looks (RunStore.run_dir)
                job = jobs.setdefault((config_digest(cfg), seed),
                                      TrainJob(run_dir, cfg, f"{table.key}_{trains.label} (seed {seed})"))
                if setting.test and not (run_dir / "test_time" / f"{slug(setting.label)}.json").exists():
                    job.evaluations.append((dict(setting.test), seed, setting.label))
    for (_, seed), job in jobs.items():  # an unshared run waits for the 4-step run it copies stage 1 from
        twin = twin_config(job.cfg) if job.cfg["recipe"].get("unshared") else None
        four_step = jobs.get((config_digest(twin), seed)) if twin is not None else None
        if four_step is not None:
            job.after = four_step.run_dir
    return sorted(jobs.values(), key=lambda job: -job.images)


def set_threads(threads: int) -> None:
    """A worker process's start: ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)


def train_job(run_dir: Path, cfg: dict, name: str) -> str:
    """Worker: train (or resume, or read back) one run -> its status."""
    return train_in(run_dir, cfg, name).status


def evaluate_job(out_dir: Path, run_dir: Path, data_cfg: dict, test: dict, seed: int, label: str) -> str:
    """Worker: one test-time evaluation of a finished run, cached where the store reads it -> its status."""
    trained = Outcome({}, "ok", run_dir, data_cfg=data_cfg)
    return RunStore(out_dir).evaluate_test_time(trained, test, seed, label).status


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_ahead(out_dir: Path, jobs: Sequence[TrainJob], workers: int, log: Callable[[str], None] = print,
              train: Callable[[Path, dict, str], str] = train_job,
              start_worker: Callable[[int], None] = set_threads) -> int:
    """Run the trainings of ``jobs`` not finished yet (``train``, in the worker), and then their
    evaluations, in ``workers`` processes of ``available_cpus() // workers`` threads each (each process
    begins with ``start_worker(threads)``, a module-level function: it is called by name) -> the number
    that failed or did not run. A worker that dies (killed for memory, say) breaks the pool: what did
    not finish is left to the tables' pass, which runs it in its own process and reports each failure
    on its row."""
    untrained = {job.run_dir for job in jobs if not (job.run_dir / "metrics.json").exists()}
    total = len(untrained) + sum(len(job.evaluations) for job in jobs)
    if not total:
        return 0
    threads = max(1, available_cpus() // workers)
    log(f"running {total} trainings and evaluations, {workers} at a time with {threads} thread(s) each")
    countdown = Countdown(total, "run", "the runs")
    failures = 0
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch thread pool of ours inherited
    with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker,
                                     initargs=(threads,)) as pool:
        running: dict[futures.Future, tuple[str, TrainJob | None]] = {}

        def submit_evaluations(job: TrainJob) -> None:
            data_cfg = job.cfg["data"]
            for test, seed, label in job.evaluations:
                try:
                    future = pool.submit(evaluate_job, out_dir, job.run_dir, data_cfg, test, seed, label)
                except futures.process.BrokenProcessPool:
                    return  # the failures already counted say so; the tables' pass evaluates it
                running[future] = (f"{job.name}: {label}", None)

        def submit_training(job: TrainJob) -> None:
            try:
                running[pool.submit(train, job.run_dir, job.cfg, job.name)] = (job.name, job)
            except futures.process.BrokenProcessPool:
                pass  # the failures already counted say so; the tables' pass trains it

        waiting: dict[Path, list[TrainJob]] = {}  # a 4-step run dir -> the unshared runs that copy its stage 1
        for job in jobs:
            if job.run_dir not in untrained:
                submit_evaluations(job)
            elif job.after in untrained:
                waiting.setdefault(job.after, []).append(job)
            else:
                submit_training(job)
        while running:
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                name, job = running.pop(future)
                try:
                    status = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that died: that row's failure, not the others'
                    status = f"failed: {type(exc).__name__}: {exc}".splitlines()[0]
                failures += status != "ok"
                log(f"{name}: {status} ({countdown.tick()})")
                if job is not None:
                    for follower in waiting.pop(job.run_dir, []):
                        submit_training(follower)  # after a failed twin too: it then trains its own stage 1
                    if status == "ok":
                        submit_evaluations(job)
                    else:
                        countdown.total -= len(job.evaluations)  # not run: the tables' pass says why
    return failures
