"""lit-mae's own Lightning checkpoints, read and written here only.

The layout: the systems hold their network as `.model`, so `state_dict` keys are the model's
with a `model.` prefix; `hyper_parameters` describe the architecture as a `config` dict (or, for
LitMAE, a `preset` with `overrides`) and LitMAE's `mask_ratio`.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from lit_mae.models import MAEConfig, MaskedAutoencoderViT, resolve_config

MODEL_PREFIX = "model."  # LitMAE.model, LitLinearProbe.model, LitFineTune.model


def is_lightning_checkpoint(content: Mapping[str, Any]) -> bool:
    return isinstance(content.get("state_dict"), Mapping)


def model_state(content: Mapping[str, Any]) -> dict[str, Tensor]:
    """The network's own state dict (lit-mae names) from a Lightning checkpoint."""
    return {key.removeprefix(MODEL_PREFIX): value for key, value in content["state_dict"].items()}


def config_from_hparams(hparams: Mapping[str, Any], where: str) -> MAEConfig | None:
    """The architecture in a checkpoint's hyper-parameters, None when they hold none."""
    if hparams.get("config") is None and hparams.get("preset") is None:
        return None
    try:
        arch = resolve_config(hparams.get("config"), hparams.get("preset"), hparams.get("overrides"))
        return arch.replace(mask_ratio=hparams["mask_ratio"]) if hparams.get("mask_ratio") is not None else arch
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: a Lightning checkpoint whose hyper_parameters describe no lit-mae model "
                         f"({error})") from None


def lightning_checkpoint(model: MaskedAutoencoderViT) -> dict[str, Any]:
    """A checkpoint of `model` that `LitMAE.load_from_checkpoint` (and `lightning validate
    --ckpt_path`) accepts, and that `model_state` / `config_from_hparams` read back."""
    import lightning

    return {
        "state_dict": {f"{MODEL_PREFIX}{key}": value for key, value in model.state_dict().items()},
        "hyper_parameters": {"config": model.config.to_dict()},
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
