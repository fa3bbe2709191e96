"""Sin-cos position tables and their resizing, against transformers' ViTMAE as the outside reference."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTMAEConfig
from transformers.models.vit_mae import modeling_vit_mae
from transformers.models.vit_mae.modeling_vit_mae import ViTMAEDecoder, ViTMAEEmbeddings

from lit_mae.models.pos_embed import resize_pos_embed, resize_pos_embed_flat, sincos_1d, sincos_2d


def transformers_table(dim: int, side: int) -> torch.Tensor:
    """transformers' fresh-init table for a side x side grid in the official layout, (1, 1+side^2, dim).

    4.x copies the official numpy code (`get_2d_sincos_pos_embed`). 5.x builds it in torch with the
    halves the other way round, [sin(row) | cos(row) | sin(col) | cos(col)] (checked on 5.17): its
    halves are swapped back here. Released checkpoints carry their tables, so loading is unaffected.
    """
    if hasattr(modeling_vit_mae, "get_2d_sincos_pos_embed"):  # transformers 4.x
        return torch.from_numpy(modeling_vit_mae.get_2d_sincos_pos_embed(dim, side, add_cls_token=True)).float()[None]
    table = modeling_vit_mae.build_2d_sinusoidal_position_embedding(side, side, dim, cls_token=True).float()
    return torch.cat([table[:, dim // 2:], table[:, :dim // 2]], dim=1)[None]


@pytest.mark.parametrize("dim", [4, 16, 32, 768])
@pytest.mark.parametrize("side", [1, 4, 7, 14])
def test_sincos_2d_matches_transformers(dim, side):
    expected = transformers_table(dim, side)
    table = sincos_2d(dim, (side, side))
    assert table.dtype == torch.float32
    assert table.shape == (1, 1 + side * side, dim)
    assert torch.equal(table, expected)


def test_cls_row_is_zero_and_optional():
    table = sincos_2d(16, (3, 5))
    assert not table[0, 0].any()
    assert torch.equal(sincos_2d(16, (3, 5), cls_token=False), table[:, 1:])


def test_first_half_encodes_the_column():
    """Layout [sin(col w) | cos(col w) | sin(row w) | cos(row w)]: along a row only the first half changes."""
    dim, rows, cols = 16, 3, 5
    patches = sincos_2d(dim, (rows, cols), cls_token=False)[0].view(rows, cols, dim)
    assert torch.equal(patches[:, :, : dim // 2], patches[:1, :, : dim // 2].expand(rows, cols, dim // 2))
    assert torch.equal(patches[:, :, dim // 2 :], patches[:, :1, dim // 2 :].expand(rows, cols, dim // 2))
    assert torch.allclose(patches[0, 2, : dim // 2].double(), sincos_1d(dim // 2, torch.tensor([2]))[0])


def test_non_square_grid_agrees_with_square_table_at_same_positions():
    dim = 32
    rect = sincos_2d(dim, (3, 6), cls_token=False)[0].view(3, 6, dim)
    square = sincos_2d(dim, (6, 6), cls_token=False)[0].view(6, 6, dim)
    assert torch.equal(rect, square[:3])


@pytest.mark.parametrize("dim", [6, 18])
def test_sincos_2d_rejects_width_not_divisible_by_4(dim):
    with pytest.raises(ValueError, match=str(dim)):
        sincos_2d(dim, (2, 2))


def _embeddings(dim: int, side: int, patch: int = 4) -> ViTMAEEmbeddings:
    config = ViTMAEConfig(hidden_size=dim, image_size=side * patch, patch_size=patch, num_channels=3)
    module = ViTMAEEmbeddings(config)
    with torch.no_grad():  # a random table, so that interpolation errors cannot hide in smooth sin-cos
        module.position_embeddings.copy_(torch.randn_like(module.position_embeddings))
    return module


def test_resize_pos_embed_native_grid_is_identity():
    table = torch.randn(1, 1 + 16, 8)
    assert torch.equal(resize_pos_embed(table, (4, 4)), table)


@pytest.mark.parametrize("dim", [8, 32])
@pytest.mark.parametrize("new_grid", [(6, 6), (2, 2), (3, 5), (8, 4), (4, 7)])
def test_resize_pos_embed_matches_transformers(dim, new_grid):
    side, patch = 4, 4
    module = _embeddings(dim, side, patch)
    rows, cols = new_grid
    probe = torch.zeros(1, 1 + rows * cols, dim)  # only its length is read
    expected = module.interpolate_pos_encoding(probe, rows * patch, cols * patch)
    resized = resize_pos_embed(module.position_embeddings.data, new_grid)
    assert resized.shape == (1, 1 + rows * cols, dim)
    assert torch.equal(resized[:, :1], module.position_embeddings.data[:, :1])  # cls row kept
    assert torch.equal(resized, expected)


def test_resize_pos_embed_rejects_non_square_source():
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(torch.randn(1, 1 + 12, 8), (4, 4))


@pytest.mark.parametrize("dim", [8, 16])
@pytest.mark.parametrize("num_patches", [16, 36, 4, 15, 28])
def test_resize_pos_embed_flat_matches_transformers_decoder(dim, num_patches):
    config = ViTMAEConfig(hidden_size=8, num_attention_heads=2, intermediate_size=8, decoder_hidden_size=dim,
                          decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                          decoder_intermediate_size=8, patch_size=4, image_size=16)
    decoder = ViTMAEDecoder(config, num_patches=16)
    with torch.no_grad():
        decoder.decoder_pos_embed.copy_(torch.randn_like(decoder.decoder_pos_embed))
    expected = decoder.interpolate_pos_encoding(torch.zeros(1, 1 + num_patches, dim))
    resized = resize_pos_embed_flat(decoder.decoder_pos_embed.data, num_patches)
    assert resized.shape == (1, 1 + num_patches, dim)
    assert torch.equal(resized, expected)


def test_flat_and_2d_resizes_differ_off_the_native_grid():
    """Why the "hf-1d" option exists: transformers' decoder resize is not the 2-D one."""
    table = sincos_2d(16, (4, 4))
    assert not torch.allclose(resize_pos_embed_flat(table, 36), resize_pos_embed(table, (6, 6)), atol=1e-3)
