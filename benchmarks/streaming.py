"""StreamingDataModule (LitData shards) against ImageFolderDataModule: images/s and CPU time per image.

    python benchmarks/streaming.py                   # 2000 JPEGs, 224 px, batch 64, 2 workers
    python benchmarks/streaming.py --smoke           # 48 small JPEGs: proves the script runs

Images: dataloading.py's generated ImageNet-like JPEGs (10 class folders, written once into
`--dir`). `lit-mae prepare`'s writer turns them into shards (original bytes, checked by decoding,
`--workers` processes): its rate is reported. Then the same pretraining pipeline (augment
`pretrain`, uint8 in the workers, the normalisation counted on the CPU), batch, workers and seed
read the images from the folder, from the shards on local disk, and from the shards on a local S3
server (moto, on 127.0.0.1: one ranged GET per image; the server's CPU is counted with the
loader's). Measured as dataloading.py does: images/s over `--batches` after a warm-up, and the CPU
seconds of the main process and its children per image; the sources alternate over `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import cpu_model, emit, markdown_table, number
from dataloading import SIZE, describe_images, images_per_second, load_average, prepare_images
from local_s3 import local_s3_server, upload
from lit_mae.datamodules import ImageFolderDataModule, StreamingDataModule
from lit_mae.datamodules.shards import folder_items, write_shards

SOURCES = ("folder", "shards, local disk", "shards, S3 on loopback")
HEADERS = ["source", "images/s", "CPU ms per image", "vs folder, images/s", "vs folder, per CPU second"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--dir", help="where the JPEGs are (made if missing); default: one in the temp dir")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (and prepare's processes)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per source and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="48 quarter-size images, batch 8, 1 repeat")
    parser.add_argument("--markdown", help="also write the tables to this path")
    args = parser.parse_args(argv)
    args.scale = 1.0
    if args.smoke:
        args.num_images, args.scale, args.workers, args.batch, args.batches, args.repeats = 48, 0.25, 1, 8, 2, 1
    if args.dir is None:  # dataloading.py's folder for the same images: generated once for both
        name = f"lit-mae-dataloading-{args.num_images}" + ("-smoke" if args.smoke else "")
        args.dir = str(Path(tempfile.gettempdir()) / name)
    return args


def datamodule(source: str, location: str, args: argparse.Namespace):
    settings = dict(augment="pretrain", image_size=SIZE, batch_size=args.batch, num_workers=args.workers,
                    pin_memory=False, persistent_workers=False, seed=args.seed)
    if source == "folder":
        module = ImageFolderDataModule(location, **settings)
    else:
        module = StreamingDataModule(input_dir=location, cache_dir=str(Path(args.dir).with_suffix(".cache")),
                                     **settings)
    module.setup("fit")
    return module


def measure(locations: dict[str, str], args: argparse.Namespace, rates: dict[str, list[tuple[float, float]]],
            repeat: int) -> None:
    order = list(locations) if repeat % 2 == 0 else list(reversed(locations))
    for source in order:
        module = datamodule(source, locations[source], args)
        warmup = max(args.workers, 1)
        rate, cpu = images_per_second(module.train_dataloader(), lambda b: module.on_after_batch_transfer(b, 0),
                                      warmup, args.batches, args.seed + repeat)
        rates.setdefault(source, []).append((rate, cpu))
        print(f"  repeat {repeat} {source}: {rate:.1f} images/s, {1e3 * cpu:.2f} CPU ms/image", flush=True)


def report(args: argparse.Namespace, images: str, prepared: str, rates: dict[str, list[tuple[float, float]]]) -> str:
    median = {source: tuple(statistics.median(r[i] for r in runs) for i in (0, 1)) for source, runs in rates.items()}
    base_rate, base_cpu = median["folder"]
    rows = [[source, number(rate), number(1e3 * cpu), number(rate / base_rate), number(base_cpu / cpu)]
            for source, (rate, cpu) in ((s, median[s]) for s in SOURCES if s in median)]
    return "\n".join([
        f"{images[0].upper()}{images[1:]}. Pipeline: augment pretrain, {SIZE} px, batch {args.batch}, {args.workers} worker(s), "
        f"median of {args.repeats} repeat(s) of {args.batches} timed batches. CPU: {cpu_model()}, "
        f"{os.cpu_count()} cores, load average {load_average()}; torch {torch.__version__}.",
        f"prepare (shard writing, {args.workers} process(es)): {prepared}", "",
        markdown_table(HEADERS, rows)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # as in the workers: compare per core
    root = Path(args.dir).expanduser()
    manifest, _ = prepare_images(root, args.num_images, args.scale, args.seed)
    images = describe_images(root, manifest)
    shards = root.with_name(root.name + "-shards")
    items, classes = folder_items(root)
    start = time.perf_counter()
    info = write_shards(items, shards, str(root), classes, num_workers=args.workers, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    prepared = (f"{info.images / seconds:.0f} images/s, {info.bytes / 1e6 / seconds:.1f} MB/s "
                f"({info.images} images, {info.bytes / 1e6:.1f} MB in {seconds:.1f} s)")
    print(prepared, flush=True)
    rates: dict[str, list[tuple[float, float]]] = {}
    with local_s3_server() as server:
        upload(shards, "s3://bench/shards")
        print(f"S3 server {server.endpoint} (pid {server.pid})", flush=True)
        locations = dict(zip(SOURCES, (str(root), str(shards), "s3://bench/shards")))
        for repeat in range(args.repeats):
            measure(locations, args, rates, repeat)
    emit(report(args, images, prepared, rates), args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
