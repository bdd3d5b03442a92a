"""Start-up validation of the composed config, the CLI's --help / --cfg job / typo messages,
the paper presets' values (paper §3.1-§4.2, Tables 2, 3, 8, 9, 11) and the reproduce script."""


import copy

import pytest
import yaml

from frcnn.cli.train import preflight
from frcnn.config.checks import validate_config
from frcnn.errors import ConfigError
from frcnn.reproduce.tables import load_table, setting_overrides
from tests.cli_runner import run_script
from tests.conftest import REPO_ROOT

CONF = REPO_ROOT / "conf"


def run_cli(*args, timeout=120):
    return run_script(["train.py", *args], timeout=timeout)


# ----------------------------------------------------------------------------------------------
# Validation of values: each message names the key and says what is allowed
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("rpn.lambda=-1", r"rpn\.lambda=-1 is out of range: must be >= 0"),
    ("rpn.lambda=abc", r"rpn\.lambda: expected a number >= 0, got 'abc' \(str\)"),
    ("rpn.anchor_scales=[]", r"rpn\.anchor_scales must hold at least 1"),
    ("rpn.anchor_ratios=[0,1]", r"rpn\.anchor_ratios\[0\]=0 is out of range: must be > 0"),
    ("rpn.anchor_scales=128", r"rpn\.anchor_scales: expected a list"),
    ("rpn.fg_iou=0.2", r"rpn\.fg_iou \(0\.2\) must be >= rpn\.bg_iou \(0\.3\)"),
    ("rpn.fg_iou=1.5", r"rpn\.fg_iou=1\.5 is out of range: must be in \[0, 1\]"),
    ("rpn.batch_size=2.5", r"rpn\.batch_size: expected an integer, got 2\.5"),
    ("rpn.ignore_cross_boundary=maybe", r"rpn\.ignore_cross_boundary: expected true or false"),
    ("rpn.reg_normalizer=pixels", r"rpn\.reg_normalizer='pixels' is not allowed; allowed: .*anchor_locations"),
    ("rpn.test.post_nms_top_n=0", r"rpn\.test\.post_nms_top_n=0 is out of range: must be >= 1"),
    ("rpn.train.pre_nms_top_n=100", r"rpn\.train\.pre_nms_top_n \(100\) must be >= rpn\.train\.post_nms_top_n"),
    ("roi_head.fg_iou=0.4", r"roi_head\.fg_iou \(0\.4\) must be >= roi_head\.bg_iou_hi"),
    ("roi_head.bg_iou_lo=0.6", r"roi_head\.bg_iou_lo=0\.6|roi_head\.bg_iou_lo \(0\.6\) must be <= roi_head\.bg_iou_hi"),
    ("roi_head.pool_type=avg", r"roi_head\.pool_type='avg' is not allowed; allowed: .*max"),
    ("roi_head.target_stds=[1,1]", r"roi_head\.target_stds must hold exactly 4 values"),
    ("backbone.name=alexnet", r"backbone\.name='alexnet' is not allowed; allowed: .*vgg16.*choose with backbone="),
    ("backbone.name=vgg", r"did you mean 'vgg16'\?"),
    ("data.name=imagenet", r"data\.name='imagenet' is not allowed; allowed: .*shapes"),
    ("data.scales=[]", r"data\.scales must hold at least 1"),
    ("data.hflip_prob=2", r"data\.hflip_prob=2 is out of range"),
    ("data.num_workers=-1", r"data\.num_workers=-1 is out of range"),
    ("logger.name=mlflow", r"logger\.name='mlflow' is not allowed; allowed: wandb, csv, tensorboard, none"),
    ("logger.mode=sometimes", r"logger\.mode='sometimes' is not allowed"),
    ("optim.name=rmsprop", r"optim\.name='rmsprop' is not allowed; allowed: sgd, adamw"),
    ("optim.lr=0", r"optim\.lr=0 is out of range: must be > 0"),
    ("optim.momentum=1", r"optim\.momentum=1 is out of range"),
    ("schedule.joint.max_steps=0", r"schedule\.joint\.max_steps=0 is out of range: must be >= 1"),
    ("schedule.alternating.stage1_rpn.images_per_batch=0", r"schedule\.alternating\.stage1_rpn\.images_per_batch=0"),
    ("recipe.name=oneshot", r"recipe\.name='oneshot' is not allowed; allowed: joint, alternating"),
    ("recipe.proposals.nms_thresh=7", r"recipe\.proposals\.nms_thresh=7 is out of range"),
    ("trainer.precision=8", r"trainer\.precision=8 is not allowed; allowed: .*32-true"),
    ("trainer.strategy=horovod", r"trainer\.strategy='horovod' is not allowed; allowed: .*ddp"),
    ("trainer.devices=0", r"trainer\.devices: expected"),
    ("trainer.progress_every_s=0", r"trainer\.progress_every_s=0 is out of range: must be > 0"),
    ("trainer.progress_every_s=often", r"trainer\.progress_every_s: expected a number > 0, got 'often'"),
    ("trainer.strategy=ddp_spawn", r"trainer\.strategy=ddp_spawn is not supported: .*use trainer\.strategy=ddp"),
    ("roi_head.rois_per_minibatch=510", r"roi_head\.rois_per_minibatch \(510\) must be a multiple of "
                                        r"schedule\.alternating\.stage1_det\.images_per_batch \(4\)"),
    ("seed=-3", r"seed=-3 is out of range"),
])
def test_bad_values_stop_naming_the_key_and_the_allowed_values(compose_cfg, tmp_path, override, expected):
    cfg = compose_cfg([override], tmp_path)
    with pytest.raises(ConfigError, match=expected):
        validate_config(cfg)


@pytest.mark.parametrize("override, expected", [
    ("+rpn.lamda=3", r"rpn\.lamda: unknown key; did you mean rpn\.lambda\?"),
    ("+roi_head.bg_iou_low=0", r"roi_head\.bg_iou_low: unknown key; did you mean roi_head\.bg_iou_lo\?"),
    ("+rpn.test.post_nms=100", r"rpn\.test\.post_nms: unknown key; did you mean rpn\.test\.post_nms_top_n\?"),
    ("+learning_rate=0.1", r"learning_rate: unknown key \(keys of the top level: .*optim"),
    ("~rpn.min_size", r"rpn\.min_size: missing; expected a number >= 0"),
    ("+roi_head.batch_size=128", r"roi_head\.batch_size: renamed to roi_head\.rois_per_minibatch, the RoIs of a whole "
                                 r"mini-batch \(not per image\)"),
])
def test_unknown_and_missing_keys_are_refused(compose_cfg, tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config(compose_cfg([override], tmp_path))


def test_data_group_accepts_dataset_specific_keys(compose_cfg, tmp_path):
    validate_config(compose_cfg(["+data.cache_dir=/tmp/cache"], tmp_path))  # left to the dataset builder


def test_every_shipped_combination_validates(compose_cfg, tmp_path):
    for overrides in ([], ["recipe=joint"], ["trainer=ddp"], ["logger=csv"], ["logger=tensorboard"], ["~experiment"],
                      ["backbone=vgg16"], ["backbone=zf"], ["backbone=resnet50_c4"], ["schedule=paper_coco"]):
        validate_config(compose_cfg(overrides, tmp_path))


# ----------------------------------------------------------------------------------------------
# Command line: typos before Hydra, --help, --cfg job
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["rpn.lamda=3"], "rpn.lamda: unknown key; did you mean rpn.lambda?"),
    (["-m", "rpn.lamda=1,10"], "rpn.lamda: unknown key; did you mean rpn.lambda?"),
    (["data.root=/x"], "data.root: unknown key"),  # shapes has no root ...
    (["rpn.test.ranking.x=1"], "rpn.test.ranking is a value"),
    (["roi_head.batch_size=64"], "roi_head.batch_size: renamed to roi_head.rois_per_minibatch"),
])
def test_preflight_names_unknown_command_line_keys(argv, expected):
    message = preflight(argv, CONF)
    assert message is not None and expected in message


@pytest.mark.parametrize("argv", [
    ["data=voc", "data.root=/x"],  # ... voc has: keys follow the chosen group
    ["-m", "data=voc,coco", "data.root=/x"],
    ["experiment=paper/voc07_vgg16_alt", "data.train_split=train"],
    ["+rpn.extra=1"],  # explicit additions are left to the schema check
    ["--help"], ["--cfg", "job"], ["rpn.lambda=3"], ["-m", "rpn.anchor_scales=[64],[128]"],
])
def test_preflight_accepts_valid_command_lines(argv):
    assert preflight(argv, CONF) is None


def test_optional_plugins_get_a_pip_hint_when_missing(monkeypatch):
    from frcnn.cli import train as cli_train

    monkeypatch.setattr(cli_train, "_importable", lambda module: False)  # an install without the extras
    assert "pip install -e '.[optuna]'" in preflight(["-m", "hydra/sweeper=optuna_frcnn"], CONF)
    assert "pip install -e '.[slurm]'" in preflight(["-m", "hydra/launcher=slurm"], CONF)


@pytest.mark.parametrize("choice, module, expected", [
    ("hydra/sweeper=optuna_frcnn", "hydra_plugins.hydra_optuna_sweeper", {"direction": "maximize", "n_trials": 20}),
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", {"tasks_per_node": 1, "timeout_min": 4320}),
])
def test_plugin_presets_compose(choice, module, expected):
    """The presets against the plugins' own schemas: the dev extra (CI, the README's test command) installs
    hydra-optuna-sweeper and hydra-submitit-launcher, so this runs there and fails without them."""
    import importlib

    importlib.import_module(module)  # ModuleNotFoundError: pip install -e '.[dev]' (it holds the optuna / slurm extras)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=[choice], return_hydra_config=True)
    node = cfg.hydra.sweeper if "sweeper" in choice else cfg.hydra.launcher
    for key, value in expected.items():
        assert str(node[key]).endswith(str(value)), (key, node[key])


def test_cli_typo_exits_2_with_did_you_mean():
    result = run_cli("rpn.lamda=3")
    assert result.returncode == 2
    assert "rpn.lamda: unknown key; did you mean rpn.lambda?" in result.stderr


@pytest.mark.slow
def test_cli_bad_value_exits_2_before_training(tmp_path):
    result = run_cli("rpn.lambda=-1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Config error: rpn.lambda=-1 is out of range: must be >= 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "stage1_rpn").exists() and not (tmp_path / "metrics.json").exists()


def test_cli_help_lists_groups_and_presets():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for text in ("Usage:", "backbone: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, resnet50_c4, small, timm, vgg16, zf", "recipe: alternating, joint",
                 "experiment/paper:", "voc07_vgg16_alt", "rpn:", "anchor_scales", "-m rpn.lambda=1,10,100"):
        assert text in result.stdout


def test_cli_cfg_job_prints_the_composed_config_with_overrides():
    result = run_cli("--cfg", "job", "rpn.lambda=3", "recipe=joint")
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["rpn"]["lambda"] == 3 and cfg["recipe"]["name"] == "joint" and "hydra" not in cfg
    assert cfg["run_dir"] == "${hydra:runtime.output_dir}"


# ----------------------------------------------------------------------------------------------
# Paper presets hold the paper's values
# ----------------------------------------------------------------------------------------------
VOC_STAGES = {"stage1_rpn": (80000, [60000], 1), "stage1_det": (40000, [30000], 2),
              "stage2_rpn": (80000, [60000], 1), "stage2_det": (40000, [30000], 2)}
VOC0712_STAGES = {"stage1_rpn": (80000, [60000], 1), "stage1_det": (60000, [30000], 2),
                  "stage2_rpn": (80000, [60000], 1), "stage2_det": (60000, [30000], 2)}
COCO_JOINT = (320000, [240000], 2, 1)  # the paper's 8-GPU figures, one pass per update
PAPER_RPN_LOSS = (10.0, 1.0, "anchor_locations")  # eq. 1: λ = 10, Fast R-CNN's smooth-L1 (β = 1), N_reg ~ 2400 locations
PYRELEASE_RPN_LOSS = (1.0, 1 / 9, "minibatch")  # py-faster-rcnn: loss_weight 1, σ = 3, 1 / 256 sampled anchors
PRESETS = {
    # name: (data, backbone, recipe, unshared, stages or joint lengths, lr, anchor scales, bg_iou_lo, rpn loss
    #        (λ, smooth-L1 β, N_reg), paper numbers)
    "voc07_zf_alt": ("voc", "zf", "alternating", False, VOC_STAGES, 0.001, [128, 256, 512], 0.1, PAPER_RPN_LOSS,
                     {"table": "Table 2", "map_voc07": 59.9}),
    "voc07_vgg16_alt": ("voc", "vgg16", "alternating", False, VOC_STAGES, 0.001, [128, 256, 512], 0.1, PAPER_RPN_LOSS,
                        {"table": "Table 3", "map_voc07": 69.9}),
    "voc07_vgg16_alt_pyrelease": ("voc", "vgg16", "alternating", False, VOC_STAGES, 0.001, [128, 256, 512], 0.0,
                                  PYRELEASE_RPN_LOSS, {"table": "Table 3", "map_voc07": 69.9}),
    "voc07_vgg16_unshared": ("voc", "vgg16", "alternating", True, VOC_STAGES, 0.001, [128, 256, 512], 0.1,
                             PAPER_RPN_LOSS, {"table": "Table 3", "map_voc07": 68.5}),
    "voc07_vgg16_joint": ("voc", "vgg16", "joint", None, (70000, [50000], 1, 2), 0.001, [128, 256, 512], 0.1,
                          PAPER_RPN_LOSS, {"table": None, "map_voc07": None}),
    "voc0712_vgg16_alt": ("voc0712", "vgg16", "alternating", False, VOC0712_STAGES, 0.001, [128, 256, 512], 0.1,
                          PAPER_RPN_LOSS, {"table": "Table 3", "map_voc07": 73.2}),
    "coco_vgg16_joint": ("coco", "vgg16", "joint", None, COCO_JOINT, 0.003, [64, 128, 256, 512], 0.0, PAPER_RPN_LOSS,
                         {"table": "Table 11 (TPAMI)", "map_coco_50": 41.5, "map_coco": 21.2}),
}


def compose_preset(compose_cfg, tmp_path, name, data):
    overrides = [f"experiment=paper/{name}"]
    if not (CONF / "data" / f"{data}.yaml").exists():  # data configs come from the data work; until then
        overrides.append("data=shapes")  # check everything but the data group
    return compose_cfg(overrides, tmp_path)


def detector_images_per_batch(cfg) -> list[int]:
    """N of every mini-batch that samples RoIs: the joint step's, or the alternating recipe's detector steps'."""
    schedule = cfg["schedule"][cfg["recipe"]["name"]]
    return [schedule["images_per_batch"]] if "images_per_batch" in schedule else \
        [schedule[name]["images_per_batch"] for name in ("stage1_det", "stage2_det")]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_paper_preset_holds_the_papers_values(compose_cfg, tmp_path, name):
    data, backbone, recipe, unshared, lengths, lr, scales, bg_lo, rpn_loss, paper = PRESETS[name]
    cfg = compose_preset(compose_cfg, tmp_path, name, data)
    validate_config(cfg)
    if (CONF / "data" / f"{data}.yaml").exists():
        assert cfg["data"]["name"] == data
    assert (cfg["data"]["scales"], cfg["data"]["max_size"], cfg["data"]["hflip_prob"]) == ([600], 1000, 0.5)
    assert cfg["backbone"]["name"] == backbone and cfg["recipe"]["name"] == recipe
    rpn, roi, optim = cfg["rpn"], cfg["roi_head"], cfg["optim"]
    # §3.1.1 / §3.3 anchors, §3.1.2 IoU labels, §3.1.3 256 anchors 1:1, §3.3 NMS 0.7, 300 test proposals
    assert rpn["anchor_scales"] == scales and rpn["anchor_ratios"] == [0.5, 1.0, 2.0]
    assert (rpn["lambda"], rpn["smooth_l1_beta"], rpn["reg_normalizer"]) == pytest.approx(rpn_loss)  # eq. 1
    assert (rpn["fg_iou"], rpn["bg_iou"], rpn["batch_size"], rpn["positive_fraction"]) == (0.7, 0.3, 256, 0.5)
    assert rpn["nms_thresh"] == 0.7 and rpn["ignore_cross_boundary"] is True and rpn["test"]["post_nms_top_n"] == 300
    assert (rpn["train"]["pre_nms_top_n"], rpn["train"]["post_nms_top_n"], rpn["test"]["pre_nms_top_n"]) == \
        (12000, 2000, 6000)
    assert rpn["min_size"] == 16  # px of the original image (the proposal layer multiplies by the resize factor)
    # Fast R-CNN RoI sampling: 128 per mini-batch (64 from each of 2 images; 128 from the one image of a
    # joint step), 25% foreground >= 0.5, background [bg_lo, 0.5)
    assert (roi["rois_per_minibatch"], roi["positive_fraction"], roi["fg_iou"], roi["bg_iou_hi"], roi["bg_iou_lo"]) == \
        (128, 0.25, 0.5, 0.5, bg_lo)
    assert {roi["rois_per_minibatch"] // n for n in detector_images_per_batch(cfg)} == \
        ({128} if recipe == "joint" and data != "coco" else {64})
    assert roi["target_stds"] == [0.1, 0.1, 0.2, 0.2] and roi["pool_type"] == "max"
    # §3.1.3: SGD, momentum 0.9, weight decay 0.0005, lr / 10 at the step; the Caffe solvers: biases at
    # 2x lr, weight decay kept (decay_mult 1)
    assert (optim["name"], optim["lr"], optim["momentum"], optim["weight_decay"], optim["lr_gamma"]) == \
        ("sgd", lr, 0.9, 0.0005, 0.1)
    assert (optim["bias_lr_factor"], optim["bias_weight_decay"], optim["warmup_steps"]) == (2.0, 0.0005, 0)
    schedule = cfg["schedule"][recipe]
    if recipe == "joint":  # the end2end solver: iter_size 2 (2 passes of 1 image per update)
        assert (schedule["max_steps"], schedule["lr_steps"], schedule["images_per_batch"],
                schedule.get("batches_per_update", 1)) == lengths
    else:
        assert cfg["recipe"]["unshared"] is unshared
        assert {k: (v["max_steps"], v["lr_steps"], v["images_per_batch"]) for k, v in schedule.items()} == lengths
        # §3.1.3: RPN at lr 0.001 for 60k mini-batches then 0.0001 for 20k
        assert schedule["stage1_rpn"]["max_steps"] - schedule["stage1_rpn"]["lr_steps"][0] == 20000
        # the authors' code: the last Fast R-CNN step starts cls_score / bbox_pred afresh (unshared stops before it)
        assert cfg["recipe"]["reinit_det_outputs"] is (not unshared)
        assert cfg["recipe"]["proposals"] == {"pre_nms_top_n": -1, "post_nms_top_n": 2000, "nms_thresh": 0.7}
    for key, value in paper.items():
        assert cfg["paper_result"][key] == value, key


def test_pyrelease_preset_differs_from_the_paper_preset_only_where_the_release_does(compose_cfg, tmp_path):
    paper = compose_preset(compose_cfg, tmp_path, "voc07_vgg16_alt", "voc")
    release = compose_preset(compose_cfg, tmp_path, "voc07_vgg16_alt_pyrelease", "voc")

    def leaves(node, prefix=""):
        if not isinstance(node, dict):
            return {prefix[:-1]: node}
        return {k: v for name, child in node.items() for k, v in leaves(child, f"{prefix}{name}.").items()}

    paper_leaves, release_leaves = leaves(paper), leaves(release)
    differing = {k for k in paper_leaves.keys() | release_leaves.keys()
                 if paper_leaves.get(k) != release_leaves.get(k) and not k.startswith("paper_result")}
    assert differing == {"rpn.smooth_l1_beta", "rpn.lambda", "rpn.reg_normalizer", "roi_head.bg_iou_lo",
                         "roi_head.target_normalization"}


def test_paper_presets_state_only_what_differs_from_their_groups(compose_cfg, tmp_path):
    """Each value a preset file sets differs from what its groups (or the preset it extends) give."""
    for path in sorted((CONF / "experiment" / "paper").glob("*.yaml")):
        preset = yaml.safe_load(path.read_text())
        base = ["~experiment"]
        for entry in preset.get("defaults", []):
            if isinstance(entry, dict):  # {"override /data": "voc"}
                (key, choice), = entry.items()
                base.append(f"{key.split('/')[-1]}={choice}")
            elif entry.startswith("/experiment/"):
                base = [f"experiment={entry[len('/experiment/'):]}"]
        groups = compose_cfg(base, tmp_path)
        for group, values in preset.items():
            if group in ("defaults", "hydra", "paper_result", "paper_table"):
                continue
            for key, value in values.items():
                assert groups[group].get(key, "<absent>") != value, \
                    f"{path.name}: {group}.{key}={value} is the groups' value already"


def test_paper_solver_gives_biases_twice_the_lr_and_the_weight_decay(compose_cfg, tmp_path):
    """The authors' Caffe nets: param { lr_mult: 1 } param { lr_mult: 2 }, decay_mult unset (1)."""
    from torch import nn

    from frcnn.lit.optim import build_optimizer

    cfg = compose_preset(compose_cfg, tmp_path, "voc07_vgg16_alt", "voc")
    groups = build_optimizer(nn.Linear(3, 2), cfg["optim"], [10])["optimizer"].param_groups
    assert [(g["initial_lr"], g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in groups] == \
        [(0.001, 0.0005, [(2, 3)]), (0.002, 0.0005, [(2,)])]
    default = build_optimizer(nn.Linear(3, 2), compose_cfg([], tmp_path)["optim"], [10])["optimizer"].param_groups
    assert [(g["initial_lr"], g["weight_decay"]) for g in default] == [(0.001, 0.0001), (0.001, 0.0)]  # as before


def test_fused_sgd_gives_the_plain_sgd_weights_bit_for_bit(compose_cfg, tmp_path):
    """build_optimizer's SGD uses torch's fused kernel where there is one: same floats as the
    for-loop SGD (momentum, weight decay, biases' own lr and decay, the step schedule)."""
    import torch
    from torch import nn

    from frcnn.lit.optim import build_optimizer

    cfg = compose_preset(compose_cfg, tmp_path, "voc07_vgg16_alt", "voc")
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))]
    models.append(copy.deepcopy(models[0]))
    built = [build_optimizer(m, cfg["optim"], [2]) for m in models]
    assert built[0]["optimizer"].defaults.get("fused") is True
    reference = built[1]["optimizer"]
    reference.defaults["fused"] = None
    for group in reference.param_groups:
        group["fused"], group["foreach"] = None, False
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in models[0].parameters()]
        for model, entry in zip(models, built):
            for param, grad in zip(model.parameters(), grads):
                param.grad = grad.clone()
            entry["optimizer"].step()
            entry["lr_scheduler"]["scheduler"].step()
    for fused_param, plain_param in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(fused_param, plain_param)


def test_coco_preset_runs_on_eight_gpus(compose_cfg, tmp_path):
    cfg = compose_preset(compose_cfg, tmp_path, "coco_vgg16_joint", "coco")
    assert (cfg["trainer"]["strategy"], cfg["trainer"]["devices"]) == ("ddp", 8)  # §4.2: 8 GPUs, 2 images each


@pytest.mark.parametrize("table, name, expected", [
    ("lambda", "Table 9", {"λ=0.1": 67.2, "λ=1": 68.9, "λ=3": None, "λ=10": 69.9, "λ=100": 69.1}),
    ("anchors", "Table 8", {"1 scale, 1 ratio (128², 1:1)": 65.8, "1 scale, 1 ratio (256², 1:1)": 66.7,
                            "1 scale, 3 ratios (128²)": 68.8, "1 scale, 3 ratios (256²)": 67.9,
                            "3 scales, 1 ratio": 69.8, "3 scales, 3 ratios": 69.9}),
    ("proposals", "Table 2", {"shared, 300 proposals": 59.9, "unshared, 300 proposals": 58.7, "100 proposals": 55.1,
                              "300 proposals": 56.8, "1000 proposals": 56.3, "2000 proposals": None,
                              "no NMS (top 6000)": 55.2, "no cls (random rank), 100": 44.6,
                              "no cls (random rank), 300": 51.4, "no cls (random rank), 1000": 55.8,
                              "no reg (anchors), 300": 52.1}),
    ("training", "Table 3", {"unshared (4-step, steps 1-2)": 68.5, "shared, 4-step alternating": 69.9,
                             "shared, approximate joint": None}),
])
def test_ablation_tables_hold_the_papers_numbers(compose_cfg, tmp_path, table, name, expected):
    paper_table = load_table(table)
    assert paper_table["name"] == name and paper_table["metric"] == "map_voc07"
    assert {s["label"]: s["paper"] for s in paper_table["settings"]} == expected
    cfg = compose_preset(compose_cfg, tmp_path, f"ablation_{table}", "voc")
    validate_config(cfg)  # the base is Table 3's system (Table 2's: the ZF one)
    assert cfg["backbone"]["name"] == ("zf" if table == "proposals" else "vgg16")
    assert cfg["recipe"]["name"] == "alternating"
    if table == "anchors":
        settings = {s["label"]: s["rpn"] for s in paper_table["settings"]}
        assert settings["3 scales, 3 ratios"] == {"anchor_scales": [128, 256, 512], "anchor_ratios": [0.5, 1.0, 2.0]}
        assert settings["1 scale, 1 ratio (256², 1:1)"] == {"anchor_scales": [256], "anchor_ratios": [1.0]}


def test_lambda_ablation_is_a_multirun_preset():
    from hydra import compose, initialize_config_dir

    overrides = ["experiment=paper/ablation_lambda"]
    if not (CONF / "data" / "voc.yaml").exists():
        overrides.append("data=shapes")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.sweeper.params["rpn.lambda"] == "0.1,1,3,10,100"


# ----------------------------------------------------------------------------------------------
# scripts/reproduce.py
# ----------------------------------------------------------------------------------------------
def test_reproduce_settings_become_overrides():
    table = load_table("anchors")
    one_scale = table["settings"][0]
    assert setting_overrides(one_scale) == ["rpn.anchor_scales=[128]", "rpn.anchor_ratios=[1]"]
    assert setting_overrides(one_scale, anchor_scale=0.25) == ["rpn.anchor_scales=[32]", "rpn.anchor_ratios=[1]"]
    lam = load_table("lambda")["settings"][0]
    assert setting_overrides(lam, anchor_scale=0.4) == ["rpn.lambda=0.1"]


GROUPS_IN_README = ("data", "backbone", "rpn", "roi_head", "optim", "schedule", "recipe", "trainer", "logger", "experiment")


@pytest.mark.parametrize("group", GROUPS_IN_README)
def test_readme_configuration_table_lists_every_choice_of_the_group(group):
    """The README's configuration table names every file of conf/<group>/ (presets under paper/ as paper/<name>)."""
    import re

    readme = (CONF.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{group}` |"))
    listed = set(re.findall(r"`([^`]+)`", row.split(" | ")[1]))
    on_disk = {str(path.relative_to(CONF / group).with_suffix("")) for path in (CONF / group).rglob("*.yaml")}
    assert not on_disk - listed, f"README's `{group}` row lacks {sorted(on_disk - listed)}"
