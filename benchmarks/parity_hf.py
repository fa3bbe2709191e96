"""Print how far lit-mae is from transformers' ViTMAEForPreTraining for the same weights and noise.

    python benchmarks/parity_hf.py

Random, perturbed weights (every parameter, both position tables), fp32, CPU; saved by
transformers and read back with `lit_mae.interop.load_pretrained`.
"""

from __future__ import annotations

import itertools
import tempfile

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from lit_mae.interop import load_pretrained


def reference(norm_pix_loss: bool, mask_ratio: float, attn: str) -> ViTMAEForPreTraining:
    config = ViTMAEConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, decoder_hidden_size=32, decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4, decoder_intermediate_size=64, norm_pix_loss=norm_pix_loss,
        mask_ratio=mask_ratio, attn_implementation=attn,
    )
    model = ViTMAEForPreTraining(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def main() -> None:
    torch.manual_seed(0)
    print("| norm_pix | mask ratio | attention | input | mask equal | max abs pred diff | loss diff |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for norm_pix, ratio, attn in itertools.product((False, True), (0.75, 0.0), ("eager", "sdpa")):
        hf = reference(norm_pix, ratio, attn)
        with tempfile.TemporaryDirectory() as directory:
            hf.save_pretrained(directory)
            lit = load_pretrained(directory, attn_implementation=attn, decoder_pos_interpolation="hf-1d").eval()
        for height, width in ((32, 32), (48, 48), (32, 48)):
            images = torch.randn(4, 3, height, width)
            noise = torch.rand(4, (height // 8) * (width // 8))
            interpolate = (height, width) != (32, 32)
            with torch.no_grad():
                want = hf(images, noise=noise, interpolate_pos_encoding=interpolate)
                got = lit(images, noise=noise, interpolate_pos_encoding=interpolate)
            same_mask = torch.equal(want.mask, got.mask) and torch.equal(want.ids_restore, got.ids_restore)
            pred = (want.logits - got.pred).abs().max().item()
            loss = (want.loss - got.loss).abs().item() if ratio > 0 else float("nan")  # 0/0 in both
            worst = max(worst, pred)
            print(f"| {norm_pix} | {ratio} | {attn} | {height}x{width} | {same_mask} | {pred:.2e} | {loss:.2e} |")
    print(f"\nworst max abs pred difference: {worst:.2e} (target 1e-5)")


if __name__ == "__main__":
    main()
