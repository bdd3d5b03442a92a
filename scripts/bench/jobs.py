"""--mode jobs: ``reproduce.py --jobs N`` against one training at a time (issue 38: the quick tables in an hour).

The same table (Table 9: four joint trainings and their evaluations on the built-in VOC-like data, seed 0,
short trainings) runs as a whole command into a fresh output directory, first one run at a time with every
core's threads (``--jobs 1``), then N at a time with cores / N threads each (``--jobs N``), A B A B for
``repeats`` pairs; each pair's ratio is wall(--jobs 1) / wall(--jobs N), so > 1 means the jobs are faster.
The VOC-like pictures are written once before the first pair (not timed).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPRODUCE_PY = Path(__file__).resolve().parents[1] / "reproduce.py"


def reproduce_command(out_dir: Path, jobs: int, steps: int, num_val: int) -> list[str]:
    return [sys.executable, str(REPRODUCE_PY), "lambda", "--quick", "--seeds", "0", "--steps", str(steps),
            "--num-val", str(num_val), "--jobs", str(jobs), "--out", str(out_dir)]


def timed_run(command: list[str]) -> float:
    """Wall seconds of ``command`` (its output kept out of the benchmark's); a failure stops the benchmark."""
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return time.perf_counter() - start


def bench_jobs(jobs: int, repeats: int, steps: int, num_val: int) -> dict:
    env_threads = os.environ.get("OMP_NUM_THREADS")
    if env_threads:
        print(f"note: OMP_NUM_THREADS={env_threads} is set; the workers set their own thread counts", flush=True)
    from frcnn.data.build import voclike_data_cfg
    from frcnn.reproduce.runs import compose

    voclike_data_cfg(compose(["experiment=cpu_voclike"], "unused")["data"])  # the pictures, written once
    print(f"\n== reproduce.py lambda --quick --seeds 0 --steps {steps} --num-val {num_val}: "
          f"--jobs 1 vs --jobs {jobs}, {repeats} pair(s) ==", flush=True)
    ratios, walls = [], {1: [], jobs: []}
    for pair in range(repeats):
        for n in (1, jobs):
            with tempfile.TemporaryDirectory(prefix="frcnn-bench-jobs-") as out:
                walls[n].append(timed_run(reproduce_command(Path(out), n, steps, num_val)))
        ratios.append(walls[1][-1] / walls[jobs][-1])
        print(f"pair {pair + 1}: --jobs 1 {walls[1][-1]:.1f} s, --jobs {jobs} {walls[jobs][-1]:.1f} s, "
              f"ratio {ratios[-1]:.2f}", flush=True)
    median = statistics.median(ratios)
    print(f"median wall: --jobs 1 {statistics.median(walls[1]):.1f} s, --jobs {jobs} "
          f"{statistics.median(walls[jobs]):.1f} s; ratio (jobs 1 / jobs {jobs}) {median:.2f}", flush=True)
    return {"ratio": median, "walls": walls}
