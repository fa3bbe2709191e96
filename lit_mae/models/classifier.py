"""The MAE encoder with a classification head: the model of linear probing and fine-tuning.

Pooling follows the official evaluation code: "cls" takes the cls token after the encoder's final
norm; "avg" averages the patch tokens before it and applies a fresh `fc_norm` (the pretrained final
norm is then unused). State-dict names are timm's: `encoder.*` holds the ViT names, then `fc_norm`
and `head`.
"""

from __future__ import annotations

from torch import Tensor, nn

from lit_mae.models.config import MAEConfig
from lit_mae.models.encoder import PoolKind, ViTEncoder


class ViTClassifier(nn.Module):
    """encoder -> pool -> [fc_norm] -> [BatchNorm1d(affine=False)] -> Linear head, in timm's
    vocabulary: `forward_features` gives tokens, `forward_head(tokens, pre_logits=...)` pools them
    and applies the head.

    Args:
        config: the encoder architecture (the decoder fields are unused).
        num_classes: outputs of the head.
        pool: "cls" or "avg" (see the module docstring); kept as `global_pool`, timm's name.
        head_batchnorm: the linear probe's BatchNorm1d(D, affine=False, eps=1e-6) before the head.
        head_init_std: trunc-normal std of the head weight (probe 0.01, fine-tune 2e-5), cut at
            +-2 absolute as in the official code; bias 0.
    """

    def __init__(self, config: MAEConfig, num_classes: int, pool: PoolKind = "cls",
                 head_batchnorm: bool = False, head_init_std: float = 0.01) -> None:
        super().__init__()
        if pool not in ("cls", "avg"):
            raise ValueError(f"pool must be 'cls' or 'avg', got {pool!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        D = config.embed_dim
        self.global_pool = pool
        self.encoder = ViTEncoder(config)
        self.fc_norm = nn.LayerNorm(D, eps=config.layer_norm_eps) if pool == "avg" else nn.Identity()
        self.head_norm = nn.BatchNorm1d(D, affine=False, eps=1e-6) if head_batchnorm else nn.Identity()
        self.head = nn.Linear(D, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, images: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        """(B, C, H, W) -> (B, 1+L, D) tokens, cls first; after the encoder's final norm for "cls"
        pooling, before it for "avg" (whose `fc_norm` comes after pooling instead)."""
        final_norm = self.global_pool == "cls"
        return self.encoder.forward_features(images, interpolate_pos_encoding, final_norm=final_norm)

    def forward_head(self, tokens: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, 1+L, D) tokens -> (B, num_classes) logits, or with `pre_logits` the (B, D) pooled
        features the head takes (after `fc_norm`)."""
        features = self.fc_norm(self.encoder.pool(tokens, self.global_pool))  # (B, D)
        return features if pre_logits else self.classify(features)

    def classify(self, features: Tensor) -> Tensor:
        """(B, D) pre-logit features (`forward_head(..., pre_logits=True)`) -> (B, num_classes)."""
        return self.head(self.head_norm(features))

    def forward(self, images: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        return self.forward_head(self.forward_features(images, interpolate_pos_encoding))
