"""patchify / unpatchify and random masking (lit_mae.models.ops)."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from lit_mae.models.ops import num_kept, patchify, random_masking, restore_order, unpatchify


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("hw", [(16, 16), (8, 24), (24, 16)])
def test_patchify_unpatchify_round_trip(channels, hw):
    H, W, p = *hw, 4
    images = torch.randn(2, channels, H, W)
    patches = patchify(images, p)
    assert patches.shape == (2, (H // p) * (W // p), p * p * channels)
    assert torch.equal(unpatchify(patches, p, (H // p, W // p), channels), images)


def test_unpatchify_patchify_round_trip():
    patches = torch.randn(3, 6, 4 * 4 * 2)
    assert torch.equal(patchify(unpatchify(patches, 4, (2, 3), 2), 4), patches)


def test_unpatchify_rejects_wrong_grid():
    with pytest.raises(ValueError, match="16"):
        unpatchify(torch.randn(1, 16, 48), 4, (3, 3), 3)


def test_patch_order_is_row_col_channel():
    """Each pixel value encodes its own (channel, y, x); read them back from the patch vectors."""
    C, H, W, p = 2, 8, 12, 4
    c, y, x = torch.meshgrid(torch.arange(C), torch.arange(H), torch.arange(W), indexing="ij")
    images = (c * 10000 + y * 100 + x).float().unsqueeze(0)  # (1, C, H, W)
    patches = patchify(images, p)
    h, w = H // p, W // p
    for i in range(h):
        for j in range(w):
            vector = patches[0, i * w + j]  # patches are row-major over the grid
            for py in range(p):
                for px in range(p):
                    for ch in range(C):
                        expected = ch * 10000 + (i * p + py) * 100 + (j * p + px)
                        assert vector[(py * p + px) * C + ch].item() == expected


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("hw", [(16, 16), (8, 24)])
def test_patchify_matches_transformers(channels, hw):
    hf = ViTMAEForPreTraining(ViTMAEConfig(
        image_size=16, patch_size=4, num_channels=channels, hidden_size=8, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=8, decoder_hidden_size=8, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=8,
    ))
    images = torch.randn(2, channels, *hw)
    expected = hf.patchify(images, interpolate_pos_encoding=True)  # HF needs the flag for non-square
    assert torch.equal(patchify(images, 4), expected)
    assert torch.equal(unpatchify(expected, 4, (hw[0] // 4, hw[1] // 4), channels), images)


# --- random masking -----------------------------------------------------------------------------


def _spatial_tokens(B: int, L: int, D: int = 3) -> torch.Tensor:
    """Tokens whose every feature is the spatial index, so a kept token tells where it came from."""
    return torch.arange(L, dtype=torch.float32).view(1, L, 1).expand(B, L, D).clone()


@pytest.mark.parametrize("L, ratio", [(16, 0.75), (16, 0.0), (49, 0.75), (10, 0.5), (12, 0.9), (196, 0.75)])
def test_random_masking_counts_and_inverse(L, ratio):
    B, D = 4, 5
    tokens = torch.randn(B, L, D)
    noise = torch.rand(B, L)
    kept, mask, ids_restore = random_masking(tokens, ratio, noise)
    K = int(L * (1 - ratio))
    assert num_kept(L, ratio) == K
    assert kept.shape == (B, K, D)
    assert mask.shape == ids_restore.shape == (B, L)
    assert torch.equal(mask.sum(dim=1), torch.full((B,), float(L - K)))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # ids_restore inverts ids_shuffle = argsort(noise)
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(L).expand(B, L))
    # kept tokens are the K smallest-noise ones, in noise order, and the mask marks the others
    assert torch.equal(kept, torch.gather(tokens, 1, ids_shuffle[:, :K, None].expand(B, K, D)))
    visible = mask == 0
    for b in range(B):
        assert set(ids_shuffle[b, :K].tolist()) == set(torch.nonzero(visible[b]).flatten().tolist())


def test_random_masking_gathers_back_with_ids_restore():
    """Kept tokens + placeholders unshuffled by ids_restore land at their spatial slots."""
    B, L = 3, 16
    tokens = _spatial_tokens(B, L)
    kept, mask, ids_restore = random_masking(tokens, 0.75, torch.rand(B, L))
    filler = torch.full((B, L - kept.shape[1], 3), -1.0)
    full = torch.gather(torch.cat([kept, filler], dim=1), 1, ids_restore[..., None].expand(B, L, 3))
    assert torch.equal(full[mask == 0], tokens[mask == 0])
    assert (full[mask == 1] == -1).all()


def test_only_the_order_of_noise_matters():
    tokens = torch.randn(2, 16, 4)
    noise = torch.rand(2, 16)
    a = random_masking(tokens, 0.75, noise)
    b = random_masking(tokens, 0.75, noise * 3 + 7)  # a monotone map keeps the order
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_same_noise_same_mask_and_ids():
    tokens = torch.randn(2, 16, 4)
    noise = torch.rand(2, 16)
    for x, y in zip(random_masking(tokens, 0.75, noise), random_masking(tokens, 0.75, noise.clone())):
        assert torch.equal(x, y)


def test_generator_seed_fixes_the_mask():
    tokens = torch.randn(2, 64, 4)
    masks = [random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(seed))[1] for seed in (1, 1, 2)]
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


def test_generator_does_not_touch_global_rng():
    tokens = torch.randn(2, 16, 4)
    state = torch.get_rng_state()
    random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)


def test_ratio_zero_with_arange_noise_keeps_spatial_order():
    B, L = 2, 16
    tokens = torch.randn(B, L, 4)
    kept, mask, ids_restore = random_masking(tokens, 0.0, torch.arange(L).float().expand(B, L))
    assert torch.equal(kept, tokens)
    assert not mask.any()
    assert torch.equal(ids_restore, torch.arange(L).expand(B, L))


def test_ratio_zero_with_random_noise_still_shuffles():
    tokens = _spatial_tokens(1, 16)
    kept, mask, _ = random_masking(tokens, 0.0, torch.tensor([list(reversed(range(16)))]).float())
    assert not mask.any()
    assert torch.equal(kept[0, :, 0], torch.arange(15, -1, -1).float())


@pytest.mark.parametrize("shape", [(2, 15), (3, 16), (2, 16, 1), (16,)])
def test_noise_of_wrong_shape_is_rejected(shape):
    with pytest.raises(ValueError, match=r"\(2, 16\)"):
        random_masking(torch.randn(2, 16, 4), 0.75, torch.rand(*shape))


def test_restore_order_puts_visible_tokens_back():
    B, L, Dd = 3, 16, 6
    tokens = _spatial_tokens(B, L, Dd)
    kept, mask, ids_restore = random_masking(tokens, 0.75, torch.rand(B, L))
    mask_token = torch.full((1, 1, Dd), -5.0)
    restored = restore_order(kept, mask_token, ids_restore)
    assert restored.shape == (B, L, Dd)
    visible = mask == 0
    assert torch.equal(restored[visible], tokens[visible])  # each visible token at its own slot
    assert (restored[~visible] == -5.0).all()  # mask tokens everywhere else


def test_restore_order_with_nothing_removed_is_unshuffle():
    B, L = 2, 9
    tokens = _spatial_tokens(B, L)
    kept, _, ids_restore = random_masking(tokens, 0.0, torch.rand(B, L))
    assert torch.equal(restore_order(kept, torch.zeros(1, 1, 3), ids_restore), tokens)
