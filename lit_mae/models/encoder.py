"""The ViT encoder shared by pretraining (on visible patches), probing and fine-tuning (on all).

State-dict names are the official / timm ones: `cls_token`, `pos_embed`, `patch_embed.proj.*`,
`blocks.{i}.*`, `norm.*`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from lit_mae.models.config import MAEConfig
from lit_mae.models.layers import Block, PatchEmbed, call_block, init_weights
from lit_mae.models.ops import random_masking
from lit_mae.models.pos_embed import resize_pos_embed, sincos_2d

PoolKind = Literal["cls", "avg"]


class EncoderOutput(NamedTuple):
    latent: Tensor  # (B, 1+K, D) after the final norm, cls first
    mask: Tensor  # (B, L), 1 = removed
    ids_restore: Tensor  # (B, L)
    hidden_states: tuple[Tensor, ...] | None  # embeddings, then each block (before the final norm)
    attentions: tuple[Tensor, ...] | None  # (B, heads, 1+K, 1+K) per block


class ViTEncoder(nn.Module):
    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        D = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        # fixed sin-cos table (1, 1+L, D), a frozen parameter so that it is in the state dict
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, D), requires_grad=False)
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(D, config.num_heads, config.mlp_ratio, config.qkv_bias, config.layer_norm_eps,
                  rate, config.attn_implementation)
            for rate in rates
        )
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        # a run-time switch, not architecture: recompute each block in backward instead of keeping
        # its activations (see `call_block`); set through `MaskedAutoencoderViT.activation_checkpointing`
        self.activation_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: patch conv weight xavier-uniform on its (D, C*p*p) view (its bias keeps
        PyTorch's default, as in the official code), cls token N(0, 0.02)."""
        self.apply(init_weights)
        self.patch_embed.proj.reset_parameters()
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.config.embed_dim, (self.config.grid_size,) * 2))

    def patch_grid(self, images: Tensor, interpolate_pos_encoding: bool = False) -> tuple[int, int]:
        """Check a (B, C, H, W) batch against the config and return its patch grid (H/p, W/p)."""
        cfg = self.config
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(
                f"expected floating-point images (converted and normalised), got dtype {images.dtype}"
            )
        _, C, H, W = images.shape
        if C != cfg.in_chans:
            raise ValueError(f"images have {C} channels but the model was built for in_chans={cfg.in_chans}; "
                             "make the data's channels and the config's in_chans agree")
        if not interpolate_pos_encoding and (H, W) != (cfg.img_size, cfg.img_size):
            raise ValueError(
                f"image size {H}x{W} does not match the model's img_size={cfg.img_size}; give it "
                f"{cfg.img_size}x{cfg.img_size} images (a DataModule's image_size) or, calling the model "
                "yourself, pass interpolate_pos_encoding=True"
            )
        p = cfg.patch_size
        if H < p or W < p or H % p or W % p:
            raise ValueError(f"image size {H}x{W} must be a positive multiple of patch_size={p}")
        return H // p, W // p

    def pos_table(self, grid: tuple[int, int]) -> Tensor:
        """(1, 1+L, D) position table for a patch grid (resized when it is not the native one)."""
        return resize_pos_embed(self.pos_embed, grid)

    def embed(self, images: Tensor, interpolate_pos_encoding: bool = False) -> tuple[Tensor, Tensor]:
        """Patch tokens with positions (B, L, D) and the cls token with its position (1, 1, D)."""
        pos = self.pos_table(self.patch_grid(images, interpolate_pos_encoding))
        tokens = self.patch_embed(images) + pos[:, 1:]  # (B, L, D)
        return tokens, self.cls_token + pos[:, :1]

    def run_blocks(
        self, x: Tensor, output_hidden_states: bool = False, output_attentions: bool = False,
        final_norm: bool = True,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
        """(B, N, D) through every block (and the final norm); optionally the per-block records."""
        hidden: list[Tensor] = [x]
        attentions: list[Tensor] = []
        for block in self.blocks:
            x, weights = call_block(block, x, output_attentions, self.activation_checkpointing)
            hidden.append(x)
            if weights is not None:
                attentions.append(weights)
        return (
            self.norm(x) if final_norm else x,
            tuple(hidden) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )

    def forward_features(
        self, images: Tensor, interpolate_pos_encoding: bool = False, final_norm: bool = True
    ) -> Tensor:
        """All patches, no masking: (B, C, H, W) -> (B, 1+L, D), cls first; after the final norm
        unless `final_norm=False` (fine-tuning's average pooling uses its own `fc_norm` instead)."""
        tokens, cls = self.embed(images, interpolate_pos_encoding)
        x = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # (B, 1+L, D)
        return self.run_blocks(x, final_norm=final_norm)[0]

    def forward_masked(
        self,
        images: Tensor,
        mask_ratio: float,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """Encode only a random visible subset of K patches (the MAE encoder)."""
        tokens, cls = self.embed(images, interpolate_pos_encoding)
        kept, mask, ids_restore = random_masking(tokens, mask_ratio, noise, generator)  # (B, K, D)
        x = torch.cat([cls.expand(kept.shape[0], -1, -1), kept], dim=1)  # (B, 1+K, D)
        latent, hidden, attentions = self.run_blocks(x, output_hidden_states, output_attentions)
        return EncoderOutput(latent, mask, ids_restore, hidden, attentions)

    def forward(self, images: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        return self.forward_features(images, interpolate_pos_encoding)

    @staticmethod
    def pool(tokens: Tensor, kind: PoolKind = "cls") -> Tensor:
        """(B, 1+L, D) -> (B, D): the cls token, or the mean of the patch tokens."""
        if kind == "cls":
            return tokens[:, 0]
        if kind == "avg":
            return tokens[:, 1:].mean(dim=1)
        raise ValueError(f"pool kind must be 'cls' or 'avg', got {kind!r}")
