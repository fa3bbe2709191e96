"""Parity with transformers' ViTMAEForPreTraining on CUDA: the kernels the GPU benchmarks time.

Same weights (transformers' init, every parameter perturbed, `save_pretrained` -> `load_pretrained`),
same pixels and noise, on the GPU. Skipped where CUDA is absent.

Tolerances. fp32 (TF32 switched off here, for matmuls and convolutions): predictions within 1e-4
and loss within 1e-5, ten times the CPU test's 1e-5 / 1e-6. The two implementations run different
kernels on the GPU: lit-mae one fused (3D x D) qkv GEMM where transformers runs three D-wide ones,
and the GPU's SDPA kernels (flash / memory-efficient) and GEMM tilings sum in other orders than
CPU code; values here are O(1), so each order change moves a result by a few fp32 ulps (~1e-7)
per layer, ~1e-6 after the six blocks, still two decades under 1e-4. The loss is a mean over
hundreds of patches, which averages those errors out, hence 1e-5. Gradients get the same bound
relative to the largest gradient. bf16 autocast: both sides round every matmul input to 8
mantissa bits (relative 4e-3), but at different points (fused vs split qkv, kernel accumulation),
so they differ by about that much per layer: loss within 2e-2 relative, predictions within 2e-2
in relative L2 norm, and lit-mae's distance from the fp32 result no more than twice
transformers' (plus 1e-3). The mask depends only on the fp32 noise, so it must be equal.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from lit_mae.interop import load_pretrained
from lit_mae.models import MaskedAutoencoderViT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

IMG, PATCH = 64, 8
ATOL_PRED, ATOL_LOSS = 1e-4, 1e-5
BF16_RTOL = 2e-2


def hf_config(attn: str) -> ViTMAEConfig:
    # attn_implementation goes into the constructor (after the fact it does not reach the decoder);
    # head width 16 and 64 patches so that the GPU's SDPA kernels, not a fallback, do the work.
    return ViTMAEConfig(
        image_size=IMG, patch_size=PATCH, num_channels=3, hidden_size=64, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=160, decoder_hidden_size=32, decoder_num_hidden_layers=3,
        decoder_num_attention_heads=2, decoder_intermediate_size=96, mask_ratio=0.75,
        norm_pix_loss=False, attn_implementation=attn,
    )


def same_weights_pair(attn: str, device: torch.device) -> tuple[ViTMAEForPreTraining, MaskedAutoencoderViT]:
    """transformers' init with every parameter perturbed, and lit-mae reading its saved files."""
    torch.manual_seed(0)
    hf = ViTMAEForPreTraining(hf_config(attn)).eval()
    with torch.no_grad():
        for param in hf.parameters():  # biases, LayerNorms, position tables: no mapping hides behind 0/1
            param.add_(torch.randn_like(param) * 0.1)
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        lit = load_pretrained(Path(directory), attn_implementation=attn).eval()
    return hf.to(device), lit.to(device)


def inputs(device: torch.device, batch: int = 4) -> tuple[Tensor, Tensor]:
    """Images (B, 3, H, W) and noise (B, L), drawn on the CPU so that every device sees the same."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, IMG, IMG, generator=generator)
    noise = torch.rand(batch, (IMG // PATCH) ** 2, generator=generator)
    return images.to(device), noise.to(device)


def relative_error(got: Tensor, want: Tensor) -> float:
    """||got - want|| / ||want|| in fp32."""
    got, want = got.float(), want.float()
    return ((got - want).norm() / want.norm()).item()


@pytest.fixture(autouse=True)
def true_fp32():
    """fp32 means fp32: TF32 (10-bit mantissa) off for cuBLAS and cuDNN during each test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(params=["eager", "sdpa"])
def pair(request) -> tuple[ViTMAEForPreTraining, MaskedAutoencoderViT, Tensor, Tensor]:
    """(transformers model, lit-mae model with the same weights, images, noise) on the GPU."""
    device = torch.device("cuda")
    hf, lit = same_weights_pair(request.param, device)
    return (hf, lit, *inputs(device))


def test_fp32_forward_matches_transformers(pair):
    hf, lit, images, noise = pair
    with torch.no_grad():
        want, got = hf(images, noise=noise), lit(images, noise=noise)
    assert got.pred.device.type == "cuda"
    assert torch.equal(got.mask, want.mask) and torch.equal(got.ids_restore, want.ids_restore)
    assert (got.pred - want.logits).abs().max().item() <= ATOL_PRED
    assert (got.loss - want.loss).abs().item() <= ATOL_LOSS


def gradients_under_lit_names(hf: ViTMAEForPreTraining) -> dict[str, Tensor]:
    """transformers' gradients under lit-mae's parameter names, whatever transformers calls them in
    memory (5.x renames modules): written as the weights of a saved model, read by load_pretrained."""
    with torch.no_grad():
        for param in hf.parameters():
            param.copy_(param.grad if param.grad is not None else torch.zeros_like(param))
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        grads = load_pretrained(directory).to(next(hf.parameters()).device)
    return dict(grads.named_parameters())


def test_fp32_gradients_match_transformers(pair):
    """What the training benchmark times is the same work: every gradient agrees (q/k/v fused)."""
    hf, lit, images, noise = pair
    hf(images, noise=noise).loss.backward()
    lit(images, noise=noise).loss.backward()
    want = gradients_under_lit_names(hf)
    got = {name: p.grad for name, p in lit.named_parameters() if p.grad is not None}
    assert set(got) <= set(want)
    scale = max(g.abs().max().item() for g in want.values())
    for name in sorted(got):
        assert (got[name] - want[name]).abs().max().item() <= ATOL_PRED * scale, name


def test_bf16_autocast_forward_matches_transformers(pair):
    hf, lit, images, noise = pair
    with torch.no_grad():
        exact = hf(images, noise=noise)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            want, got = hf(images, noise=noise), lit(images, noise=noise)
    assert torch.equal(got.mask, want.mask) and torch.equal(got.ids_restore, want.ids_restore)
    assert torch.isfinite(got.pred).all() and torch.isfinite(got.loss)
    assert relative_error(got.loss, want.loss) <= BF16_RTOL
    assert relative_error(got.pred, want.logits) <= BF16_RTOL
    # lit-mae's bf16 path loses no more accuracy than transformers' does
    assert relative_error(got.pred, exact.logits) <= 2 * relative_error(want.logits, exact.logits) + 1e-3
