"""`lit-mae convert SRC DST --to {lightning,hf,official,timm}`: any MAE weights to any other format.

SRC is anything `load_pretrained` reads (a lit-mae Lightning checkpoint, an official `.pth`, a
Hugging Face directory or file, a timm state dict). DST is a directory for `hf`, a file otherwise
(`.safetensors` for timm when the name says so, else a torch file).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lit_mae.interop.convert import TARGETS, convert


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
