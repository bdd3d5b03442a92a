"""The start-up line that says which experiment preset a run on the user's own files applies.

``python train.py data=voc data.root=...`` keeps the default preset, ``experiment=cpu_shapes``, made for
the built-in shapes data; nothing else would tell the user so. :func:`preset_notice` is that line: the
preset in force, what it was made for, and how to choose another. Data the package generates
(``shapes``, ``voclike``, ...) gets no line: the presets made for it are the ones in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# read from files the user points at; the others are generated
OWN_DATA_DATASETS = ("voc", "voc0712", "coco", "yolo", "labelme")
OWN_DATA_PRESET = "cpu_own_data"
PRESET_PURPOSES = {  # presets outside paper/: what each was made for
    "cpu_shapes": "the built-in 256-px shapes data: the small net pre-trained on generated shapes, anchors "
                  "32/64/128 px, a 4 px minimum proposal size, 800 steps of 4 images",
    OWN_DATA_PRESET: "own data on a CPU: EfficientNet-Lite0 with ImageNet weights (pip), anchors and minimum "
                     "proposal size fitted to the training boxes, a schedule in epochs",
}


def preset_purpose(experiment: str | None, cfg: Mapping[str, Any]) -> str:
    """What the preset ``experiment`` (Hydra's choice; None: no preset) was made for, in a few words."""
    if not experiment:
        return "no preset: the config groups' paper values"
    if experiment in PRESET_PURPOSES:
        return PRESET_PURPOSES[experiment]
    result, table = cfg.get("paper_result"), cfg.get("paper_table")
    if isinstance(result, Mapping):
        where = f"{result.get('table')}, " if result.get("table") else ""
        return f"the paper's {where}{result.get('method')}: {result.get('train')} -> {result.get('test')}"
    if isinstance(table, Mapping):
        return f"the paper's {table.get('name')}: {table.get('title')}"
    return f"see conf/experiment/{experiment}.yaml"


def preset_notice(experiment: str | None, cfg: Mapping[str, Any]) -> str | None:
    """One line for a run on the user's files (``data.name`` in OWN_DATA_DATASETS): the preset in force,
    what it was made for, the other choices. None for data the package generates."""
    data_name = cfg["data"]["name"]
    if data_name not in OWN_DATA_DATASETS:
        return None
    applies = f"experiment={experiment}" if experiment else "~experiment"
    others = [f"experiment={OWN_DATA_PRESET} (own data on a CPU)" if experiment != OWN_DATA_PRESET else None,
              "experiment=paper/<name> (the paper's setups on a GPU)",
              "~experiment (the paper's values)" if experiment else None]
    choices = ", ".join(choice for choice in others if choice)
    return (f"data={data_name} with {applies}, made for {preset_purpose(experiment, cfg)}; "
            f"other presets: {choices} (README: Train on your own data)")
