"""Deterministic features from weights in any format: the encoder (or a fine-tuned classifier) on
all patches, never masked, as one module that `lit-mae embed` and `lit-mae export-encoder` share.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from lit_mae.interop.loading import load_classifier, load_encoder_weights
from lit_mae.models import MAEConfig, ViTClassifier, ViTEncoder
from lit_mae.models.encoder import PoolKind


class FeatureExtractor(nn.Module):
    """images (B, C, H, W) -> (tokens (B, 1+L, D), features (B, D)[, logits (B, K)]).

    `backbone` is a `ViTEncoder` (features: `pool` of the final-normed tokens, "cls" or "avg") or
    a `ViTClassifier` (features: its own pre-logit features, pooled as it was trained; logits when
    `head`). Which outputs there are is fixed at construction (`output_names`). `image_size` (H, W)
    other than the native square size resizes the position table (bicubic), as
    `interpolate_pos_encoding` does; inputs must then be of that size. No masking, no randomness:
    in eval mode the same images give the same outputs in any batch.
    """

    def __init__(self, backbone: ViTEncoder | ViTClassifier, pool: PoolKind = "cls", head: bool = False,
                 image_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if isinstance(backbone, ViTClassifier):
            if pool != backbone.global_pool:
                raise ValueError(f"the classifier pools {backbone.global_pool!r} (its head was trained on those "
                                 f"features), not {pool!r}: ask for {backbone.global_pool!r} pooling or leave it out")
        elif head:
            raise ValueError("a classification head was asked for, but these weights have none (an encoder's; "
                             "the head comes with fine-tuned or linear-probe weights)")
        elif pool not in ("cls", "avg"):
            raise ValueError(f"pool must be 'cls' or 'avg', got {pool!r}")
        native = (self.config_of(backbone).img_size,) * 2
        self.backbone, self.pool, self.head = backbone, pool, head
        self.image_size: tuple[int, int] = tuple(image_size) if image_size is not None else native
        height, width = self.image_size
        p = self.config.patch_size
        if height < p or width < p or height % p or width % p:
            raise ValueError(f"image size {height}x{width} must be a positive multiple of the patch size {p} "
                             "in both directions")
        self.output_names: tuple[str, ...] = ("tokens", "features", "logits") if head else ("tokens", "features")

    @staticmethod
    def config_of(backbone: ViTEncoder | ViTClassifier) -> MAEConfig:
        return backbone.encoder.config if isinstance(backbone, ViTClassifier) else backbone.config

    @property
    def config(self) -> MAEConfig:
        return self.config_of(self.backbone)

    @property
    def interpolate(self) -> bool:
        """Whether the position table is resized: the input size is not the native one."""
        return self.image_size != (self.config.img_size,) * 2

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        if isinstance(self.backbone, ViTClassifier):
            final_norm = self.backbone.global_pool == "cls"  # as ViTClassifier.forward_features
            tokens = self.backbone.encoder.forward_features(images, self.interpolate, final_norm=final_norm)
            features = self.backbone.forward_head(tokens, pre_logits=True)  # (B, D)
            return (tokens, features, self.backbone.classify(features)) if self.head else (tokens, features)
        tokens = self.backbone.forward_features(images, self.interpolate)  # (B, 1+L, D)
        return tokens, self.backbone.pool(tokens, self.pool)

    def describe(self) -> dict[str, str]:
        """What a user of an exported file needs to know, as plain strings (ONNX metadata, logs)."""
        cfg = self.config
        height, width = self.image_size
        tokens = 1 + (height // cfg.patch_size) * (width // cfg.patch_size)
        kind = f"classifier ({self.backbone.global_pool} pooling)" if isinstance(self.backbone, ViTClassifier) \
            else f"encoder ({self.pool} pooling)"
        return {
            "lit_mae.model": kind,
            "lit_mae.input": f"images float32 (batch, {cfg.in_chans}, {height}, {width}), normalised as in "
                             f"training; the batch is dynamic, the size fixed at {height}x{width}",
            "lit_mae.outputs": ", ".join(self._output_shapes(tokens)),
            "lit_mae.config": str(cfg.to_dict()),
        }

    def _output_shapes(self, tokens: int) -> list[str]:
        shapes = {"tokens": f"tokens (batch, {tokens}, {self.config.embed_dim})",
                  "features": f"features (batch, {self.config.embed_dim})"}
        if self.head:
            shapes["logits"] = f"logits (batch, {self.backbone.head.out_features})"
        return [shapes[name] for name in self.output_names]


def load_feature_extractor(source: str | Path | Mapping[str, Any], pool: PoolKind | None = None,
                           head: bool = False, image_size: int | tuple[int, int] | None = None) -> FeatureExtractor:
    """A `FeatureExtractor` in eval mode from weights in any format `load_pretrained` reads.

    Weights with a classification head (fine-tuned, linear-probe) give the classifier's own
    features (`pool` must then be its pooling, or None); others give the encoder's, pooled by
    `pool` (None: "cls"). `head=True` adds the logits. `image_size`: an int (square) or (H, W).
    """
    if pool is not None and pool not in ("cls", "avg"):
        raise ValueError(f"pool must be 'cls' or 'avg', got {pool!r}")
    if isinstance(source, (str, Path)) and not Path(source).exists():
        raise FileNotFoundError(f"{source}: no such file or directory (expected a checkpoint or weights file)")
    with warnings.catch_warnings(record=True) as caught:  # "head left out" is no news when we keep it
        warnings.simplefilter("always")
        config, state, report = load_encoder_weights(source)
    if "head.weight" in report.dropped:
        backbone: ViTEncoder | ViTClassifier = load_classifier(source)  # a second read, for classifiers only
        pool = pool or backbone.global_pool
    else:
        for warning in caught:
            warnings.warn(warning.message, warning.category, stacklevel=2)
        backbone = ViTEncoder(config)
        backbone.load_state_dict(state, strict=True)
        pool = pool or "cls"
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    return FeatureExtractor(backbone, pool, head, size).eval()


def example_input(extractor: FeatureExtractor, batch: int = 2) -> Tensor:
    """(batch, C, H, W) zeros of the size the extractor takes: an example input for tracing."""
    return torch.zeros(batch, extractor.config.in_chans, *extractor.image_size)
