"""`python train.py`: check the command line and the composed config (Hydra), run the recipe.

- :func:`preflight` runs before Hydra: command-line keys that do not exist get a "did you
  mean", and optional plugins (Optuna sweeper, SLURM launcher) a pip hint.
- :func:`run_job` is the Hydra task: validate, refuse DDP inside an in-process multirun,
  name the sweep's W&B group, run the recipe. In a multirun a failing job is recorded
  (``<job dir>/FAILED``) and the sweep goes on, so the sweep summary can show it as failed.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from frcnn.checkpoint.safe_load import UnreadableFileError
from frcnn.config.checks import check_backbone_weights, check_override_keys, validate_config
from frcnn.config.presets import OWN_DATA_PRESET, preset_notice
from frcnn.data.checks import DataError
from frcnn.errors import ConfigError
from frcnn.utils.atomic_io import WRITE_ERROR_EXIT_STATUS, describe_write_error, is_write_error
from frcnn.utils.run_lock import LOCKED_EXIT_STATUS, RunDirLock, RunDirLocked

log = logging.getLogger(__name__)

# Optional Hydra plugins: config choice -> (module that provides it, pip extra of this package)
OPTIONAL_PLUGINS = {
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}
_FAILED_JOBS: list[str] = []  # job dirs of failed jobs of an in-process multirun


class DDPInMultirunError(ConfigError):
    """A multi-process strategy inside a multirun whose jobs share one process."""


# ----------------------------------------------------------------------------------------------
# Before Hydra
# ----------------------------------------------------------------------------------------------
def preflight(argv: Sequence[str], config_dir: str | Path, config_name: str = "train") -> str | None:
    """An error message for a command line Hydra would refuse less clearly, else None.

    Checks every plain ``key=value`` override (no ``+``/``~``, not ``hydra.*``) against the
    config composed with the command line's group choices (``data=voc``, ``experiment=...``;
    the first value of a group sweep), and that a chosen optional plugin is installed.
    Anything it cannot interpret is left to Hydra.
    """
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:  # let Hydra print its own usage error
        return None
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_path \
            or args.config_name or args.config_dir or args.experimental_rerun:
        return None
    for text in args.overrides:
        for choice, (module, extra) in OPTIONAL_PLUGINS.items():
            if text.lstrip("+").startswith(choice) and not _importable(module):
                return (f"{text}: needs the Hydra plugin {module.split('.')[-1]!r}, which is not installed; "
                        f"install it with: pip install -e '.[{extra}]'")
    problem = _group_choice_problem(args.overrides, Path(config_dir))
    if problem:
        return problem
    try:
        base, keys = _compose_for_key_check(args.overrides, Path(config_dir), config_name)
    except Exception:  # noqa: BLE001 - Hydra reports composition errors itself
        return None
    try:
        check_override_keys(base, keys)
    except ConfigError as exc:
        return str(exc)
    return _composition_problem(args.overrides, Path(config_dir), config_name)


def _plain_overrides(overrides: Sequence[str]) -> list:
    """Parsed overrides that are not ``hydra.*`` (those are Hydra's to check)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = [parser.parse_override(text) for text in overrides]
    return [override for override in parsed if not override.is_hydra_override()]


def _group_choice_problem(overrides: Sequence[str], config_dir: Path) -> str | None:
    """'rpn=nope: config group rpn has no option 'nope' (options: default)' for a group choice
    that names no file of its group (Hydra's own message lists its search path instead)."""
    try:
        parsed = _plain_overrides(overrides)
    except Exception:  # noqa: BLE001 - a syntax error: Hydra reports it with the grammar
        return None
    for override in parsed:
        group = override.key_or_group
        if not (config_dir / group).is_dir() or override.is_delete():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if not isinstance(value, str) or not (config_dir / group / f"{value}.yaml").is_file():
                options = sorted(str(p.relative_to(config_dir / group).with_suffix(""))
                                 for p in (config_dir / group).rglob("*.yaml"))
                return (f"{override.input_line}: config group {group} has no option {value!r} "
                        f"(options: {', '.join(options)})")
    return None


def _composition_problem(overrides: Sequence[str], config_dir: Path, config_name: str) -> str | None:
    """The first override Hydra cannot apply to the config (a mapping or a list where the config
    holds the other kind, ...), named with Hydra's reason; None when the command line composes.
    Sweeps (``a,b``) are left to Hydra, which composes each job itself."""
    from hydra import compose, initialize_config_dir

    parsed = _plain_overrides(overrides)
    if any(override.is_sweep_override() for override in parsed):
        return None
    texts = [override.input_line for override in parsed]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir.resolve())):
        try:
            compose(config_name, overrides=texts)
            return None
        except Exception:  # noqa: BLE001 - find the override that breaks it, below
            pass
        for k, text in enumerate(texts):
            try:
                compose(config_name, overrides=texts[: k + 1])
            except Exception as exc:  # noqa: BLE001 - Hydra's errors have no common base we could name
                reason = str(exc.__cause__ or exc).strip().splitlines()[0]
                return f"{text}: cannot be applied to the config ({reason})"
    return None


def run_dir_in_use(argv: Sequence[str]) -> str | None:
    """The refusal when the command names its run dir (``hydra.run.dir=<path>``, single run) and
    another process holds that run dir's lock, else None. Checked before Hydra starts, because Hydra
    writes ``.hydra/`` and ``train.log`` into the run dir before the task runs; the task itself takes
    the lock (frcnn.engine.recipes.run_recipe), so a run dir Hydra names by the time of day is covered there."""
    if any(arg in ("-m", "--multirun") for arg in argv) or _launched_as_a_further_rank():
        return None
    for arg in argv:
        if arg.startswith("hydra.run.dir=") and "${" not in arg:
            try:
                RunDirLock(arg.split("=", 1)[1].strip("'\"")).check_free()
            except RunDirLocked as exc:
                return str(exc)
    return None


# Set by Lightning's subprocess launcher (it re-runs train.py for ranks 1..N-1 with the same
# hydra.run.dir), torchrun and SLURM for every rank: a further rank never takes the run-dir lock
# (rank 0 holds it for the run, frcnn.engine.recipes.run_recipe), so it must not be refused by it either.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def _launched_as_a_further_rank() -> bool:
    """True in a DDP process other than global rank 0 (by the launchers' environment variables)."""
    for name in RANK_VARIABLES:
        try:
            if int(os.environ.get(name, "0")) > 0:
                return True
        except ValueError:
            continue
    return False


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _compose_for_key_check(overrides: Sequence[str], config_dir: Path, config_name: str):
    """(config composed with the group overrides only, keys of the plain value overrides)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    group_overrides, keys = [], []
    for text in overrides:
        override = parser.parse_override(text)
        key = override.key_or_group
        if override.is_hydra_override():
            continue
        if (config_dir / key).is_dir():  # a config group: it decides which keys exist
            if override.is_sweep_override():
                first = next(iter(override.sweep_string_iterator()))
                text = f"{override.get_key_element()}={first}"
            group_overrides.append(text)
        elif not (override.is_add() or override.is_force_add() or override.is_delete()):
            keys.append(key)
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir.resolve())):
        cfg = compose(config_name, overrides=group_overrides)
    return OmegaConf.to_container(cfg, resolve=False), keys


# ----------------------------------------------------------------------------------------------
# The Hydra task
# ----------------------------------------------------------------------------------------------
def _hydra_run() -> dict[str, Any]:
    """What the task needs from Hydra's runtime config (empty outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover
        return {}
    if not HydraConfig.initialized():
        return {}
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    return {
        "cwd": get_original_cwd(),
        "multirun": hc.mode == RunMode.MULTIRUN,
        "sweep_dir": str(hc.sweep.dir),
        "override_dirname": str(hc.job.override_dirname),
        "job_num": hc.job.get("num"),
        "launcher": str(hc.launcher.get("_target_", "")),
        "experiment": hc.runtime.choices.get("experiment"),  # the preset's name; None with ~experiment
        "data_overrides": eval_data_overrides(hc.runtime.choices.get("data"), list(hc.overrides.task)),
    }


def eval_data_overrides(data_choice: str | None, task_overrides: Sequence[str]) -> list[str]:
    """The data arguments of ``scripts/eval.py`` for the data this run trained on: its data group
    choice (``data=voc``, also when a preset chose it) and the command line's ``data.*`` overrides."""
    chosen = [f"data={data_choice}"] if data_choice else []
    return chosen + [text for text in task_overrides if text.lstrip("+").startswith("data.")]


def _num_processes(trainer_cfg: Mapping[str, Any]) -> int:
    devices = trainer_cfg["devices"]
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif devices in ("auto", -1):
        count = 1
        if trainer_cfg["accelerator"] in ("gpu", "cuda", "auto"):
            import torch

            count = max(torch.cuda.device_count(), 1)
    else:
        count = int(devices)
    return count * int(trainer_cfg["num_nodes"])


def _ranks_started_outside() -> bool:
    """True when a cluster / launcher already started every rank (SLURM tasks, torchrun)."""
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def check_ddp_in_multirun(cfg: Mapping[str, Any], run: Mapping[str, Any]) -> None:
    """Refuse a multi-process strategy inside a multirun whose ranks Lightning would start.

    Lightning's DDP launcher starts ranks 1..N-1 by re-running the script with the same
    arguments (``python train.py -m ...`` plus ``hydra.run.dir=...``). In a multirun those
    arguments hold the whole sweep, so every extra rank would start the sweep again, and
    the basic launcher runs the jobs one after another in one process that keeps its
    process group. Only ranks started by a cluster (SLURM with tasks_per_node = devices) are safe.
    """
    trainer = cfg["trainer"]
    if not run.get("multirun") or _num_processes(trainer) <= 1 or _ranks_started_outside():
        return
    raise DDPInMultirunError(
        f"trainer.strategy={trainer['strategy']} with {_num_processes(trainer)} processes cannot run inside a "
        f"multirun (-m) launched by {run.get('launcher') or 'the basic launcher'}: Lightning starts the extra "
        "ranks by re-running `python train.py <same arguments>`, which here would restart the whole sweep in "
        "every rank. Either run each sweep point as its own DDP run (e.g. `for l in 1 10 100; do python "
        "train.py trainer=ddp rpn.lambda=$l; done`), or submit the sweep to SLURM with "
        "`hydra/launcher=slurm hydra.launcher.tasks_per_node=<trainer.devices>` (SLURM then starts the ranks), "
        "or sweep with trainer.devices=1.")


def train(cfg: DictConfig | Mapping[str, Any]) -> dict:
    """Validate and run one training job; returns its metrics (as written to metrics.json)."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    validate_config(plain)
    logging.getLogger("frcnn").setLevel(logging.INFO)
    run = _hydra_run()
    if "experiment" in run:  # a Hydra job: say which preset a run on the user's own files applies
        notice = preset_notice(run["experiment"], plain)
        if notice:
            log.log(logging.INFO if run["experiment"] == OWN_DATA_PRESET else logging.WARNING, "%s", notice)
    check_backbone_weights(plain)  # imagenet without network stops here, before any data or training
    check_ddp_in_multirun(plain, run)
    if run.get("multirun") and plain["logger"]["name"] == "wandb":
        from frcnn.engine.loggers import sweep_group_name, sweep_run_name

        logger_cfg = dict(plain["logger"])
        logger_cfg["group"] = logger_cfg.get("group") or sweep_group_name(run["sweep_dir"], run["cwd"])
        logger_cfg["run_name"] = logger_cfg.get("run_name") or sweep_run_name(run["override_dirname"], run["job_num"])
        plain["logger"] = logger_cfg
    from frcnn.engine.recipes import run_recipe  # lazy: torch + Lightning only once the config is known good
    from frcnn.engine.run_report import closing_summary

    metrics = run_recipe(plain, plain["run_dir"])
    if "cwd" in run and not _launched_as_a_further_rank():  # a Hydra job's rank 0: what to do with the result
        print(closing_summary(metrics, plain["run_dir"], run.get("data_overrides", ())), flush=True)
    return metrics


def run_job(cfg: DictConfig) -> float | None:
    """The Hydra task of train.py: the job's map_50 (what an Optuna sweep maximises).

    Single run: a config error, or a bad file from outside (weights, checkpoint, data), prints one
    line naming it and exits with status 2; other errors raise.
    Multirun: a failing job writes ``<job dir>/FAILED`` and returns None, and the sweep goes on
    (the sweep summary lists it as failed); DDPInMultirunError stops the sweep at once.
    In both, a run dir held by another process (frcnn.utils.run_lock) prints one line naming the holder and
    exits with status 2, and a failed write (full disk, I/O error: frcnn.utils.atomic_io) prints one line
    naming the file and the error and exits with status 74 (EX_IOERR), without a traceback.
    """
    from frcnn.cli.console import configure_console

    configure_console()
    multirun = bool(_hydra_run().get("multirun"))
    try:
        metrics = train(cfg)
    except DDPInMultirunError as exc:
        print(f"Config error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from exc
    except RunDirLocked as exc:  # another process trains there: never write into its run dir
        print(f"Run dir locked: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(LOCKED_EXIT_STATUS) from exc
    except Exception as exc:
        if is_write_error(exc):  # a full disk fails every later job of a sweep too: stop here
            print(f"Write error: {describe_write_error(exc)}", file=sys.stderr, flush=True)
            raise SystemExit(WRITE_ERROR_EXIT_STATUS) from exc
        if not multirun:
            if isinstance(exc, ConfigError):
                print(f"Config error: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from exc
            if isinstance(exc, (FileNotFoundError, UnreadableFileError, DataError)):
                # a file from outside (weights, checkpoint, image, annotation) named in one line
                print(f"error: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            raise
        job_dir = Path(OmegaConf.select(cfg, "run_dir") or ".")
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "FAILED").write_text(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        log.error("job in %s failed: %s: %s", job_dir, type(exc).__name__, exc)
        print(f"job {job_dir} failed ({type(exc).__name__}: {exc}); the sweep goes on", file=sys.stderr, flush=True)
        _FAILED_JOBS.append(str(job_dir))
        return None
    value = metrics.get("map_50")
    return float(value) if value is not None else None


def failed_jobs() -> list[str]:
    """Job dirs that failed in this process (in-process multirun), for the exit status."""
    return list(_FAILED_JOBS)
