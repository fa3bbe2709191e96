"""The masked autoencoder: encode visible patches, decode all, score the removed ones.

State-dict names: the encoder's official names under `encoder.`, then the official decoder names
`mask_token`, `decoder_embed`, `decoder_pos_embed`, `decoder_blocks.{i}`, `decoder_norm`,
`decoder_pred` (so an official checkpoint maps by adding or removing one prefix).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from lit_mae.models.config import MAEConfig
from lit_mae.models.encoder import EncoderOutput, ViTEncoder
from lit_mae.models.layers import Block, call_block, init_weights
from lit_mae.models.ops import NORM_PIX_EPS, patch_mean_var, patchify, restore_order, unpatchify
from lit_mae.models.pos_embed import resize_pos_embed, resize_pos_embed_flat, sincos_2d


class MAEOutput(NamedTuple):
    loss: Tensor  # () mean squared error over removed patches
    pred: Tensor  # (B, L, p*p*C) predicted patches (normalised-patch space with norm_pix_loss)
    mask: Tensor  # (B, L), 1 = removed, spatial order
    ids_restore: Tensor  # (B, L)
    latent: Tensor  # (B, 1+K, D) encoder output, cls first
    hidden_states: tuple[Tensor, ...] | None  # encoder embeddings + each block, when asked for
    attentions: tuple[Tensor, ...] | None  # encoder attention maps, when asked for


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, config: MAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else MAEConfig()
        Dd = config.decoder_embed_dim
        self.encoder = ViTEncoder(config)
        self.decoder_embed = nn.Linear(config.embed_dim, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, Dd), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(Dd, config.decoder_num_heads, config.decoder_mlp_ratio, config.qkv_bias,
                  config.layer_norm_eps, 0.0, config.attn_implementation)
            for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(Dd, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(Dd, config.patch_size**2 * config.in_chans)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init (see `ViTEncoder.reset_parameters`); mask token N(0, 0.02)."""
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)
        self.encoder.reset_parameters()
        nn.init.normal_(self.mask_token, std=0.02)
        with torch.no_grad():
            self.decoder_pos_embed.copy_(sincos_2d(self.config.decoder_embed_dim, (self.config.grid_size,) * 2))

    # --- the three stages -------------------------------------------------------------------
    def forward_encoder(self, images: Tensor, mask_ratio: float | None = None, noise: Tensor | None = None,
                        generator: torch.Generator | None = None, interpolate_pos_encoding: bool = False,
                        output_hidden_states: bool = False, output_attentions: bool = False) -> EncoderOutput:
        """Mask and encode; returns `EncoderOutput(latent, mask, ids_restore, hidden_states, attentions)`."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if not 0 <= ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {ratio!r}")
        return self.encoder.forward_masked(images, ratio, noise, generator, interpolate_pos_encoding,
                                           output_hidden_states, output_attentions)

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, 1+K, D) visible latents -> (B, L, p*p*C) predictions for every patch of the grid."""
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        patches = restore_order(x[:, 1:], self.mask_token, ids_restore)  # (B, L, Dd)
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_table(grid)  # (B, 1+L, Dd)
        for block in self.decoder_blocks:
            x = call_block(block, x, checkpointed=self.activation_checkpointing)[0]
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop cls -> (B, L, p*p*C)

    def forward_loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Per-patch MSE, averaged over removed patches; targets normalised per patch if configured."""
        target = patchify(images, self.config.patch_size)  # (B, L, p*p*C)
        if self.config.norm_pix_loss:
            mean, var = patch_mean_var(target)
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: Tensor, noise: Tensor | None = None, mask_ratio: float | None = None,
                generator: torch.Generator | None = None, interpolate_pos_encoding: bool = False,
                output_hidden_states: bool = False, output_attentions: bool = False) -> MAEOutput:
        """images (B, C, H, W), already normalised. `noise` (B, L) or `generator` fix the mask."""
        grid = self.encoder.patch_grid(images, interpolate_pos_encoding)
        encoded = self.forward_encoder(images, mask_ratio, noise, generator, interpolate_pos_encoding,
                                       output_hidden_states, output_attentions)
        pred = self.forward_decoder(encoded.latent, encoded.ids_restore, grid)
        loss = self.forward_loss(images, pred, encoded.mask)
        return MAEOutput(loss, pred, encoded.mask, encoded.ids_restore, encoded.latent,
                         encoded.hidden_states, encoded.attentions)

    # --- helpers ---------------------------------------------------------------------------
    @property
    def activation_checkpointing(self) -> bool:
        """Recompute every encoder and decoder block in backward instead of keeping its activations:
        the same losses and gradients, less memory, about one more forward of the blocks per step."""
        return self.encoder.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        self.encoder.activation_checkpointing = bool(enabled)

    def decoder_pos_table(self, grid: tuple[int, int]) -> Tensor:
        """(1, 1+L, Dd) decoder table for a patch grid, resized as `config.decoder_pos_interpolation` says."""
        if self.config.decoder_pos_interpolation == "hf-1d":
            if tuple(grid) == (self.config.grid_size,) * 2:
                return self.decoder_pos_embed
            return resize_pos_embed_flat(self.decoder_pos_embed, grid[0] * grid[1])
        return resize_pos_embed(self.decoder_pos_embed, grid)

    def patchify(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, p*p*C)."""
        return patchify(images, self.config.patch_size)

    def unpatchify(self, patches: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """(B, L, p*p*C) -> (B, C, H, W); `grid` (H/p, W/p) defaults to the native square grid."""
        grid = grid if grid is not None else (self.config.grid_size,) * 2
        return unpatchify(patches, self.config.patch_size, grid, self.config.in_chans)
