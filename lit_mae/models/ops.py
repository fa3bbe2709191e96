"""Pure tensor helpers: patchify / unpatchify and per-sample random masking.

Vocabulary: B batch, C channels, H W pixels, p patch size, L patches, K kept patches.
"""

from __future__ import annotations

import torch
from torch import Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches row-major, each flattened as (row, col, channel)."""
    B, C, H, W = images.shape
    p = patch_size
    h, w = H // p, W // p
    x = images.reshape(B, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (B, h, w, p, p, C)
    return x.reshape(B, h * w, p * p * C)


NORM_PIX_EPS = 1e-6  # norm_pix_loss: added to each patch's variance before the square root


def patch_mean_var(patches: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L, p*p*C) -> each patch's mean and UNBIASED variance (as the official code), (B, L, 1) each."""
    return patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """(B, L, p*p*C) -> (B, C, H, W) for a patch grid (h, w) with L = h*w; inverse of `patchify`."""
    B, L, _ = patches.shape
    p, (h, w) = patch_size, grid
    if h * w != L:
        raise ValueError(f"a {h}x{w} patch grid has {h * w} patches, but the input has {L}")
    x = patches.reshape(B, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h, p, w, p)
    return x.reshape(B, channels, h * p, w * p)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """K = int(L * (1 - mask_ratio)), the official rounding."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(
    tokens: Tensor, mask_ratio: float, noise: Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random subset of K tokens per sample.

    tokens: (B, L, D). noise: (B, L), only its per-row order matters (small = keep); drawn uniformly
    from `generator` (or the global RNG) when not given.
    Returns kept (B, K, D) in shuffled order, mask (B, L) with 1 = removed in spatial order, and
    ids_restore (B, L), the permutation that undoes the shuffle.
    """
    B, L, D = tokens.shape
    if noise is None:
        device = generator.device if generator is not None else tokens.device
        noise = torch.rand(B, L, generator=generator, device=device)
    elif noise.shape != (B, L):
        raise ValueError(f"noise must have shape (B, L) = {(B, L)}, got {tuple(noise.shape)}")
    noise = noise.to(tokens.device)
    K = num_kept(L, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, L) ascending: the first K are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
    ids_keep = ids_shuffle[:, :K]  # (B, K)
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(B, K, D))  # (B, K, D)
    mask = torch.ones(B, L, device=tokens.device, dtype=tokens.dtype)
    mask[:, :K] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (B, L) back in spatial order
    return kept, mask, ids_restore


def restore_order(visible: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    """Append mask tokens for removed slots and unshuffle to spatial order.

    visible: (B, K, Dd); mask_token: (1, 1, Dd); ids_restore: (B, L) -> (B, L, Dd).
    """
    B, K, Dd = visible.shape
    L = ids_restore.shape[1]
    x = torch.cat([visible, mask_token.expand(B, L - K, Dd).to(visible.dtype)], dim=1)  # (B, L, Dd)
    return torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(B, L, Dd))
