"""`lit-mae export-encoder SRC OUT [--format onnx|pt2] [--head] [--pool cls|avg] [--img-size N|HxW]`:
the encoder of any MAE weights as a deployable graph, without masking.

SRC is anything `lit-mae convert` reads. OUT ending in .onnx or .pt2 chooses the format (or give
--format). The graph takes normalised float32 images (batch, C, H, W), the batch dynamic and the
size fixed (the weights' own unless --img-size), and returns tokens (batch, 1+L, D) and pooled
features (batch, D), plus logits with --head. ONNX files use opset 18 and need the export extra:
pip install "lit-mae[export]". `.pt2` files load with torch.export.load(OUT).module().
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_mae.cli.convert import as_flags
from lit_mae.interop.encoder_export import EXPORT_FORMATS, export_encoder
from lit_mae.interop.features import load_feature_extractor

PROG = "lit-mae export-encoder"


def image_size(text: str) -> tuple[int, int]:
    """"224" -> (224, 224); "224x320" -> (224, 320) (height x width)."""
    try:
        sides = tuple(int(side) for side in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW in pixels, e.g. 224 or 224x320, got {text!r}")
    return sides  # type: ignore[return-value]


def output_format(path: Path, given: str | None) -> str:
    """--format, else the output's suffix; a ValueError when neither says."""
    if given is not None:
        return given
    suffix = path.suffix.lstrip(".").lower()
    if suffix in EXPORT_FORMATS:
        return suffix
    raise ValueError(f"cannot tell the format from {path.name!r}: name the output .onnx or .pt2, or give "
                     f"--format {{{','.join(EXPORT_FORMATS)}}}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source",
                        help="weights: a lit-mae checkpoint, official .pth, Hugging Face directory, timm file")
    parser.add_argument("output", help="the file to write (.onnx or .pt2)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default=None, help="default: from the output's suffix")
    parser.add_argument("--head", action="store_true",
                        help="also output the classification head's logits (fine-tuned or linear-probe weights)")
    parser.add_argument("--pool", choices=("cls", "avg"), default=None,
                        help="the pooled features: cls token or mean of the patch tokens (default: cls; a "
                             "classifier's own pooling)")
    parser.add_argument("--img-size", type=image_size, default=None, metavar="N|HxW",
                        help="the fixed input size, if not the weights' own (the position table is resized)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    try:
        fmt = output_format(output, args.format)
        extractor = load_feature_extractor(args.source, pool=args.pool, head=args.head, image_size=args.img_size)
        export_encoder(extractor, output, fmt)
    except (ImportError, OSError, ValueError) as error:
        parser.exit(2, f"{PROG}: error: {as_flags(str(error))}\n")
    details = extractor.describe()
    print(f"wrote {output} ({fmt}): input {details['lit_mae.input']}; outputs {details['lit_mae.outputs']}",
          file=sys.stderr)
