"""Read weights from disk safely and load them into a `MaskedAutoencoderViT`, strictly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from lit_mae.interop.hf import config_from_hf, hf_to_lit, is_hf_state_dict
from lit_mae.models import MAEConfig, MaskedAutoencoderViT

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors from a `.safetensors` file or a torch file loaded with `weights_only=True`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types; the message is what matters
        raise ValueError(
            f"{path}: cannot be read as a weights-only torch file ({type(error).__name__}: {error})"
        ) from error


def _find_hf_files(path: Path) -> tuple[Path, Path | None]:
    """(weights file, config.json or None) for a HF directory or a weights file inside one."""
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                config = path / "config.json"
                return path / name, config if config.is_file() else None
        raise FileNotFoundError(f"{path}: directory holds none of {list(_WEIGHT_FILES)}")
    config = path.parent / "config.json"
    return path, config if config.is_file() else None


def load_pretrained(
    source: str | Path | Mapping[str, Tensor], config: MAEConfig | None = None, **overrides: Any
) -> MaskedAutoencoderViT:
    """Build a `MaskedAutoencoderViT` from pretrained weights.

    `source`: a Hugging Face ViTMAE directory (`config.json` + `model.safetensors` or
    `pytorch_model.bin`), a weights file, or a state dict (HF names, official names, or lit-mae's).
    The architecture comes from `config`, else from the directory's `config.json`; `overrides`
    change fields of it (e.g. `attn_implementation="eager"`). Missing, unexpected and
    shape-mismatched keys raise one error naming them.
    """
    hf_config: dict[str, Any] | None = None
    where = "state dict"
    if isinstance(source, (str, Path)):
        weights, config_file = _find_hf_files(Path(source))
        where = str(weights)
        if config_file is not None:
            hf_config = json.loads(config_file.read_text())
        state_dict: Mapping[str, Tensor] = read_state_dict(weights)
    else:
        state_dict = source
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]  # official {"model": ...} files
    if config is None:
        if hf_config is None:
            raise ValueError(f"{where}: no config.json beside the weights; pass config=MAEConfig(...)")
        config = config_from_hf(hf_config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    model = MaskedAutoencoderViT(config)
    load_strict(model, to_lit_names(state_dict), where)
    return model


def to_lit_names(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename HF or official keys to lit-mae's; lit-mae keys pass through."""
    if is_hf_state_dict(state_dict):
        return hf_to_lit(state_dict)
    if any(k.startswith("encoder.") for k in state_dict):
        return dict(state_dict)
    decoder_names = ("mask_token", "decoder_")
    return {k if k.startswith(decoder_names) else f"encoder.{k}": v for k, v in state_dict.items()}


def load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], where: str) -> None:
    """`load_state_dict(strict=True)` with one readable error for every problem at once."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape
    ]
    problems = [f"{label} keys: {names}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)) if names]
    if problems:
        raise ValueError(f"{where} does not fit the model:\n  " + "\n  ".join(problems))
    module.load_state_dict(state_dict, strict=True)
