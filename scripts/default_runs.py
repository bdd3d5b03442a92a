"""The default runs over seeds, today's preset against the one before the pre-trained backbone.

    python scripts/default_runs.py                         # after + before, alternating + joint, seeds 0 1 2
    python scripts/default_runs.py --settings after --seeds 0
    python scripts/default_runs.py --out outputs/default_runs --recipes joint

Each run is ``python train.py seed=N [recipe=joint] logger=csv hydra.run.dir=<out>/<setting>_<recipe>_s<N>
<setting's overrides>`` in a child process, one after the other (never two at once: their
wall times are part of the result). A finished run (its metrics.json exists) is read back, not
rerun; an interrupted one resumes. The table gives, per setting and recipe, map_50 /
map_voc07 / wall of each seed, their mean and spread (max - min), and the compute ratio
after / before: the summed seconds of the training stages (``stage_seconds`` of metrics.json,
proposals and evaluation excluded), mean over the seeds both settings have. Printed with
the CPU model and torch's CPU capability; written to <out>/default_runs.md.

``before`` is the default of the commit before the pre-trained backbone (issue 12): random
init and the long stages that needed (alternating 400 + 3600 + 300 + 800, joint 1600).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from frcnn.reproduce.schemes import TRAIN_STAGES, stage_length_overrides
from frcnn.utils.host_info import cpu_description

REPO_ROOT = Path(__file__).resolve().parents[1]
BEFORE = ["backbone.weights=null"] + [
    override for key, steps, lr_step in (("joint", 1600, 1300), ("alternating.stage1_rpn", 400, 320),
                                          ("alternating.stage1_det", 3600, 3000), ("alternating.stage2_rpn", 300, 240),
                                          ("alternating.stage2_det", 800, 640))
    for override in stage_length_overrides(key, steps, lr_step)]
SETTINGS = {"after": [], "before": BEFORE}



def run_one(out: Path, setting: str, recipe: str, seed: int) -> dict:
    """Train (or read back) one run; -> its metrics.json plus ``wall_s`` (the child's wall time)."""
    run_dir = out / f"{setting}_{recipe}_s{seed}"
    metrics_path, wall_path = run_dir / "metrics.json", run_dir / "wall_s.txt"
    if not metrics_path.exists():
        command = [sys.executable, "train.py", f"seed={seed}", f"recipe={recipe}", "logger=csv",
                   f"hydra.run.dir={run_dir}", *SETTINGS[setting]]
        print("$", " ".join(command[1:]), flush=True)
        started = time.perf_counter()
        log = run_dir.parent / f"{run_dir.name}.log"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as log_file:
            result = subprocess.run(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise SystemExit(f"{run_dir.name}: train.py exited {result.returncode}; see {log}")
        if not wall_path.exists():  # a resumed run's wall time would be partial: keep the first one's
            wall_path.write_text(f"{time.perf_counter() - started:.1f}\n")
    metrics = json.loads(metrics_path.read_text())
    metrics["wall_s"] = float(wall_path.read_text()) if wall_path.exists() else float("nan")
    return metrics


def training_seconds(metrics: dict, recipe: str) -> float:
    return sum(metrics["stage_seconds"][stage] for stage in TRAIN_STAGES[recipe])


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} (spread {max(values) - min(values):.3f})"


def format_table(results: dict, seeds: list[int]) -> str:
    lines = [f"CPU: {cpu_description()}", "",
             "| setting | recipe | " + " | ".join(f"seed {s}: map_50 / map_voc07 / wall" for s in seeds)
             + " | mean map_50 | mean map_voc07 | training s (mean) |",
             "|---" * (5 + len(seeds)) + "|"]
    for (setting, recipe), by_seed in results.items():
        cells = [f"{m['map_50']:.3f} / {m['map_voc07']:.3f} / {m['wall_s']:.0f} s" for m in by_seed.values()]
        train_s = statistics.mean(training_seconds(m, recipe) for m in by_seed.values())
        lines.append(f"| {setting} | {recipe} | " + " | ".join(cells) + " | "
                     + _mean_spread([m["map_50"] for m in by_seed.values()]) + " | "
                     + _mean_spread([m["map_voc07"] for m in by_seed.values()]) + f" | {train_s:.0f} |")
    lines.append("")
    for recipe in TRAIN_STAGES:
        after, before = results.get(("after", recipe)), results.get(("before", recipe))
        if after and before:
            both = sorted(set(after) & set(before))
            if both:
                ratio = (statistics.mean(training_seconds(after[s], recipe) for s in both)
                         / statistics.mean(training_seconds(before[s], recipe) for s in both))
                lines.append(f"{recipe}: training compute after / before = {ratio:.3f} (seeds {both})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "default_runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", choices=sorted(TRAIN_STAGES), default=["alternating", "joint"])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["after", "before"])
    args = parser.parse_args(argv)
    results: dict = {}
    for setting in args.settings:
        for recipe in args.recipes:
            results[setting, recipe] = {seed: run_one(args.out, setting, recipe, seed) for seed in args.seeds}
    table = format_table(results, args.seeds)
    (args.out / "default_runs.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
