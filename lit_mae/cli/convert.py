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

# the loaders' messages name their Python keywords; a user of this command types its flags
_AS_FLAGS = {
    "decoder='init'": "--decoder init",
    "head='drop'": "--head drop",
    "decoder_num_heads=...": "--decoder-num-heads N",
    "num_heads=...": "--num-heads N",
    "config=MAEConfig(...)": "a source that carries its config (a lit-mae or Hugging Face file)",
    "use load_classifier(...)": "convert a fine-tuned classifier from Python with load_classifier",
    "or use load_encoder_weights(...) for the encoder alone": "or convert only the encoder from Python",
}


def as_flags(message: str) -> str:
    """An error of the loaders, with its Python keywords put as this command's flags."""
    for keyword, flag in _AS_FLAGS.items():
        message = message.replace(keyword, flag)
    return message


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-mae convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="weights to read: file or Hugging Face directory")
    parser.add_argument("destination", help="where to write (a directory for --to hf)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="the format to write")
    parser.add_argument("--decoder", choices=("init",), default=None,
                        help="for encoder-only sources (timm, official 'pretrain' files): a fresh decoder")
    parser.add_argument("--head", choices=("drop",), default=None,
                        help="for fine-tuned sources: leave the classification head out")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads, for files without a config at a non-standard width")
    parser.add_argument("--decoder-num-heads", type=int, default=None,
                        help="decoder attention heads, for files without a config (default: the official 16)")
    args = parser.parse_args(argv)
    options: dict[str, Any] = {"decoder": args.decoder} if args.decoder else {}
    if args.head:
        options["head"] = args.head
    for name in ("num_heads", "decoder_num_heads"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    try:
        written = convert(args.source, args.destination, args.to, **options)
    except (OSError, ValueError) as error:
        parser.exit(2, f"lit-mae convert: error: {as_flags(str(error))}\n")
    print(f"wrote {written} ({args.to})", file=sys.stderr)
