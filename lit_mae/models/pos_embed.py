"""Fixed 2-D sin-cos position tables and their resizing to other patch grids.

Per patch the layout is [sin(col*w) | cos(col*w) | sin(row*w) | cos(row*w)] with
w_k = 1 / 10000^(k / (D/4)): the first half encodes the column (the official code calls it
`emb_h`; released weights depend on this order). Row 0 of a table is the all-zero cls slot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(N,) positions -> (N, dim) as [sin(pos*w) | cos(pos*w)], float64."""
    if dim % 2:
        raise ValueError(f"a 1-D sin-cos table needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (N, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> Tensor:
    """Table for a (rows, cols) patch grid -> (1, [1+] rows*cols, dim) float32, row-major patches."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos table needs a width divisible by 4, got {dim}")
    rows, cols = grid
    row_idx, col_idx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    table = torch.cat(
        [sincos_1d(dim // 2, col_idx.flatten()), sincos_1d(dim // 2, row_idx.flatten())], dim=1
    )  # (rows*cols, dim)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.to(torch.float32).unsqueeze(0)


def resize_pos_embed(table: Tensor, new_grid: tuple[int, int]) -> Tensor:
    """Resize a (1, 1+L, D) table on a square grid to another (rows, cols) grid, bicubic 2-D.

    The cls row is kept as is. Returns the table itself when the grid already matches.
    """
    cls_row, patches = table[:, :1], table[:, 1:]
    L, D = patches.shape[1], patches.shape[2]
    side = int(round(L**0.5))
    if side * side != L:
        raise ValueError(f"cannot resize a position table of {L} patches: not a square grid")
    if (side, side) == tuple(new_grid):
        return table
    grid = patches.reshape(1, side, side, D).permute(0, 3, 1, 2)  # (1, D, side, side)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)
    return torch.cat([cls_row, patches], dim=1)


def resize_pos_embed_flat(table: Tensor, num_patches: int) -> Tensor:
    """transformers' decoder quirk: resize the flattened (1, 1+L, D) table 1-D bicubic to L' patches."""
    cls_row, patches = table[:, :1], table[:, 1:]
    D = patches.shape[2]
    line = patches.reshape(1, 1, -1, D).permute(0, 3, 1, 2)  # (1, D, 1, L)
    line = F.interpolate(line, size=(1, num_patches), mode="bicubic", align_corners=False)
    return torch.cat([cls_row, line.permute(0, 2, 3, 1).reshape(1, num_patches, D)], dim=1)
