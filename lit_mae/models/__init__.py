"""The model in pure torch: config and presets, ViT parts, masking ops, encoder and MAE."""

from lit_mae.models.config import MAEConfig
from lit_mae.models.classifier import ViTClassifier
from lit_mae.models.encoder import EncoderOutput, ViTEncoder
from lit_mae.models.mae import MAEOutput, MaskedAutoencoderViT
from lit_mae.models.ops import patchify, random_masking, unpatchify
from lit_mae.models.presets import (
    PRESETS,
    mae_vit_base,
    mae_vit_huge,
    mae_vit_large,
    mae_vit_small,
    mae_vit_tiny,
    preset_config,
    resolve_config,
)

__all__ = [
    "MAEConfig", "MAEOutput", "MaskedAutoencoderViT", "ViTEncoder", "EncoderOutput", "ViTClassifier",
    "patchify", "unpatchify", "random_masking", "PRESETS", "preset_config", "resolve_config",
    "mae_vit_tiny", "mae_vit_small", "mae_vit_base", "mae_vit_large", "mae_vit_huge",
]
