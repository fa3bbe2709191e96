"""`lit-mae convert SRC DST --to {lightning,hf,official,timm}`: any MAE weights to any other format.

SRC is anything `load_pretrained` reads (a lit-mae Lightning checkpoint, an official `.pth`, a
Hugging Face directory or file, a timm state dict). DST is a directory for `hf`, a file otherwise
(`.safetensors` for timm when the name says so, else a torch file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lit_mae.models import MaskedAutoencoderViT

Target = Literal["lightning", "hf", "official", "timm"]
TARGETS: tuple[str, ...] = ("lightning", "hf", "official", "timm")


def lightning_checkpoint(model: MaskedAutoencoderViT) -> dict[str, Any]:
    """A checkpoint `LitMAE.load_from_checkpoint` (and `lightning validate --ckpt_path`) accepts."""
    import lightning

    return {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"config": model.config.to_dict()},
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)


def convert(source: str | Path, destination: str | Path, to: Target, **load_options: Any) -> Path:
    """Read `source` with `load_pretrained(source, **load_options)` and write it as `to`."""
    from lit_mae.interop import export_hf, export_official, export_timm, load_pretrained

    if to not in TARGETS:
        raise ValueError(f"--to must be one of {list(TARGETS)}, got {to!r}")
    destination = Path(destination)
    model = load_pretrained(source, **load_options)
    if to == "hf":
        return export_hf(model, destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if to == "official":
        export_official(model, destination)
    elif to == "timm":
        _save_tensors(export_timm(model), destination)
    else:
        torch.save(lightning_checkpoint(model), destination)
    return destination


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-mae convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="weights to read: file or Hugging Face directory")
    parser.add_argument("destination", help="where to write (a directory for --to hf)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="the format to write")
    parser.add_argument("--decoder", choices=("init",), default=None,
                        help="for encoder-only sources (timm, official 'pretrain' files): a fresh decoder")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads, for files without a config at a non-standard width")
    args = parser.parse_args(argv)
    options: dict[str, Any] = {"decoder": args.decoder} if args.decoder else {}
    if args.num_heads:
        options["num_heads"] = args.num_heads
    try:
        written = convert(args.source, args.destination, args.to, **options)
    except (OSError, ValueError) as error:
        parser.exit(2, f"lit-mae convert: error: {error}\n")
    print(f"wrote {written} ({args.to})", file=sys.stderr)
