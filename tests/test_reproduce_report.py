"""The statistics and the report of `scripts/reproduce.py all`: mean ± spread over seeds, paired
changes, ties, Kendall τ, the paper's claims tested, Fig. 4 averaged; on made-up outcomes."""

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from frcnn.reproduce.report import (
    average_recall,
    check_results,
    paper_change,
    summary_markdown,
    table_csv,
    table_markdown,
    table_rows,
    table_tau,
)
from frcnn.reproduce.stats import estimate, is_tie, kendall_tau, paired_difference, verdict
from frcnn.reproduce.tables import QUICK_DATA, TABLES, merge_overrides, paper_table


@dataclass
class FakeOutcome:
    metrics: dict | None
    status: str = "ok"
    run_dir: Path = Path("runs/x")


def outcomes_of(values: dict[str, list[float | None]], metric: str = "map_voc07") -> dict:
    """{label: [value per seed (%, None = failed)]} -> {label: {seed: outcome}}."""
    return {label: {seed: FakeOutcome(None, "failed: RuntimeError: x") if v is None else FakeOutcome({metric: v / 100})
                    for seed, v in enumerate(per_seed)} for label, per_seed in values.items()}


def test_estimate_is_mean_and_sample_std_of_finite_values():
    e = estimate([1.0, 2.0, 3.0, float("nan"), None])
    assert (e.mean, e.spread, e.n) == (2.0, 1.0, 3)
    assert estimate([5.0]).spread == 0.0 and estimate([]).n == 0
    assert e.format() == "2.0 ± 1.0" and estimate([5.0]).format(signed=True) == "+5.0" and estimate([]).format() == "-"


def test_paired_difference_pairs_seeds_and_marks_ties():
    strong = paired_difference({0: 10.0, 1: 20.0, 2: 30.0}, {0: 9.0, 1: 19.5, 2: 28.0, 3: 0.0})
    assert strong.n == 3 and strong.mean == pytest.approx(3.5 / 3)
    assert not is_tie(strong) and verdict(strong) == "holds"
    mixed = paired_difference({0: 1.0, 1: -1.0, 2: 0.5}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert is_tie(mixed) and verdict(mixed) == "tie" and verdict(mixed, strict=False) == "holds (tie)"
    worse = paired_difference({0: 1.0, 1: 2.0}, {0: 3.0, 1: 4.5})
    assert verdict(worse) == "reversed" and verdict(paired_difference({}, {})) == "-"


def test_kendall_tau_of_orderings():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 4, 3], [10, 20, 30, 40]) == pytest.approx(4 / 6)  # one swapped pair of six
    assert kendall_tau([1, 2], [1, 2]) is None and kendall_tau([1, 1, 1], [1, 2, 3]) is None


@pytest.mark.parametrize("key", TABLES)
def test_every_table_loads_with_its_default_and_checks(key):
    table = paper_table(key, quick=True)
    assert table.setting(table.default).test in (None, {})  # the default row is a trained model as is
    labels = {s.label for s in table.settings}
    assert all(set(c.better) <= labels and set(c.worse) <= labels for c in table.checks)


def test_table2_rows_compare_with_the_papers_own_reference_row():
    table = paper_table("proposals", quick=True)
    assert paper_change(table, "100 proposals") == pytest.approx(55.1 - 56.8)  # the paper's SS-trained block
    assert paper_change(table, "unshared, 300 proposals") == pytest.approx(58.7 - 59.9)
    assert paper_change(table, "2000 proposals") is None
    assert table.setting("no cls (random rank), 100").test == {"ranking": "random", "post_nms_top_n": 100}
    assert table.setting("unshared, 300 proposals").training == ("recipe=alternating", "recipe.unshared=true")


def test_quick_anchor_rows_are_scaled_to_the_small_images():
    table = paper_table("anchors", quick=True)  # the VOC-like data's 240-px pictures: x 240 / 600
    assert table.setting("1 scale, 1 ratio (128², 1:1)").training == ("rpn.anchor_scales=[51.2]", "rpn.anchor_ratios=[1]")
    shapes = paper_table("anchors", quick=True, quick_data=QUICK_DATA["shapes"])  # 256-px images, x 0.25
    assert shapes.setting("1 scale, 1 ratio (128², 1:1)").training == ("rpn.anchor_scales=[32]", "rpn.anchor_ratios=[1]")
    assert paper_table("anchors", quick=False).setting("3 scales, 1 ratio").training[0] == \
        "rpn.anchor_scales=[128,256,512]"


def test_later_overrides_replace_earlier_ones_of_the_same_key():
    assert merge_overrides(["recipe=joint", "seed=1", "logger=csv"], ["recipe=alternating", "+x=1"]) == \
        ["seed=1", "logger=csv", "recipe=alternating", "+x=1"]


LAMBDA_VALUES = {"λ=0.1": [60.0, 61.0, 62.0], "λ=1": [64.0, 66.0, 65.0], "λ=3": [],
                 "λ=10": [66.0, 67.0, 66.5], "λ=100": [65.0, 66.5, None]}


def test_table_rows_tau_ties_and_checks():
    table = paper_table("lambda", quick=True)
    rows = {r.label: r for r in table_rows(table, outcomes_of(LAMBDA_VALUES))}
    assert rows["λ=10"].value.mean == pytest.approx(66.5) and rows["λ=10"].change.mean == 0.0
    assert rows["λ=0.1"].change.mean == pytest.approx(-5.5) and not rows["λ=0.1"].tie
    assert rows["λ=100"].change.n == 2 and rows["λ=100"].status.startswith("failed")  # seed 2 left out
    assert rows["λ=3"].status == "not run" and rows["λ=3"].value.n == 0
    tau, n = table_tau(list(rows.values()))
    assert n == 4 and tau == pytest.approx(1.0)  # 0.1 < 1 < 100 < 10, as the paper
    (_, difference, result), = check_results(table, list(rows.values()))
    assert result == "holds" and difference.mean == pytest.approx(5.5)


def test_difference_of_differences_check():
    table = paper_table("proposals", quick=True)
    values = {"shared, 300 proposals": [80, 81, 82], "100 proposals": [79, 80, 81], "300 proposals": [80, 81, 82],
              "1000 proposals": [80, 81, 82], "no cls (random rank), 100": [60, 62, 64],
              "no cls (random rank), 1000": [78, 79, 80], "no reg (anchors), 300": [81, 81, 83]}
    results = {c.claim: r for c, _, r in check_results(table, table_rows(table, outcomes_of(values)))}
    assert results["random ranking hurts most at 100 proposals, less at 1000"] == "holds"
    assert results["100 proposals < 300 proposals"] == "holds"
    assert results["anchors instead of regressed boxes hurt: no reg < reg at 300"] == "reversed"
    assert results["shared >= unshared conv layers"] == "-"  # unshared not run


def test_markdown_and_csv_say_what_was_measured():
    table = paper_table("lambda", quick=True)
    rows = table_rows(table, outcomes_of(LAMBDA_VALUES))
    md = table_markdown(table, rows, quick=True)
    assert "## Table 9:" in md and "Kendall τ (measured vs paper changes, 4 rows): **1.00**" in md
    assert "| λ=0.1 | 61.0 ± 1.0 | -5.5 ± 0.9 | 67.2 | -2.7 |  | ok |" in md
    assert "| λ=10 (default) | 66.5 ± 0.5 | 0 (reference) | 69.9 | +0.0 |  | ok |" in md
    assert "measured - paper" not in md and "measured - paper" in table_markdown(table, rows, quick=False)
    assert "-> **holds**" in md
    lines = table_csv(table, rows, [0, 1, 2]).splitlines()
    assert lines[0].startswith("table,setting,metric,seed0,seed1,seed2,mean,spread,change")
    assert lines[1].startswith("Table 9,λ=0.1,map_voc07,60.00,61.00,62.00,61.00,1.00,-5.50,0.87,False,67.2,-2.7")


def test_fig4_recall_is_averaged_over_seeds():
    one = {"recall": {"300": {"0.50": 0.9, "0.70": 0.6}}, "average_recall": {"300": 0.5}, "num_gt": 10, "num_images": 4}
    two = {"recall": {"300": {"0.50": 0.8, "0.70": 0.4}}, "average_recall": {"300": 0.3}, "num_gt": 10, "num_images": 4}
    merged = average_recall([one, two])
    assert merged["recall"]["300"]["0.50"] == pytest.approx(0.85) and merged["recall"]["300"]["0.70"] == pytest.approx(0.5)
    assert merged["average_recall"]["300"] == pytest.approx(0.4)
    assert merged["spread"]["300"] == pytest.approx(math.sqrt(0.02))


def test_summary_gives_each_tables_tau_and_claims():
    lam, anchors = paper_table("lambda", quick=True), paper_table("anchors", quick=True)
    anchor_values = {"3 scales, 3 ratios": [70, 71, 72], "1 scale, 3 ratios (256²)": [72, 73, 74],
                     "1 scale, 3 ratios (128²)": [69, 71, 71]}
    md = summary_markdown([lam, anchors], {"lambda": table_rows(lam, outcomes_of(LAMBDA_VALUES)),
                                           "anchors": table_rows(anchors, outcomes_of(anchor_values))})
    assert "| Table 9 | 1.00 (4 rows) | 1 of 1 | 0 | 0 |" in md
    assert "| 1 of 5 | 0 | 1: 3 scales >= 1 scale (3 ratios; 256²) |" in md  # one holds, one reversed, 3 unmeasured


def test_compute_time_counts_each_model_and_each_evaluation_once():
    from frcnn.cli.reproduce import compute_seconds

    @dataclass
    class Timed:
        metrics: dict
        run_dir: Path
        seconds: float

    model = Timed({"map_voc07": 0.5}, Path("runs/a/seed0"), 100.0)
    same_model = Timed({"map_voc07": 0.5}, Path("runs/a/seed0"), 100.0)  # another table's row of the same run
    hundred = Timed({"map_voc07": 0.4, "test_time": {"post_nms_top_n": 100}}, Path("runs/a/seed0"), 5.0)
    random = Timed({"map_voc07": 0.3, "test_time": {"ranking": "random"}}, Path("runs/a/seed0"), 6.0)
    outcomes = {"lambda": {"λ=10": {0: model}}, "anchors": {"3 scales, 3 ratios": {0: same_model}},
                "proposals": {"100 proposals": {0: hundred}, "no cls": {0: random}}}
    assert compute_seconds(outcomes) == 111.0


def test_tau_history_keeps_earlier_data_versions_beside_the_new_one(tmp_path):
    """The rule against tuning the data to the result: a report on changed data shows the earlier τ too."""
    from frcnn.reproduce.provenance import tau_history_markdown, update_tau_history

    update_tau_history(tmp_path, "voclike generator v1, commit aaa", {"Table 9": 0.667, "Table 8": None})
    update_tau_history(tmp_path, "voclike generator v1, commit aaa", {"Table 9": 1.0, "Table 8": 0.2})  # rerun
    history = update_tau_history(tmp_path, "voclike generator v2, commit bbb", {"Table 9": 0.333, "Table 8": 0.6})
    assert list(history) == ["voclike generator v1, commit aaa", "voclike generator v2, commit bbb"]
    assert history["voclike generator v1, commit aaa"] == {"Table 9": 1.0, "Table 8": 0.2}
    text = tau_history_markdown(history, "voclike generator v2, commit bbb")
    assert "| voclike generator v1, commit aaa | 0.20 | 1.00 |" in text
    assert "| **voclike generator v2, commit bbb** (this report) | 0.60 | 0.33 |" in text


def test_the_report_names_the_generator_commit():
    import re

    from frcnn.data.voclike.tree import GENERATOR_VERSION
    from frcnn.reproduce.provenance import data_version

    version = data_version(QUICK_DATA["voclike"])
    assert re.fullmatch(rf"voclike generator v{GENERATOR_VERSION}, commit [0-9a-f]{{7,}} \d{{4}}-\d\d-\d\d"
                        r"( \+ uncommitted changes)?", version), version
    assert data_version(QUICK_DATA["shapes"]) == "shapes"


@pytest.mark.parametrize("data, steps, num_val", [("voclike", 200, 250), ("shapes", 200, None)])
def test_quick_defaults_are_the_datas_and_flags_override_them(monkeypatch, tmp_path, data, steps, num_val):
    """`reproduce.py all --quick` trains each built-in data for its own number of mini-batches and
    evaluates on its own number of pictures (docs/REPRODUCING_CPU.md); --steps / --num-val win."""
    import frcnn.cli.reproduce as cli

    calls = []
    monkeypatch.setattr(cli, "reproduce_tables", lambda *args, **kwargs: calls.append(args) or {})
    assert cli.main(["all", "--quick", "--data", data, "--out", str(tmp_path)]) == 0
    assert cli.main(["all", "--quick", "--data", data, "--steps", "7", "--num-val", "9", "--out", str(tmp_path)]) == 0
    (_, _, quick, got_steps, seeds, _, got_num_val), (*_, flag_steps, _, _, flag_num_val) = (c[:7] for c in calls)
    assert quick and seeds == [0, 1, 2] and (got_steps, got_num_val) == (steps, num_val)
    assert (flag_steps, flag_num_val) == (7, 9)


def test_a_training_written_with_int_or_float_numbers_is_one_run(tmp_path):
    """Table 9's λ=10 (`rpn.lambda=10`) and Table 8's default anchors (`rpn.anchor_ratios=[0.5,1,2]`) compose
    the default config with ints where the files hold floats: the same training, one run directory. An
    output dir named by the earlier digest (numbers as written) is still found."""
    from frcnn.reproduce.runs import RunStore, config_digest

    store = RunStore(tmp_path / "new")
    default_dir, _ = store.run_dir([], 0, "default")
    default_dir.mkdir(parents=True)  # as a training leaves it
    assert store.run_dir(["rpn.lambda=10"], 0, "lambda_10")[0] == default_dir
    assert store.run_dir(["rpn.anchor_ratios=[0.5,1,2]"], 0, "anchors")[0] == default_dir
    assert store.run_dir(["rpn.lambda=100"], 0, "lambda_100")[0] != default_dir

    old_store = RunStore(tmp_path / "old")
    _, cfg = old_store.run_dir(["rpn.lambda=10"], 0, "lambda_10")
    earlier = tmp_path / "old" / "runs" / f"lambda_10-{config_digest(cfg, numbers_as_written=True)}" / "seed0"
    assert earlier.parent.name.split("-")[1] != default_dir.parent.name.split("-")[1]
    earlier.mkdir(parents=True)
    assert old_store.run_dir(["rpn.lambda=10"], 0, "lambda_10")[0] == earlier


def test_parallel_plan_is_the_tables_trainings_once_longest_first(tmp_path):
    """--jobs plans what the tables' pass will ask for: Table 9's λ=10, Table 3's joint row and Table 2's
    default are one training (with Table 2's nine test-time evaluations), Table 2's and Table 3's unshared
    rows another; the 4-step alternating runs come first; a cached evaluation is not planned again."""
    from frcnn.cli.reproduce import base_overrides, rows_to_run
    from frcnn.reproduce.parallel import plan
    from frcnn.reproduce.runs import RunStore
    from frcnn.reproduce.tables import QUICK_DATA, merge_overrides, paper_table

    data = QUICK_DATA["voclike"]
    tables = [paper_table(key, True, quick_data=data) for key in ("lambda", "training", "proposals")]
    bases = {t.key: base_overrides(t.key, True, 400, None, 250, [], data) for t in tables}
    store = RunStore(tmp_path)

    def planned():
        return plan(store, tables, bases, [0], lambda table: rows_to_run(table, True, False))

    jobs = planned()
    assert [job.name for job in jobs] == [
        "training_unshared (4-step, steps 1-2) (seed 0)", "training_shared, 4-step alternating (seed 0)",
        "lambda_λ=0.1 (seed 0)", "lambda_λ=1 (seed 0)", "lambda_λ=10 (seed 0)", "lambda_λ=100 (seed 0)"]
    assert [job.images for job in jobs] == [4000, 4000, 1600, 1600, 1600, 1600]  # (150 + 500 + 100 + 250) x 4; 400 x 4
    assert jobs[0].after == jobs[1].run_dir and all(job.after is None for job in jobs[1:])  # unshared after 4-step
    default = jobs[4]
    default.run_dir.mkdir(parents=True)  # as its worker leaves it: the pass by seed finds it for each row of this model
    for table in tables:
        setting = table.setting({"training": "shared, approximate joint"}.get(table.key, table.default))
        assert store.run_dir(merge_overrides(bases[table.key], setting.training), 0,
                             f"{table.key}_{setting.label}")[0] == default.run_dir
    assert [label for _, _, label in default.evaluations] == [
        "100 proposals", "300 proposals", "1000 proposals", "2000 proposals", "no NMS (top 6000)",
        "no cls (random rank), 100", "no cls (random rank), 300", "no cls (random rank), 1000", "no reg (anchors), 300"]
    assert all(not job.evaluations for job in jobs if job is not default)

    cached = default.run_dir / "test_time" / "100_proposals.json"
    cached.parent.mkdir()
    cached.write_text("{}")
    assert len(planned()[4].evaluations) == 8


def die_in_worker(run_dir, cfg, name):
    """A training whose worker process dies (as one killed for memory): run_ahead's ``train`` in a test."""
    import os

    os._exit(3)


def test_a_worker_that_dies_leaves_its_runs_to_the_tables_pass(tmp_path):
    """A dead worker breaks the process pool: run_ahead counts what did not run, logs each, and returns
    (the tables' pass then runs them in its own process) instead of raising BrokenProcessPool."""
    from frcnn.reproduce.parallel import TrainJob, run_ahead

    cfg = {"data": {}, "schedule": {"joint": {"max_steps": 1}}, "recipe": {"name": "joint"}}
    jobs = [TrainJob(tmp_path / f"run{i}", cfg, f"run {i}", [({"post_nms_top_n": 100}, 0, "100 proposals")])
            for i in range(2)]
    lines = []
    assert run_ahead(tmp_path, jobs, 2, log=lines.append, train=die_in_worker) == 2
    assert lines[0].startswith("running 4 trainings and evaluations, 2 at a time with ")
    assert len(lines) == 3 and all("failed: BrokenProcessPool" in line for line in lines[1:]), lines
    assert not any((tmp_path / f"run{i}").exists() for i in range(2))


def train_after_twin(run_dir, cfg, name):
    """run_ahead's ``train`` in a test: the 4-step run takes a second; its unshared twin fails unless it finished."""
    import json
    import time
    from pathlib import Path

    if cfg["recipe"]["unshared"]:
        return "ok" if (Path(cfg["twin"]) / "metrics.json").exists() else "failed: started before its twin"
    time.sleep(1.0)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({}))
    return "ok"


def test_an_unshared_run_starts_after_its_4_step_twin(tmp_path):
    """With two workers free, run_ahead still holds the unshared run until the 4-step run whose stage 1 it
    copies has finished."""
    from frcnn.reproduce.parallel import TrainJob, run_ahead

    def job(name, unshared, after=None):
        cfg = {"data": {}, "schedule": {"alternating": {"stage1_rpn": {"max_steps": 1}}},
               "recipe": {"name": "alternating", "unshared": unshared}, "twin": str(tmp_path / "shared")}
        return TrainJob(tmp_path / name, cfg, name, after=after)

    jobs = [job("shared", False), job("unshared", True, after=tmp_path / "shared")]
    lines = []
    assert run_ahead(tmp_path, jobs, 2, log=lines.append, train=train_after_twin) == 0, lines
    assert [line.split(":")[0] for line in lines[1:]] == ["shared", "unshared"]


def test_an_alternating_run_copies_its_twins_finished_stage_1(tmp_path, compose_cfg):
    """The unshared run and the 4-step run of one config train the same stage 1: the second to start copies
    the first's finished stage-1 files (not its Lightning checkpoints), and only a finished stage 1."""
    from frcnn.reproduce.runs import config_digest, reuse_first_stages, twin_config

    runs = tmp_path / "runs"
    shared_cfg = compose_cfg(["recipe=alternating"], "x")
    unshared_cfg = compose_cfg(["recipe=alternating", "recipe.unshared=true"], "x")
    assert twin_config(shared_cfg)["recipe"] == unshared_cfg["recipe"]
    assert twin_config(compose_cfg(["recipe=joint"], "x")) is None
    shared = runs / f"shared-{config_digest(shared_cfg)}" / "seed1"
    unshared = runs / f"unshared-{config_digest(unshared_cfg)}" / "seed1"
    files = {"stage1_rpn/DONE": "75", "stage1_rpn/model.pt": "rpn", "stage1_rpn/checkpoints/last.ckpt": "ckpt",
             "stage1_proposals/proposals.safetensors": "boxes", "stage1_det/model.pt": "det"}
    for name, text in files.items():
        (shared / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / name).write_text(text)
    assert reuse_first_stages(unshared, unshared_cfg) is None  # stage1_det not DONE
    assert not unshared.exists()
    (shared / "stage1_det" / "DONE").write_text("250")
    (runs / f"shared-{config_digest(shared_cfg)}" / "seed2" / "stage1_rpn").mkdir(parents=True)  # another seed
    assert reuse_first_stages(runs / "other" / "seed2", unshared_cfg) is None
    assert reuse_first_stages(unshared, unshared_cfg) == shared
    copied = {str(p.relative_to(unshared)): p.read_text() for p in unshared.rglob("*") if p.is_file()}
    assert copied == {**{k: v for k, v in files.items() if "checkpoints" not in k}, "stage1_det/DONE": "250"}
    begun = runs / f"shared-{config_digest(shared_cfg)}" / "seed3"
    (begun / "stage1_rpn").mkdir(parents=True)  # a run that began its own stage 1 keeps it
    assert reuse_first_stages(begun, shared_cfg) is None


def test_the_small_net_override_of_the_quick_tables_is_a_valid_config(tmp_path):
    """docs/REPRODUCING_CPU.md's command for the small net's quick tables (experiment=cpu_voclike trains Lite0):
    the overrides compose to the small net with its VOC-like weights, no timm head key, a valid config."""
    from frcnn.cli.reproduce import base_overrides
    from frcnn.config.checks import validate_config
    from frcnn.reproduce.runs import RunStore
    from frcnn.reproduce.tables import QUICK_DATA

    extra = ["backbone=small", "backbone.weights=builtin_voclike", "~backbone.head", "optim.lr=0.001"]
    _, cfg = RunStore(tmp_path).run_dir(base_overrides("lambda", True, 400, None, 250, extra, QUICK_DATA["voclike"]),
                                        0, "default")
    assert cfg["backbone"] == {"name": "small", "weights": "builtin_voclike"} and cfg["optim"]["lr"] == 0.001
    validate_config(cfg)
    _, default = RunStore(tmp_path).run_dir(base_overrides("lambda", True, 400, None, 250, [], QUICK_DATA["voclike"]),
                                            0, "default")
    assert default["backbone"]["name"] == "efficientnet_lite0" and default["backbone"]["weights"] == "imagenet"
