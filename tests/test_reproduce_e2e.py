"""`scripts/reproduce.py <table> --quick` end to end on a few images: trainings shared between rows,
test-time rows re-evaluating one model per seed, the report, and a rerun that trains nothing."""

import csv

import pytest

from frcnn.cli.reproduce import main as reproduce_main
from frcnn.cli.reproduce import reproduce_tables

TINY = ["--steps", "3", "--num-train", "8", "--num-val", "4"]


@pytest.mark.slow
def test_table2_quick_trains_two_models_per_seed_and_resumes(tmp_path, capsys):
    rc = reproduce_main(["proposals", "--quick", "--seeds", "0", "1", *TINY, "--jobs", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("  training ") == 4  # per seed: the default (joint) model and the unshared one
    runs = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir())
    assert runs == ["proposals_shared_300_proposals", "proposals_unshared_300_proposals"]
    default_run = next((tmp_path / "runs").glob("proposals_shared*"))
    assert sorted(p.name for p in (default_run / "seed0" / "test_time").iterdir())[:2] == \
        ["1000_proposals.json", "100_proposals.json"]  # test-time rows: evaluations of the seed's default model
    report = (tmp_path / "REPORT.md").read_text()
    assert "## Table 2: mAP (%) on VOC 2007 test" in report and "Seeds: 0, 1." in report
    assert "| shared, 300 proposals (default) |" in report and "Kendall τ (measured vs paper changes, 10 rows)" in report
    assert "random ranking hurts most at 100 proposals, less at 1000: difference" in report
    assert "measured - paper" not in report  # quick mode compares changes only
    assert "Data: voclike generator v1, commit " in report and "experiment=cpu_voclike" in report
    assert "## Kendall τ by data version" in report and (tmp_path / "tau_history.json").exists()
    with open(tmp_path / "proposals.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11 and all(r["status"] == "ok" for r in rows) and all(r["seed0"] and r["seed1"] for r in rows)
    assert (tmp_path / "proposals_changes.png").stat().st_size > 0
    first_csv = (tmp_path / "proposals.csv").read_text()

    rc = reproduce_main(["proposals", "--quick", "--seeds", "0", "1", *TINY, "--jobs", "1", "--out", str(tmp_path)])
    assert rc == 0 and "  training " not in capsys.readouterr().out  # a rerun reads every run back
    assert (tmp_path / "proposals.csv").read_text() == first_csv


@pytest.mark.slow
def test_fig4_and_shared_default_model_across_tables(tmp_path, capsys):
    outcomes = reproduce_tables(["training", "proposals"], tmp_path, quick=True, steps=3, seeds=[0], num_train=8,
                                num_val=4, fig4=True)
    out = capsys.readouterr().out
    # Table 3's joint row and Table 2's default are one model; its unshared rows too: 3 trainings in all
    assert out.count("  training ") == 3
    assert outcomes["training"]["shared, approximate joint"][0].run_dir == \
        outcomes["proposals"]["shared, 300 proposals"][0].run_dir
    # the unshared run is the 4-step run's stage 1: the second of the two to train copies it from the first
    four_step = outcomes["training"]["shared, 4-step alternating"][0].run_dir
    unshared = outcomes["training"]["unshared (4-step, steps 1-2)"][0].run_dir
    assert out.count(f"  stage 1 (steps 1-2) copied from {unshared}") == 1  # Table 3 lists unshared first
    for stage in ("stage1_rpn", "stage1_det"):
        assert (unshared / stage / "model.pt").read_bytes() == (four_step / stage / "model.pt").read_bytes()
    report = (tmp_path / "REPORT.md").read_text()
    assert "## Fig. 4: recall vs IoU" in report and "| 300 |" in report and (tmp_path / "fig4_recall.png").exists()
    assert report.index("## Table 3") < report.index("## Table 2")


@pytest.mark.slow
def test_jobs_2_trains_what_the_tables_read_back(tmp_path, capsys):
    """--jobs 2 runs Table 2's trainings and test-time evaluations in two worker processes, where the
    tables' pass looks for them: that pass, and a rerun one job at a time, train and evaluate nothing."""
    rc = reproduce_main(["proposals", "--quick", "--seeds", "0", *TINY, "--jobs", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "running 11 trainings and evaluations, 2 at a time" in out  # the default and unshared models, 9 test rows
    assert "run 11 of 11" in out and "  training " not in out  # the workers trained; the pass read back
    runs = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir())
    assert runs == ["proposals_shared_300_proposals", "proposals_unshared_300_proposals"]
    default_run = next((tmp_path / "runs").glob("proposals_shared*")) / "seed0"
    assert len(list((default_run / "test_time").iterdir())) == 9
    with open(tmp_path / "proposals.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11 and all(r["status"] == "ok" and r["seed0"] for r in rows)
    first_csv = (tmp_path / "proposals.csv").read_text()

    rc = reproduce_main(["proposals", "--quick", "--seeds", "0", *TINY, "--jobs", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "  training " not in out and "running " not in out
    assert (tmp_path / "proposals.csv").read_text() == first_csv
