"""The architecture of a masked autoencoder, as one frozen, validated dataclass.

Field names follow the official MAE constructor (`img_size`, `embed_dim`, ...), so a reader of
the paper's code finds the same words here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from lit_mae.models.ops import num_kept

AttnImplementation = Literal["sdpa", "eager"]
DecoderPosInterpolation = Literal["2d", "hf-1d"]


def weights(default: Any) -> Any:
    """A field that changes the weights' shapes or meaning: a checkpoint only loads into a model
    with the same value (the others, such as `mask_ratio`, may change on a resume)."""
    return dataclasses.field(default=default, metadata={"weights": True})


@dataclass(frozen=True)
class MAEConfig:
    """Architecture of `MaskedAutoencoderViT`. Defaults are the official class defaults (ViT-L/16).
    Fields made with `weights(...)` fix the weights (`MAEConfig.weight_fields()`)."""

    img_size: int = weights(224)  # native square input size in pixels; other sizes need interpolation
    patch_size: int = weights(16)  # side of a square patch; img_size must be a multiple of it
    in_chans: int = weights(3)  # any channel count (the official code hard-codes 3 in patchify)
    embed_dim: int = weights(1024)  # encoder width D; divisible by num_heads and by 4 (sin-cos table)
    depth: int = weights(24)  # encoder blocks
    num_heads: int = weights(16)
    mlp_ratio: float = weights(4.0)  # encoder MLP hidden width = round(D * mlp_ratio)
    decoder_embed_dim: int = weights(512)  # decoder width Dd; the paper's light decoder is 512 wide
    decoder_depth: int = weights(8)
    decoder_num_heads: int = weights(16)
    decoder_mlp_ratio: float = weights(4.0)
    mask_ratio: float = 0.75  # fraction of patches removed, in [0, 1), keeping at least one visible
    norm_pix_loss: bool = False  # per-patch normalised pixel targets (the paper's best setting)
    layer_norm_eps: float = 1e-6  # official 1e-6; Hugging Face checkpoints use 1e-12
    qkv_bias: bool = weights(True)
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over encoder blocks
    attn_implementation: AttnImplementation = "sdpa"  # "eager" is used anyway when maps are asked for
    # How the decoder table follows another input size: "2d" resizes the patch grid bicubically like
    # the encoder table; "hf-1d" reproduces transformers' 1-D resize of the flattened table.
    decoder_pos_interpolation: DecoderPosInterpolation = "2d"

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                     "decoder_embed_dim", "decoder_num_heads"):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("decoder_depth", self.decoder_depth, minimum=0)
        for name in ("mlp_ratio", "decoder_mlp_ratio", "layer_norm_eps"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"MAEConfig.{name} must be a finite positive number, got {value!r}")
        for ratio, width in (("mlp_ratio", "embed_dim"), ("decoder_mlp_ratio", "decoder_embed_dim")):
            hidden = round(getattr(self, width) * getattr(self, ratio))
            if hidden < 1:
                raise ValueError(f"MAEConfig.{ratio}={getattr(self, ratio)!r} gives an MLP hidden width of "
                                 f"round({width} x {ratio}) = {hidden}; it must be at least 1")
        if self.img_size < self.patch_size:
            raise ValueError(
                f"MAEConfig.img_size={self.img_size} is smaller than one patch (patch_size={self.patch_size})"
            )
        if self.img_size % self.patch_size:
            raise ValueError(
                f"MAEConfig.img_size={self.img_size} is not divisible by patch_size={self.patch_size}"
            )
        for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"MAEConfig.{width}={getattr(self, width)} is not divisible by "
                    f"{heads}={getattr(self, heads)}"
                )
            if getattr(self, width) % 4:
                raise ValueError(
                    f"MAEConfig.{width}={getattr(self, width)} is not divisible by 4, "
                    "which the 2-D sin-cos position table needs"
                )
        if not _is_number(self.mask_ratio) or not 0 <= self.mask_ratio < 1:
            raise ValueError(f"MAEConfig.mask_ratio must be in [0, 1), got {self.mask_ratio!r}")
        kept = num_kept(self.num_patches, self.mask_ratio)  # K, as the masking computes it
        if kept < 1:  # 0 (no masking) stays allowed: encoding all patches, as for features
            raise ValueError(
                f"MAEConfig.mask_ratio={self.mask_ratio!r} keeps int({self.num_patches} x (1 - {self.mask_ratio!r})) "
                f"= 0 of the {self.num_patches} patches visible ({self.img_size}x{self.img_size} images in "
                f"{self.patch_size}-pixel patches): the encoder would see none; lower the ratio"
            )
        if not _is_number(self.drop_path_rate) or not 0 <= self.drop_path_rate < 1:
            raise ValueError(
                f"MAEConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}"
            )
        for name, allowed in (("attn_implementation", ("sdpa", "eager")),
                              ("decoder_pos_interpolation", ("2d", "hf-1d"))):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"MAEConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        for name in ("norm_pix_loss", "qkv_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MAEConfig.{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def grid_size(self) -> int:
        """Patches per side at the native size."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """L at the native size."""
        return self.grid_size**2

    @classmethod
    def weight_fields(cls) -> tuple[str, ...]:
        """The fields a checkpoint's weights depend on (shapes, or the meaning of `num_heads`)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("weights"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MAEConfig:
        """Build from a mapping, naming unknown keys and listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown MAEConfig field(s) {unknown}; valid fields are {valid}")
        return cls(**values)

    def replace(self, **overrides: Any) -> MAEConfig:
        """A copy with some fields changed, validated like a new config."""
        return MAEConfig.from_dict({**self.to_dict(), **overrides})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"MAEConfig.{name} must be {kind}, got {value!r}")
