"""lit-mae: Masked Autoencoder pretraining of Vision Transformers with PyTorch Lightning.

The model (`lit_mae.models`) is pure torch; the Lightning parts are imported on first use, so
`from lit_mae import MAEConfig, MaskedAutoencoderViT` works without Lightning installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from lit_mae.models import MAEConfig, MAEOutput, MaskedAutoencoderViT

__version__ = "0.1.0"

_LAZY = {
    "LitMAE": "lit_mae.systems",
    "LitLinearProbe": "lit_mae.systems",
    "LitFineTune": "lit_mae.systems",
    "CachedFeatures": "lit_mae.systems",
}

__all__ = ["MAEConfig", "MAEOutput", "MaskedAutoencoderViT", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_mae' has no attribute {name!r}")
