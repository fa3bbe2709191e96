"""`lit-mae prepare OUTPUT --folder DIR | --cifar10 ROOT | --cifar100 ROOT | --digits`: LitData shards
for `StreamingDataModule`.

Writes one shard folder (LitData's index.json and chunk files, plus lit-mae.json) from an image
folder (class sub-folders, or any tree with --labels none), torchvision's CIFAR archives, or
scikit-learn's digits. Files are kept byte for byte, after checking that they decode (multi-band
TIFF, .npy arrays and 16-bit PNG/TIFF with the multi-band readers: every band and bit is kept);
with --max-side N each image is re-encoded as an 8-bit JPEG whose longer side is at most N (resize
once, for ImageNet-style training at 224), and a 16-bit, float or N-band file ends the command
with an error naming it rather than losing depth. Unreadable files are skipped and named in the
summary. An existing shard folder is replaced only with --overwrite. Upload the folder to object
storage as it is (e.g. `aws s3 cp --recursive OUTPUT s3://bucket/prefix`) to stream it from there.
"""

from __future__ import annotations

import argparse
import sys
import time


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lit-mae prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the shard folder to write (created; its parent must exist)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", metavar="DIR", help="an image folder: DIR/<class>/**/<image>, or any tree "
                        "with --labels none")
    source.add_argument("--cifar10", metavar="ROOT", help="torchvision's CIFAR-10 archive extracted under ROOT")
    source.add_argument("--cifar100", metavar="ROOT", help="torchvision's CIFAR-100 archive extracted under ROOT")
    source.add_argument("--digits", action="store_true", help="scikit-learn's bundled handwritten digits")
    parser.add_argument("--labels", choices=("folders", "none"), default="folders",
                        help="--folder: labels from class sub-folders (default), or none (label -1)")
    parser.add_argument("--split", default="train",
                        help="CIFAR: train or test; digits: train, val or test of DigitsDataModule's split")
    parser.add_argument("--image-size", type=int, default=16, help="digits: side in pixels (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="digits: the split's seed (DigitsDataModule.seed)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="re-encode as 8-bit JPEG with the longer side at most this (default: original bytes; "
                             "16-bit, float and N-band files are refused)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality with --max-side (default 90)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="keep files without decoding them first (faster; unreadable ones are then "
                             "skipped while training)")
    parser.add_argument("--num-workers", "--num_workers", type=int, default=4,
                        help="processes that check and encode images (0: none; default 4)")
    parser.add_argument("--chunk-bytes", default="64MB", help="the size of one chunk file (default 64MB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing shard folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    for flag, value, least in (("--max-side", args.max_side, 1), ("--num-workers", args.num_workers, 0),
                               ("--image-size", args.image_size, 8)):
        if value is not None and value < least:
            parser.error(f"{flag} must be at least {least}, got {value}")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be in 1..100, got {args.quality}")
    try:
        from lit_mae.datamodules.streaming import require_litdata

        require_litdata("lit-mae prepare")
        from lit_mae.datamodules import shards

        if args.folder is not None:
            items, classes = shards.folder_items(args.folder, args.labels)
            source = args.folder
        elif args.digits:
            items, classes = shards.digits_items(args.split, args.image_size, args.seed)
            source = f"digits {args.split} split (image_size {args.image_size}, seed {args.seed})"
        else:
            which = "cifar10" if args.cifar10 is not None else "cifar100"
            root = args.cifar10 if args.cifar10 is not None else args.cifar100
            items, classes = shards.cifar_items(root, which, args.split)
            source = f"{which} {args.split} split under {root}"
        start = time.perf_counter()
        info = shards.write_shards(items, args.output, source, classes, args.max_side, args.quality, args.verify,
                                   args.num_workers, args.chunk_bytes, args.overwrite, progress=not args.quiet)
    except (ImportError, OSError, ValueError) as error:
        parser.exit(2, f"lit-mae prepare: error: {error}\n")
    seconds = time.perf_counter() - start
    print(f"wrote {args.output}: {info.summary()}", file=sys.stderr)
    print(f"{info.images / seconds:.0f} images/s ({info.bytes / 1e6 / seconds:.1f} MB/s) in {seconds:.1f} s",
          file=sys.stderr)
