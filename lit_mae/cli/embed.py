"""`lit-mae embed --ckpt W --data D --output features.npy [--pool cls|avg]`: one row of features per
image, deterministic (all patches, no masking; the same row whatever the batch size).

W is any weights `lit-mae convert` reads (a fine-tuned classifier also gives its logits). D is:
- a folder: every image under it, recursively, in sorted order (`--labels folders`: one
  sub-folder per class), resized and centre-cropped to the model's size and normalised with
  --mean/--std (default: what the checkpoint records, else ImageNet's);
- a DataModule config (.yaml/.json): a `data:` section as a run's config.yaml has it, or
  `{class_path: ..., init_args: ...}`; its predict_dataloader is embedded;
- a DataModule class path, e.g. lit_mae.datamodules.DigitsDataModule (default arguments).
The output's suffix gives the format: .npy (one structured row per image: index, path, label,
embedding[, logits]), .parquet (needs pyarrow), or .pt (EmbeddingWriter's dict). Unreadable
images are skipped and named; the other rows keep their paths. `--devices 2` (with
`--accelerator cpu` or gpu) runs DDP and still writes one file, in dataset order.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, default_collate

from lit_mae.callbacks import EmbeddingWriter
from lit_mae.cli import leave_process_group
from lit_mae.cli.convert import as_flags
from lit_mae.cli.errors import TRACEBACK_ENV, user_error
from lit_mae.datamodules import ImageFolderDataModule
from lit_mae.datamodules.base import ImageSamples
from lit_mae.datamodules.batch import LoadedBatch
from lit_mae.datamodules.image_folder import list_samples
from lit_mae.interop.features import FeatureExtractor, load_feature_extractor
from lit_mae.models import ViTClassifier
from lit_mae.systems.embedding import LitEmbedder

PROG = "lit-mae embed"


class FolderImages(ImageFolderDataModule):
    """Every image under `root` as the predict split (no train/val/test), evaluation transforms.

    A batch whose images are all unreadable comes out empty (0 images) rather than stopping the
    run, so that even batch size 1 skips an unreadable file."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--data: folder {root} does not exist")
        files, targets, classes = list_samples(root, self.labels, None, "root")
        self.class_names, self.num_classes = classes, (len(classes) or None)
        self._resolve_depth(files)  # 16-bit and N-band files keep their depth, as in training
        self.splits["predict"] = ImageSamples(files, targets, self.eval_pipeline(), self.strict)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["predict"], batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=self._collate)

    def _collate(self, samples: list[tuple[torch.Tensor, int] | None]) -> LoadedBatch:
        kept = [sample for sample in samples if sample is not None]
        if not kept:  # (0, C, S, S): the writer finds the unreadable files and names them
            size = (0, self.channels, self.image_size, self.image_size)
            dtype = torch.float32 if self.full_depth else torch.uint8
            return LoadedBatch(torch.zeros(size, dtype=dtype), torch.zeros(0, dtype=torch.long), len(samples))
        pixels, labels = default_collate(kept)
        return LoadedBatch(pixels, labels, len(samples) - len(kept))


def datamodule_spec(text: str) -> dict[str, Any]:
    """`{"class_path": ..., "init_args": {...}}` from a config file (its `data:` section if it has
    one) or a class path."""
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise FileNotFoundError(f"--data: {path} does not exist")
        content = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
        spec = content.get("data", content) if isinstance(content, dict) else None
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise ValueError(f"--data: {path} has no DataModule: expected a `data:` section or a `class_path:` "
                             "(as in a run's config.yaml)")
        return {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}
    if "." in text and "/" not in text:
        return {"class_path": text, "init_args": {}}
    raise FileNotFoundError(f"--data: {text} is neither a folder nor a config file (.yaml/.json) nor a "
                            "DataModule class path (package.module.Class)")


def build_datamodule(spec: dict[str, Any]) -> LightningDataModule:
    """Instantiate a DataModule spec with jsonargparse (the types and defaults LightningCLI uses)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    try:
        config = parser.parse_object({"data": spec})
    except Exception as error:  # jsonargparse's ArgumentError: an unknown class or argument
        raise ValueError(f"--data: {str(error).splitlines()[0]}") from None
    return parser.instantiate(config).data


def make_datamodule(args: argparse.Namespace, extractor: FeatureExtractor) -> LightningDataModule:
    if Path(args.data).is_dir():
        from lit_mae.cli.visualize import display_statistics

        channels = extractor.config.in_chans
        stats = display_statistics(args.ckpt, channels, args.mean, args.std)
        height, width = extractor.image_size
        if height != width:
            raise ValueError(f"a folder is embedded at a square size; --image-size {height}x{width} is not square")
        return FolderImages(root=args.data, labels=args.labels, image_size=height, channels=channels,
                            augment=None, batch_size=args.batch_size or 64, num_workers=args.num_workers,
                            persistent_workers=False, mean=stats.mean, std=stats.std)
    spec = datamodule_spec(args.data)
    init_args = spec["init_args"]
    if args.batch_size:
        init_args["batch_size"] = args.batch_size
    # a lit-mae DataModule loads the model's size and channels unless its config says otherwise
    if _takes(spec["class_path"], "image_size"):
        init_args["image_size"] = args.image_size or init_args.get("image_size") or extractor.image_size[0]
    if _takes(spec["class_path"], "channels"):
        init_args.setdefault("channels", extractor.config.in_chans)
    datamodule = build_datamodule(spec)
    size = getattr(datamodule, "image_size", None)
    if isinstance(size, int) and (size, size) != extractor.image_size:
        height, width = extractor.image_size
        raise ValueError(f"--data gives {size}x{size} images and the model takes {height}x{width}: set the "
                         f"DataModule's image_size to {height}, or give --image-size {size} to embed at {size}x{size} "
                         "(the position table resized)")
    return datamodule


def _takes(class_path: str, name: str) -> bool:
    """Whether the class at `class_path` has an `__init__` argument `name` (False when not found:
    jsonargparse then names the problem)."""
    module, _, attribute = class_path.rpartition(".")
    try:
        return name in inspect.signature(getattr(importlib.import_module(module), attribute)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return False


def parse_args(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="weights: a lit-mae checkpoint or any file convert reads")
    parser.add_argument("--data", required=True, help="a folder of images, a DataModule config file, or a class path")
    parser.add_argument("--output", required=True, help="features.npy, features.parquet or features.pt")
    parser.add_argument("--pool", choices=("cls", "avg"), default=None,
                        help="cls token or mean of the patch tokens (default cls; a classifier's own pooling)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: 64 for a folder, "
                        "else the DataModule's); the features do not depend on it")
    parser.add_argument("--image-size", type=int, default=None, help="embed at this size (default: the model's)")
    parser.add_argument("--labels", choices=("none", "folders"), default="none",
                        help="a folder's labels: none, or one sub-folder per class")
    parser.add_argument("--mean", type=float, nargs="+", default=None, help="a folder's normalisation mean")
    parser.add_argument("--std", type=float, nargs="+", default=None, help="a folder's normalisation std")
    parser.add_argument("--num-workers", type=int, default=2, help="a folder's loader processes")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, auto (Lightning's names)")
    parser.add_argument("--devices", default="1", help="number of devices (several: DDP, one output file)")
    parser.add_argument("--no-progress-bar", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.exit(2, f"{PROG}: error: --batch-size must be >= 1, got {args.batch_size}\n")
    return parser, args


def main(argv: list[str]) -> None:
    parser, args = parse_args(argv)
    try:
        writer = EmbeddingWriter(args.output)
        extractor = load_feature_extractor(args.ckpt, pool=args.pool, image_size=args.image_size)
        if isinstance(extractor.backbone, ViTClassifier):  # a classifier's rows carry its logits too
            extractor = FeatureExtractor(extractor.backbone, extractor.pool, True, extractor.image_size).eval()
        datamodule = make_datamodule(args, extractor)
        trainer = Trainer(accelerator=args.accelerator, devices=_devices(args.devices), logger=False,
                          enable_checkpointing=False, enable_model_summary=False, callbacks=[writer],
                          enable_progress_bar=not args.no_progress_bar)
        trainer.predict(LitEmbedder(extractor), datamodule=datamodule, return_predictions=False)
    except Exception as error:  # a bad file, flag or value: its own message, one line, exit 2
        own = error if isinstance(error, ImportError) else user_error(error)
        if own is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        parser.exit(2, f"{PROG}: error: {as_flags(str(own))}\n")
    finally:
        leave_process_group()
    if trainer.is_global_zero:
        skipped = f"; skipped {len(writer.skipped)} unreadable: {', '.join(writer.skipped)}" if writer.skipped else ""
        print(f"wrote {args.output} ({extractor.pool} features, {extractor.config.embed_dim} wide){skipped}",
              file=sys.stderr)


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text
