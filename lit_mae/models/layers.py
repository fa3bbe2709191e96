"""The four ViT building blocks, with the official MAE / timm parameter names.

PatchEmbed (`proj`), Attention (fused `qkv`, `proj`), Mlp (`fc1`, `fc2`) and the pre-norm Block
(`norm1`, `attn`, `norm2`, `mlp`), so released checkpoints load with strict=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D-wide tokens: (B, C, H, W) -> (B, L, D), row-major."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, L, D)


class Attention(nn.Module):
    """Multi-head self-attention with q, k, v stacked in one `qkv` Linear (3D, D)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, implementation: str = "sdpa") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.implementation = implementation
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, N, D) -> (B, N, D), and the (B, heads, N, N) attention map when asked for."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        weights = None
        if need_weights or self.implementation == "eager":
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, N, N)
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, N, D)  # (B, N, heads*head_dim)
        return self.proj(out), weights if need_weights else None


class Mlp(nn.Module):
    """Linear -> exact (erf) GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = True,
                 eps: float = 1e-6, drop_path: float = 0.0, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_implementation)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, round(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, N, D) -> (B, N, D) and the attention map when asked for."""
        attended, weights = self.attn(self.norm1(x), need_weights)
        x = x + self.drop_path(attended)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


def call_block(block: nn.Module, x: Tensor, need_weights: bool = False, checkpointed: bool = False
               ) -> tuple[Tensor, Tensor | None]:
    """`block(x, need_weights)`; with `checkpointed` (and gradients on), the block's activations are
    not kept for backward but recomputed there (torch.utils.checkpoint, non-reentrant; the RNG state
    is replayed, so drop path draws the same). Less memory for about one more forward of the block."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, x, need_weights, use_reentrant=False)
    return block(x, need_weights)


def init_weights(module: nn.Module) -> None:
    """The official MAE init for one module: Linear xavier-uniform with zero bias, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
