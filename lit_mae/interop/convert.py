"""Any MAE weights to any other format (`lit-mae convert SRC DST --to {lightning,hf,official,timm}`).

SRC is anything `load_pretrained` reads (a lit-mae Lightning checkpoint, an official `.pth`, a
Hugging Face directory or file, a timm state dict). DST is a directory for `hf`, a file otherwise
(`.safetensors` for timm when the name says so, else a torch file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lit_mae.interop.checkpoint import lightning_checkpoint
from lit_mae.interop.files import save_safetensors
from lit_mae.interop.model_card import training_record

Target = Literal["lightning", "hf", "official", "timm"]
TARGETS: tuple[str, ...] = ("lightning", "hf", "official", "timm")


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        save_safetensors(tensors, path)
    else:
        torch.save(tensors, path)


def convert(source: str | Path, destination: str | Path, to: Target, **load_options: Any) -> Path:
    """Read `source` with `load_pretrained(source, **load_options)` and write it as `to`."""
    from lit_mae.interop import export_hf, export_official, export_timm, load_pretrained

    if to not in TARGETS:
        raise ValueError(f"--to must be one of {list(TARGETS)}, got {to!r}")
    destination = Path(destination)
    model = load_pretrained(source, **load_options)
    if to == "hf":
        return export_hf(model, destination, checkpoint=training_record(source))
    destination.parent.mkdir(parents=True, exist_ok=True)
    if to == "official":
        export_official(model, destination)
    elif to == "timm":
        _save_tensors(export_timm(model), destination)
    else:
        torch.save(lightning_checkpoint(model), destination)
    return destination
