"""lit-mae's own Lightning checkpoints, read and written here only.

The layout: the systems hold their network as `.model`, so `state_dict` keys are the model's
with a `model.` prefix; `hyper_parameters` describe the architecture as a `config` dict (or, for
LitMAE, a `preset` with `overrides`) and LitMAE's `mask_ratio`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from lit_mae.interop.files import read_state_dict
from lit_mae.models import MAEConfig, MaskedAutoencoderViT, resolve_config

MODEL_PREFIX = "model."  # LitMAE.model, LitLinearProbe.model, LitFineTune.model
# written by every LitSystem beside Lightning's keys:
DATA_STATE = "lit_mae_data"  # {"mean", "std"} the training data was normalised with, when declared
METRICS_STATE = "lit_mae_metrics"  # {name: float} the latest logged metrics (losses, probe, kNN)


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


def data_statistics(content: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) a lit-mae checkpoint's training data was normalised with; None when unknown."""
    data = content.get(DATA_STATE)
    if not isinstance(data, Mapping) or not data.get("mean") or not data.get("std"):
        return None
    return tuple(map(float, data["mean"])), tuple(map(float, data["std"]))


def logged_metrics(content: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a lit-mae checkpoint recorded when it was saved ({} for other files)."""
    metrics = content.get(METRICS_STATE)
    return {str(k): float(v) for k, v in metrics.items()} if isinstance(metrics, Mapping) else {}


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


def read_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict in a Lightning checkpoint file, or a ValueError / FileNotFoundError naming the file
    and what is wrong (missing, empty, truncated, not a torch file, or weights without the
    Lightning training state, such as an official `.pth` or a Hugging Face file)."""
    content = read_state_dict(path)
    missing = [key for key in ("state_dict", "pytorch-lightning_version") if key not in content]
    if missing or not is_lightning_checkpoint(content):
        raise ValueError(f"{path}: not a Lightning checkpoint (it has no {' or '.join(map(repr, missing))}: plain "
                         "weights, such as an official .pth, timm or Hugging Face file); to start a run from "
                         "weights give them as the model's `pretrained`, not as ckpt_path")
    return content


def weight_conflicts(written: MAEConfig, ours: MAEConfig) -> list[str]:
    """The fields that fix the weights (`MAEConfig.weight_fields`) and differ between two architectures."""
    return [name for name in MAEConfig.weight_fields() if getattr(written, name) != getattr(ours, name)]


def describe_conflicts(fields: list[str], written: MAEConfig, ours: MAEConfig) -> str:
    """'written with embed_dim=32, depth=1; this model has embed_dim=192, depth=6'."""
    def values(config: MAEConfig) -> str:
        return ", ".join(f"{name}={getattr(config, name)!r}" for name in fields)

    return f"written with {values(written)}; this model has {values(ours)}"
