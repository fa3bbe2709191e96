"""The presets' sizes: parameters of encoder and decoder, and FLOPs at 224 px (ViT-H/14 at 224 too),
counted with torch's FlopCounterMode; transformers' ViTMAEForPreTraining of the same config is
counted in the same run as the outside check (its parameter count must be lit-mae's).

    python benchmarks/presets.py [--markdown FILE]   # all presets (~1 min on 2 cores: building ViT-H)
    python benchmarks/presets.py --smoke              # tiny and small only

FLOPs are of one image: `pretrain` is a training forward at mask ratio 0.75 (encoder on the 25%
visible patches + decoder on all), `encode` the encoder on the whole image (fine-tuning,
features). A backward costs about twice a forward. One multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import hf_config  # also puts the repository root on sys.path
from lit_mae.models import MaskedAutoencoderViT, preset_config
from transformers import ViTMAEForPreTraining


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flops(run) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run()
    return counter.get_total_flops()


def preset_row(name: str) -> dict[str, float]:
    config = preset_config(name, img_size=224, attn_implementation="eager")  # torch counts no FLOPs inside CPU SDPA
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(config).eval()
    image = torch.zeros(1, config.in_chans, 224, 224)
    encoder = _count(model.encoder)
    with torch.device("meta"):
        reference = ViTMAEForPreTraining(hf_config(config, "eager"))
    return {
        "encoder_params": encoder, "decoder_params": _count(model) - encoder,
        "transformers_params": _count(reference),
        "pretrain_gflops": _flops(lambda: model(image, generator=torch.Generator().manual_seed(0))) / 1e9,
        "encode_gflops": _flops(lambda: model.encoder.forward_features(image)) / 1e9,
    }


def table(names: list[str]) -> str:
    lines = ["| preset | encoder params | decoder params | total | transformers total | "
             "GFLOPs/image, pretraining forward (75% masked) | GFLOPs/image, encoder on the whole image |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        row = preset_row(name)
        total = row["encoder_params"] + row["decoder_params"]
        lines.append(f"| {name} | {row['encoder_params'] / 1e6:.1f} M | {row['decoder_params'] / 1e6:.1f} M | "
                     f"{total / 1e6:.1f} M | {row['transformers_params'] / 1e6:.1f} M"
                     f"{'' if row['transformers_params'] == total else ' (differs!)'} | "
                     f"{row['pretrain_gflops']:.1f} | {row['encode_gflops']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny and small only")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    text = table(["tiny", "small"] if args.smoke else ["tiny", "small", "base", "large", "huge"])
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
