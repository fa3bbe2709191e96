"""Data-loading images/s of lit-mae's pretraining pipeline vs the official MAE recipe (PIL + torchvision).

    python benchmarks/dataloading.py                              # 2000 JPEGs, workers 0,1,2, 5 repeats
    python benchmarks/dataloading.py --num-images 1000 --workers 0,2 --markdown dataloading.md
    python benchmarks/dataloading.py --smoke                      # 40 small JPEGs: proves the script runs

Images: `--num-images` synthetic JPEGs (quality 90, 4:2:0) in 10 class folders, written once into
`--dir` and reused while its MANIFEST.json matches. Sizes follow ImageNet's: 90% have a long side
of 500 px (70% of those) or 300-500 px, short/long 3/4 (half), 2/3 (a quarter) or 0.5-1; 75%
landscape, 25% portrait; the other 10% are the long tail, 1000-2000 px on the long side. Content:
a smooth colour field, 8-20 soft-edged ellipses, 1/f-like grey texture and a little colour noise,
tuned so a 500x375 file is about 65 KB (2.8 bits/pixel), as sklearn's china.jpg photo re-encoded at
500x375, quality 90 (pure noise would decode unrealistically slowly).

Pipelines (the DataLoaders get the same seeds; the DataModule lists its files in another order):
  official  torchvision ImageFolder, Compose(RandomResizedCrop(224, scale (0.2, 1), bicubic),
            RandomHorizontalFlip, ToTensor, Normalize), default PIL loader and collate
  lit-mae   ImageFolderDataModule(augment="pretrain").train_dataloader(), with collate_skipping,
            then on_after_batch_transfer(batch, 0) on the CPU (in training it runs on the GPU)
Measured: images/s of a DataLoader (batch 64, no pinning) over `--batches` after a warm-up, and
the CPU time per image of the main process and its workers (from Linux's /proc: the per-core cost),
the pipelines alternated and repeated (`--repeats`, median); then ms per image of each stage in one
process, on the same files with the same crops and flips (both draw RandomResizedCrop's box and the
flip from torch's RNG in the same way). Every process runs torch with one thread, as workers do.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter, features
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from _common import cpu_model, csv, emit, markdown_table, number
from lit_mae.datamodules import ImageFolderDataModule
from lit_mae.datamodules.base import IMAGENET_MEAN, IMAGENET_STD
from lit_mae.datamodules.images import _draft, to_channels, to_tensor
from lit_mae.datamodules.transforms import CropAndFlip

CLASSES = 10
SIZE = 224
STAGES = ["decode", "crop+resize", "flip", "to tensor", "normalise"]
HEADERS = ["workers", "pipeline", "images/s", "images/s per worker", "lit/official", "CPU ms per image",
           "lit/official per CPU s", "min-max images/s"]
MICRO_HEADERS = ["pipeline", *(f"{stage} ms" for stage in STAGES), "sum ms", "as called ms", "decoded MP"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--dir", help="where the JPEGs are (made if missing); default: one in the temp dir")
    parser.add_argument("--workers", type=csv, default=["0", "1", "2"], help="DataLoader num_workers values")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12, help="timed batches (a multiple of the workers)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--micro-images", type=int, default=200, help="images of the per-image table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="40 quarter-size images, workers 0, 1 repeat")
    parser.add_argument("--markdown", help="also write the tables to this path")
    args = parser.parse_args(argv)
    args.workers, args.scale = [int(w) for w in args.workers], 1.0
    if args.smoke:
        args.num_images, args.scale, args.workers, args.batch, args.batches = 40, 0.25, [0], 8, 2
        args.repeats, args.micro_images = 1, 8
    if args.dir is None:
        name = f"lit-mae-dataloading-{args.num_images}" + ("-smoke" if args.smoke else "")
        args.dir = str(Path(tempfile.gettempdir()) / name)
    return args


# --- synthetic ImageNet-like JPEGs --------------------------------------------------------------
def image_size(rng: np.random.Generator, scale: float) -> tuple[int, int]:
    """(width, height) drawn from the ImageNet-like mix of the module docstring."""
    if rng.random() < 0.1:
        long = rng.uniform(1000, 2000)
    else:
        long = 500 if rng.random() < 0.7 else rng.uniform(300, 500)
    ratio = rng.choice([0.75, 0.75, 2 / 3, rng.uniform(0.5, 1.0)])  # short side / long side
    long, short = max(8, round(long * scale)), max(8, round(long * ratio * scale))
    return (long, short) if rng.random() < 0.75 else (short, long)


def octave_noise(rng: np.random.Generator, width: int, height: int, amplitude: float) -> np.ndarray:
    """(H, W) float32 texture: five octaves of noise, coarser ones stronger (a 1/f-like spectrum)."""
    total = np.zeros((height, width), np.float32)
    for octave in range(5):
        step = 2**octave
        coarse = rng.normal(0, 1, (-(-height // step), -(-width // step))).astype(np.float32)
        layer = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR)
        total += amplitude * 1.4**octave * np.asarray(layer)
    return total


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB image with a photo's statistics: smooth gradients, soft-edged objects, texture."""
    field = rng.integers(0, 256, (int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 20))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.02, 0.2, 2) * max(width, height)
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(max(width, height) / 500))
    pixels = np.asarray(image, dtype=np.float32) * 0.8 + 25  # (H, W, 3), less saturated
    pixels += octave_noise(rng, width, height, 5.0)[..., None]
    pixels += rng.normal(0, 2.5, (height, width, 3)).astype(np.float32)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def prepare_images(directory: Path, count: int, scale: float, seed: int) -> tuple[list[dict], str]:
    """The manifest entries (file, width, height) of `directory`, writing the images if it has none."""
    spec = {"count": count, "scale": scale, "seed": seed, "classes": CLASSES, "version": 1}
    manifest = directory / "MANIFEST.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved["spec"] != spec:
            raise SystemExit(f"--dir {directory} holds other images ({saved['spec']}, not {spec}): "
                             "choose another --dir or delete it")
        return saved["images"], f"reused from {directory}"
    if directory.exists() and any(directory.iterdir()):
        raise SystemExit(f"--dir {directory} is not empty and has no MANIFEST.json of this script")
    start = time.perf_counter()
    partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")  # renamed when complete
    images = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        width, height = image_size(rng, scale)
        file = Path(f"class_{index % CLASSES:02d}", f"img_{index:05d}.jpg")
        (partial / file.parent).mkdir(parents=True, exist_ok=True)
        synthetic_photo(rng, width, height).save(partial / file, quality=90)
        images.append({"file": str(file), "width": width, "height": height})
    (partial / "MANIFEST.json").write_text(json.dumps({"spec": spec, "images": images}))
    if directory.exists():
        directory.rmdir()
    partial.rename(directory)
    return images, f"generated into {directory} in {time.perf_counter() - start:.0f} s"


def describe_images(directory: Path, images: list[dict]) -> str:
    pixels = [i["width"] * i["height"] for i in images]
    kilobytes = [(directory / i["file"]).stat().st_size / 1e3 for i in images]
    large = sum(max(i["width"], i["height"]) >= 1000 for i in images)
    for image in images:  # into the page cache, so that no pipeline pays for the first disk read
        (directory / image["file"]).read_bytes()
    return (f"images: {len(images)} JPEGs in {CLASSES} classes, mean decoded size "
            f"{statistics.mean(i['width'] for i in images):.0f}x{statistics.mean(i['height'] for i in images):.0f} "
            f"({statistics.mean(pixels) / 1e6:.3f} MP), {large} with a long side of 1000 px or more; "
            f"mean file {statistics.mean(kilobytes):.0f} KB, "
            f"{8e3 * sum(kilobytes) / sum(pixels):.2f} bits/pixel")


# --- the two pipelines --------------------------------------------------------------------------
def official_parts() -> list[Callable]:
    """The MAE repository's pretraining transform, step by step."""
    return [T.RandomResizedCrop(SIZE, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def official_loader(root: Path, workers: int, batch: int) -> tuple[DataLoader, Callable[[Any], Any]]:
    dataset = datasets.ImageFolder(str(root), transform=T.Compose(official_parts()))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    return loader, lambda batch: batch


def lit_datamodule(root: Path, workers: int, batch: int) -> ImageFolderDataModule:
    datamodule = ImageFolderDataModule(str(root), augment="pretrain", image_size=SIZE, batch_size=batch,
                                       num_workers=workers, pin_memory=False, persistent_workers=False)
    datamodule.setup("fit")
    return datamodule


def lit_loader(root: Path, workers: int, batch: int) -> tuple[DataLoader, Callable[[Any], Any]]:
    datamodule = lit_datamodule(root, workers, batch)
    return datamodule.train_dataloader(), lambda batch: datamodule.on_after_batch_transfer(batch, 0)


LOADERS = {"official": official_loader, "lit-mae": lit_loader}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes `pids` (Linux /proc, 10 ms ticks)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def images_per_second(loader: DataLoader, finish: Callable[[Any], Any], warmup: int, batches: int,
                      seed: int) -> tuple[float, float]:
    """(images/s, CPU seconds per image of this process and its workers) from the end of `warmup`
    batches to the end of `batches` more, once the workers run."""
    torch.manual_seed(seed)  # the same sampler and worker seeds for both pipelines
    iterator = iter(loader)
    for _ in range(warmup):
        finish(next(iterator))
    pids = [os.getpid(), *map(int, Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split())]
    images, cpu, start = 0, cpu_seconds(pids), time.perf_counter()
    for _ in range(batches):
        images += finish(next(iterator))[0].shape[0]
    seconds, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu
    del iterator  # shuts its workers down
    return images / seconds, cpu / images


Rates = dict[tuple[int, str], list[tuple[float, float]]]  # (workers, pipeline) -> (images/s, CPU s/image)


def throughput(root: Path, args: argparse.Namespace) -> Rates:
    """Images/s and CPU s/image of every repeat, by (workers, pipeline); pipelines alternate going first."""
    rates: Rates = {}
    for repeat in range(args.repeats):
        for workers in args.workers:
            warmup = max(workers, 1)  # workers finish their first batches together
            batches = math.ceil(args.batches / warmup) * warmup
            order = list(LOADERS) if repeat % 2 == 0 else list(reversed(LOADERS))
            for name in order:
                loader, finish = LOADERS[name](root, workers, args.batch)
                if warmup + batches > len(loader):
                    raise SystemExit(f"{len(loader)} batches per epoch: too few for {warmup} warm-up + "
                                     f"{batches} timed (raise --num-images or lower --batches)")
                rate, cpu = images_per_second(loader, finish, warmup, batches, args.seed + repeat)
                rates.setdefault((workers, name), []).append((rate, cpu))
                print(f"  repeat {repeat} workers {workers} {name}: {rate:.1f} images/s, "
                      f"{1e3 * cpu:.2f} CPU ms/image", flush=True)
    return rates


# --- per-image stages in one process ------------------------------------------------------------
def official_stages(path: Path, parts: list[Callable]) -> tuple[list[float], int]:
    """Seconds of each of STAGES for one image, and the decoded pixel count."""
    crop, flip, to_float, normalize = parts
    times = [time.perf_counter()]
    image = datasets.folder.default_loader(str(path))
    decoded = image.width * image.height
    for step in (crop, flip, to_float, normalize):
        times.append(time.perf_counter())
        image = step(image)
    times.append(time.perf_counter())
    seconds = np.diff(times).tolist()  # decode, crop+resize, flip, to tensor, normalise
    return seconds, decoded


def lit_stages(path: Path, crop: CropAndFlip) -> tuple[list[float], int, Tensor]:
    """Seconds of STAGES but normalise (done per batch), decoded pixels and the uint8 (C, S, S) output.

    Mirrors `read_image` for a plain upright JPEG, step by step: draft decoding of the planned
    box, the box cut out of the decoded image ("decode"), its uint8 copy ("to tensor"), the resize.
    """
    times = [time.perf_counter()]
    with Image.open(path) as image:
        top, left, height, width = _draft(image, crop.plan(image.height, image.width), crop.size)
        region = to_channels(image.crop((left, top, left + width, top + height)), 3, orient=False)
        decoded = image.width * image.height
    times.append(time.perf_counter())
    pixels = to_tensor(region)  # (C, h, w) uint8, the box only
    times.append(time.perf_counter())
    pixels = TF.resize(pixels, list(crop.size), interpolation=crop.mode, antialias=True)
    times.append(time.perf_counter())
    if crop.augment.hflip and torch.rand(1) < 0.5:
        pixels = pixels.flip(-1)
    times.append(time.perf_counter())
    decode, tensor, resize, flip = np.diff(times).tolist()
    return [decode, resize, flip, tensor], decoded, pixels


def per_image(root: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """ms per image of STAGES, their sum, the dataset's own __getitem__ (+ normalise) and decoded MP;
    median over repeats of the mean over `--micro-images` files, the pipelines alternating per image."""
    official = datasets.ImageFolder(str(root), transform=T.Compose(official_parts()))
    datamodule = lit_datamodule(root, 0, args.batch)
    lit, parts = datamodule.splits["train"], official_parts()
    crop, position = lit.load, {Path(source): i for i, source in enumerate(lit.sources)}  # a permuted list
    count = min(args.micro_images, len(official))
    runs: dict[str, list[list[float]]] = {"official": [], "lit-mae": []}
    for repeat in range(args.repeats):
        totals = {name: np.zeros(len(STAGES) + 3) for name in runs}  # stages, sum, as called, MP
        outputs = []
        for index in range(count):
            path = Path(official.samples[index][0])
            for name in ("official", "lit-mae") if index % 2 == 0 else ("lit-mae", "official"):
                torch.manual_seed(args.seed + index)  # the same crop and flip for both
                if name == "official":
                    stages, decoded = official_stages(path, parts)
                else:
                    stages, decoded, pixels = lit_stages(path, crop)
                    stages.append(0.0)  # normalise: per batch, below
                    outputs.append(pixels)
                torch.manual_seed(args.seed + index)
                start = time.perf_counter()
                official[index] if name == "official" else lit[position[path]]
                as_called = time.perf_counter() - start
                totals[name] += [*stages, sum(stages), as_called, decoded / 1e6]
        normalise = 0.0
        for first in range(0, count, args.batch):
            batch = torch.stack(outputs[first:first + args.batch])  # (B, C, S, S): collate's work, untimed
            start = time.perf_counter()
            datamodule.normalise(batch)
            normalise += time.perf_counter() - start
        totals["lit-mae"][[STAGES.index("normalise"), len(STAGES), len(STAGES) + 1]] += normalise
        for name, total in totals.items():
            runs[name].append((total / count).tolist())
    return {name: [statistics.median(column) for column in zip(*rows)] for name, rows in runs.items()}


# --- report -------------------------------------------------------------------------------------
def header_line() -> str:
    simd = "Pillow-SIMD" if "post" in PIL.__version__ else "not Pillow-SIMD"
    turbo = features.version("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None
    jpeg = f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {features.version('jpg')}"
    cores = len(os.sched_getaffinity(0))
    return (f"device: CPU {platform.machine()} ({cpu_model()}), {cores} cores, torch threads 1 per process; "
            f"torch {torch.__version__}; torchvision {torchvision.__version__}; Pillow {PIL.__version__} "
            f"({simd}, {jpeg})")


def medians(rates: Rates, key: tuple[int, str]) -> tuple[float, float]:
    """Median images/s and median CPU s/image of a setting."""
    return statistics.median(r for r, _ in rates[key]), statistics.median(c for _, c in rates[key])


def ratios(rates: Rates, workers: int) -> tuple[float, float]:
    """lit-mae over official: images/s, and images per CPU second (inf when the CPU time is below a tick)."""
    lit_rate, lit_cpu = medians(rates, (workers, "lit-mae"))
    official_rate, official_cpu = medians(rates, (workers, "official"))
    return lit_rate / official_rate, (official_cpu / lit_cpu if lit_cpu else math.inf)


def throughput_rows(rates: Rates) -> list[list[str]]:
    rows = []
    for workers, name in rates:
        (rate, cpu), values = medians(rates, (workers, name)), [r for r, _ in rates[(workers, name)]]
        ratio = [f"{r:.2f}" for r in ratios(rates, workers)] if name == "lit-mae" else ["—", "—"]
        rows.append([str(workers), name, number(rate), number(rate / max(workers, 1)), ratio[0],
                     f"{1e3 * cpu:.3f}", ratio[1], f"{number(min(values))}-{number(max(values))}"])
    return sorted(rows, key=lambda row: (int(row[0]), row[1] != "official"))


def micro_rows(stages: dict[str, list[float]]) -> list[list[str]]:
    return [[name, *(f"{1e3 * v:.3f}" for v in values[:-1]), f"{values[-1]:.3f}"] for name, values in stages.items()]


def verdict(rates: Rates) -> str:
    per_cpu = {w: ratios(rates, w)[1] for w, name in rates if name == "official"}
    cells = ", ".join(f"workers {w}: {r:.2f}x {'met' if r >= 1.5 else 'NOT met'}" for w, r in per_cpu.items())
    return f"target, lit-mae >= 1.5x the official images per CPU second: {cells}."


def report(args: argparse.Namespace, images: str, source: str, loads: tuple[str, str], rates: Rates,
           stages: dict[str, list[float]]) -> str:
    return "\n".join([
        f"## Data loading: lit-mae pretraining pipeline vs the official MAE one, {SIZE} px, batch {args.batch}",
        "",
        header_line(),
        "",
        f"{images} ({source}).",
        f"load average (1, 5, 15 min) before: {loads[0]}; after: {loads[1]}.",
        "",
        f"### DataLoader throughput: median of {args.repeats} repeats of {args.batches} timed batches (rounded "
        "up to a multiple of the workers) after a warm-up of one batch per worker",
        "",
        markdown_table(HEADERS, throughput_rows(rates)),
        "",
        "workers 0: the main process loads; images/s per worker = images/s / max(workers, 1).",
        "CPU ms per image: user + system CPU time of the main process and its workers over the timed "
        "batches (/proc, 10 ms ticks): the per-core cost, whichever process pays it. With 1 worker, "
        "lit-mae's normalisation runs beside it in the main process, on another core.",
        "lit-mae's time includes on_after_batch_transfer (uint8 -> normalised float32) on the CPU in the "
        "main process; in training it runs on the GPU. No pinned memory for either.",
        verdict(rates),
        "",
        f"### One process, ms per image: median of {args.repeats} repeats of the mean over "
        f"{min(args.micro_images, args.num_images)} images",
        "",
        markdown_table(MICRO_HEADERS, micro_rows(stages)),
        "",
        "official: default_loader (open + convert RGB), then each transform of the Compose on PIL images.",
        "lit-mae: decode = open + draft (JPEG decoded at 1/2, 1/4 or 1/8 when the crop allows) + cut out "
        "the crop box as RGB; to tensor = uint8 copy of the box; crop+resize = torchvision resize of the box "
        "on uint8 (bicubic, antialias); "
        "normalise = the batch's datamodule.normalise divided per image.",
        "as called: the dataset's own __getitem__ (lit-mae: plus its share of normalise); decoded MP: "
        "mean megapixels the JPEG decoder produced.",
    ])


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # DataLoader workers run with one thread; the main process too, to compare per core
    root = Path(args.dir).expanduser()
    manifest, source = prepare_images(root, args.num_images, args.scale, args.seed)
    images = describe_images(root, manifest)
    print(images, f"({source})", flush=True)
    before = load_average()
    rates = throughput(root, args)
    stages = per_image(root, args)
    emit(report(args, images, source, (before, load_average()), rates, stages), args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
