"""`lit-mae stats ROOT --channels 13 --labels none`: the per-channel mean and std of a folder's
training split, printed as YAML lines to paste under the DataModule's `init_args`. The same
numbers `ImageFolderDataModule(normalize="auto")` computes in `setup` (a seeded sample of up to
512 training images, whole images, in the unit the pipelines normalise in: fractions of full
scale for 8- and 16-bit files, raw values for signed-integer and float files)."""

from __future__ import annotations

import argparse
import sys

from lit_mae.datamodules.image_folder import ImageFolderDataModule
from lit_mae.datamodules.statistics import describe


def folder_statistics(root: str, channels: int, labels: str = "folders", val_fraction: float = 0.0,
                      test_fraction: float = 0.0, seed: int = 0, depth: str = "auto",
                      array_layout: str = "auto") -> ImageFolderDataModule:
    """The DataModule of `root` set up with `normalize: auto` (its `mean`, `std`, `depth` say what
    a run with these settings would use)."""
    data = ImageFolderDataModule(root, labels=labels, val_fraction=val_fraction, test_fraction=test_fraction,
                                 seed=seed, channels=channels, augment=None, num_workers=0, persistent_workers=False,
                                 normalize="auto", depth=depth, array_layout=array_layout)
    data.setup("fit")
    return data


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-mae stats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the training folder (as ImageFolderDataModule's root)")
    parser.add_argument("--channels", type=int, default=3, help="bands per image (default 3)")
    parser.add_argument("--labels", choices=("folders", "none"), default="folders",
                        help="class sub-folders, or none (any tree of images)")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="as the DataModule's: left out of the sample")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="as the DataModule's: left out of the sample")
    parser.add_argument("--seed", type=int, default=0, help="the split's and the sample's seed (the DataModule's)")
    parser.add_argument("--depth", choices=("auto", "8bit", "full"), default="auto")
    parser.add_argument("--array-layout", choices=("auto", "CHW", "HWC"), default="auto",
                        help=".npy band axis (default: the axis of length --channels)")
    args = parser.parse_args(argv)
    try:
        data = folder_statistics(args.root, args.channels, args.labels, args.val_fraction, args.test_fraction,
                                 args.seed, args.depth, args.array_layout)
    except (OSError, ValueError) as error:
        parser.exit(2, f"lit-mae stats: error: {error}\n")
    train = len(data.splits["train"])
    print(f"# {args.root}: {train} training images, read at {'full' if data.full_depth else '8-bit'} depth",
          file=sys.stderr)
    print(describe((data.mean, data.std)))
