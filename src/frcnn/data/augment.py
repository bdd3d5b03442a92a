"""The ``augment`` config group: albumentations transforms named in YAML, applied to training pictures only.

``augment=paper`` (the default) adds nothing to the paper's rule (§3.3: one scale, horizontal flips,
``data.hflip_prob``); ``augment=photo`` adds colour jitter, a white-balance shift and scale jitter, ``augment=aerial``
vertical flips, 90-degree turns and colour jitter (conf/augment/). Each entry of ``data.augment.transforms`` is one albumentations
transform that Hydra instantiates from its ``_target_`` (``albumentations.<Class>``) and keyword arguments; they
run after the paper's rescale and before its horizontal flip, and the boxes (and a detector stage's precomputed
proposals) follow them through albumentations' bounding-box handling. A wrong class name, a target outside
albumentations or a bad argument is a ConfigError naming ``data.augment.transforms[i]``, raised at start-up.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A

from frcnn.errors import ConfigError

AUGMENT_KEY = "data.augment.transforms"
ALBUMENTATIONS_PREFIX = "albumentations."


def build_augmentations(specs: Sequence[Mapping[str, Any]] | None, key: str = AUGMENT_KEY) -> list[A.BasicTransform]:
    """``[{_target_: albumentations.<Class>, <arg>: <value>, ...}, ...]`` -> the instantiated transforms (module
    doc). Only albumentations' own classes: a config file must not name arbitrary code to run."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    transforms: list[A.BasicTransform] = []
    for i, spec in enumerate(specs or ()):
        where = f"{key}[{i}]"
        if not isinstance(spec, Mapping) or "_target_" not in spec:
            raise ConfigError(f"{where}: expected a mapping with _target_: albumentations.<Class> and its "
                              f"arguments, got {spec!r}")
        target = str(spec["_target_"])
        class_name = target[len(ALBUMENTATIONS_PREFIX):] if target.startswith(ALBUMENTATIONS_PREFIX) else ""
        if not class_name or not isinstance(getattr(A, class_name, None), type):
            near = difflib.get_close_matches(class_name or target.rsplit(".", 1)[-1], _albumentations_classes(), n=1)
            raise ConfigError(f"{where}._target_={target!r}: not an albumentations transform (albumentations.<Class>)"
                              + (f"; did you mean albumentations.{near[0]}?" if near else ""))
        try:
            with warnings.catch_warnings(record=True) as caught:  # albumentations only warns of unknown arguments
                warnings.simplefilter("always")
                transform = instantiate(dict(spec), _convert_="all")
        except InstantiationException as err:
            raise ConfigError(f"{where}: {target} rejected its arguments: {err.__cause__ or err}") from err
        unknown = [str(w.message) for w in caught if "are not valid" in str(w.message)]
        if unknown:
            raise ConfigError(f"{where}: {target}: {unknown[0]}")
        if not isinstance(transform, A.BasicTransform):
            raise ConfigError(f"{where}._target_={target!r} is not an albumentations transform (BasicTransform)")
        transforms.append(transform)
    return transforms


def _albumentations_classes() -> list[str]:
    return [name for name in dir(A) if isinstance(getattr(A, name), type) and issubclass(getattr(A, name),
                                                                                        A.BasicTransform)]
