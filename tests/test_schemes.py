"""`scripts/reproduce.py schemes`: the three training schemes of §3.2 side by side."""

import pytest
from omegaconf import OmegaConf

from frcnn.cli.reproduce import main as reproduce_main
from frcnn.reproduce.schemes import (
    SCHEMES,
    cpu_schedule_lengths,
    format_schemes,
    quick_schedule_overrides,
    reproduce_schemes,
    scheme_row,
)
from frcnn.reproduce.tables import QUICK_DATA
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("data", sorted(QUICK_DATA))
def test_quick_schedule_scales_every_stage_of_the_cpu_schedule_alike(data):
    schedule = OmegaConf.load(REPO_ROOT / "conf" / "schedule" / f"{QUICK_DATA[data].schedule}.yaml")
    CPU_JOINT_STEPS, CPU_ALTERNATING_STEPS = cpu_schedule_lengths(QUICK_DATA[data].schedule)
    assert (CPU_JOINT_STEPS, CPU_ALTERNATING_STEPS["stage1_det"]) == (schedule.joint.max_steps,
                                                                     schedule.alternating.stage1_det.max_steps)
    half = CPU_JOINT_STEPS // 2
    overrides = dict(o.split("=") for o in quick_schedule_overrides(half, QUICK_DATA[data]))
    assert overrides["schedule.joint.max_steps"] == str(half)
    assert overrides["schedule.joint.lr_steps"] == f"[{int(0.8 * half)}]"
    for stage, length in CPU_ALTERNATING_STEPS.items():
        scaled = round(length * half / CPU_JOINT_STEPS)
        assert abs(scaled - length / 2) <= 0.5, stage  # every stage halved alike
        assert overrides[f"schedule.alternating.{stage}.max_steps"] == str(scaled)
        assert overrides[f"schedule.alternating.{stage}.lr_steps"] == f"[{int(0.8 * scaled)}]"


def _finished(run_dir, stages):
    for stage, steps in stages.items():
        (run_dir / stage).mkdir(parents=True)
        (run_dir / stage / "DONE").write_text(f"{steps}\n")


def test_rows_hold_map_wall_time_and_time_per_step_beside_the_paper(tmp_path):
    _finished(tmp_path / "alt", {"stage1_rpn": 10, "stage1_det": 20, "stage2_rpn": 10, "stage2_det": 10})
    _finished(tmp_path / "joint", {"joint": 25})
    alternating = {"recipe": "alternating", "map_50": 0.5, "map_voc07": 0.48,
                   "stage_seconds": {"stage1_rpn": 10.0, "stage1_proposals": 5.0, "stage1_det": 20.0,
                                     "stage2_rpn": 10.0, "stage2_proposals": 5.0, "stage2_det": 10.0,
                                     "evaluation": 99.0}}
    joint = {"recipe": "joint", "map_50": 0.45, "map_voc07": 0.44, "stage_seconds": {"joint": 30.0, "evaluation": 9.0}}
    rows = [scheme_row("alternating", "alternating (4-step)", SCHEMES[0][3], tmp_path / "alt", alternating, "ok"),
            scheme_row("approximate_joint", "approximate joint", SCHEMES[1][3], tmp_path / "joint", joint, "ok"),
            scheme_row("nonapproximate_joint", "non-approximate joint", SCHEMES[2][3], tmp_path / "x", None,
                       "failed: X")]
    assert rows[0]["train_s"] == 60.0 and rows[0]["steps"] == 50 and rows[0]["s_per_step"] == 1.0  # proposals in wall
    assert rows[1]["train_s"] == 30.0 and rows[1]["s_per_step"] == 1.2
    text, md, csv_text = format_schemes(rows, "note")
    assert "| alternating (4-step) | 50.0 | 48.0 | 60 | 1.00 | 50 | 1.000 | 69.9 VOC07 mAP (VGG-16, Table 3) | ok |" in md
    assert "| approximate joint | 45.0 | 44.0 | 30 | 0.50 | 25 | 1.200 |" in md
    assert "| non-approximate joint | - | - | - | - | - | - | no number" in md
    assert csv_text.splitlines()[0] == "scheme,seed,map_50,map_voc07,train_s,steps,s_per_step,paper,status,run_dir"
    assert len(csv_text.splitlines()) == 4 and "approximate joint" in text


@pytest.mark.slow
def test_schemes_quick_trains_the_three_schemes_on_the_same_data(tmp_path, capsys):
    rc = reproduce_main(["schemes", "--quick", "--steps", "4", "--num-train", "8", "--num-val", "4",
                         "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Training schemes of the shared network" in out and "quick mode" in out
    csv_lines = (tmp_path / "schemes.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["alternating", "approximate_joint", "nonapproximate_joint"]
    assert all(",ok," in line for line in csv_lines[1:])
    assert (tmp_path / "2_nonapproximate_joint" / "joint" / "DONE").read_text().strip() == "4"
    assert (tmp_path / "0_alternating" / "stage2_det" / "DONE").exists()


def test_seeds_train_in_their_own_dirs_and_add_a_row_of_means(tmp_path, monkeypatch):
    """--seeds 0 1: seed 0 keeps the directory (and overrides) of a run without --seeds, seed 1 trains with
    seed=1 in <i>_<scheme>_seed1; each scheme gets its seed rows and then a row of their means."""
    import frcnn.reproduce.runs as runs

    trained = []

    def fake_train(run_dir, cfg, name):
        seed = int(cfg["seed"])
        trained.append((run_dir.name, seed))
        _finished(run_dir, {"joint": 10})
        metrics = {"recipe": "joint", "map_50": 0.40 + 0.1 * seed, "map_voc07": 0.30 + 0.1 * seed,
                   "stage_seconds": {"joint": 20.0 + 10 * seed}}
        return runs.Outcome(metrics, "ok", run_dir, 1.0)

    monkeypatch.setattr(runs, "compose", lambda overrides, run_dir: {"seed": next(
        (o.split("=")[1] for o in overrides if o.startswith("seed=")), 0)})
    monkeypatch.setattr(runs, "train_in", fake_train)
    rows = reproduce_schemes(tmp_path, only=["approximate_joint"], seeds=[0, 1])
    assert trained == [("1_approximate_joint", 0), ("1_approximate_joint_seed1", 1)]
    assert [r["label"] for r in rows] == ["approximate joint, seed 0", "approximate joint, seed 1",
                                          "approximate joint, mean of 2 seeds"]
    mean = rows[-1]
    assert mean["map_50"] == pytest.approx(45.0) and mean["train_s"] == pytest.approx(25.0) and mean["status"] == "ok"
    assert mean["s_per_step"] == pytest.approx(2.5)
    assert "| approximate joint, mean of 2 seeds | 45.0 | 35.0 | 25 |" in (tmp_path / "schemes.md").read_text()
    assert (tmp_path / "schemes.csv").read_text().splitlines()[3].startswith("approximate_joint,mean,45.0,35.0,")
