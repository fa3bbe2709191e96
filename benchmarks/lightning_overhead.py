"""What Lightning and the default pretraining callbacks cost over a bare PyTorch loop.

    python benchmarks/lightning_overhead.py                  # ViT-S/16, 224 px, batch 16, fp32 (CPU)
    python benchmarks/lightning_overhead.py --smoke          # a 32 px model: proves the script runs

The same `LitMAE` model, batches, AdamW groups, warmup-cosine schedule and seeded masks, with the
data already in memory (a DataLoader over a TensorDataset of normalised images and labels, no
workers), run as:

  bare        a plain loop: masks from `step_generator`, forward, backward, AdamW, scheduler
  lightning   Trainer.fit without logger, progress bar or callbacks
  + logging   with a TensorBoard logger (every 5 steps, as configs/pretrain.yaml) and the progress bar
  defaults    + configs/pretrain.yaml's callbacks: ModelSummary, ReconstructionGridLogger,
              OnlineLinearProbe (every step, on the step's own features), KNNMonitor,
              AtomicModelCheckpoint
  defaults, unmasked probe            the same with OnlineLinearProbe(features="unmasked")
  defaults, unmasked probe every 16   ... and every_n_steps=16

In turns: each round runs every variant for `--steps` steps (the module's weights carry on); the
step time is the median interval between consecutive step ends after the first of each run.
Per-epoch work (the kNN bank, the grid, the checkpoint) happens at validation and epoch ends, not
in these steps: it is timed once after the rounds and given as a share of an epoch of
`--epoch-images` training images.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from _common import device_line, emit, lit_config, markdown_table, median, number
from mfu import StepTimer, load_average
from lit_mae import LitMAE
from lit_mae.callbacks import AtomicModelCheckpoint, KNNMonitor, OnlineLinearProbe, ReconstructionGridLogger
from lit_mae.optim import param_groups_weight_decay, warmup_cosine_scheduler
from lit_mae.systems.base import step_generator
from lit_mae.visualize import reconstruction_grid

HEADERS = ["variant", "step ms", "images/s", "vs bare", "ms over bare", "share of the step %"]
VARIANTS = ["bare", "lightning", "+ logging", "defaults", "defaults, unmasked probe",
            "defaults, unmasked probe every 16"]


def batches(args: argparse.Namespace) -> DataLoader:
    """Normalised images (N, C, H, W) and labels, in memory, batched in order."""
    generator = torch.Generator().manual_seed(0)
    n = args.batch * (args.steps + 1)
    images = torch.randn(n, 3, args.img_size, args.img_size, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=args.batch, shuffle=False, drop_last=True)


class Variants:
    """One `LitMAE` and the ways of running `steps` steps of it."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.module = LitMAE(config=lit_config(args.preset, args.img_size), warmup_epochs=1.0)
        self.loader = batches(args)
        self.runs = 0

    def bare(self) -> list[float]:
        """The loop Lightning replaces, step for step (LitMAE's own lr, groups, masks)."""
        model, steps = self.module.model.train(), self.args.steps
        peak_lr = 1.5e-4 * self.args.batch / 256  # LitMAE's base_lr x batch / 256
        optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=peak_lr, betas=(0.9, 0.95))
        schedule = warmup_cosine_scheduler(optimizer, steps, min(steps, len(self.loader)), 0.0)
        timer = StepTimer()
        for step, (images, _) in enumerate(self.loader):
            if step == steps:
                break
            noise = torch.rand(images.shape[0], model.config.num_patches, generator=step_generator(0, step, 0))
            loss = model(images, noise=noise).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            timer.on_train_batch_end(None, self.module, None, None, step)
        return timer.intervals()

    def lightning(self, callbacks: list[Callback], logging_on: bool) -> list[float]:
        timer = StepTimer()
        self.runs += 1
        logger = TensorBoardLogger(str(self.root), name="overhead") if logging_on else False
        trainer = Trainer(accelerator="cpu", devices=1, max_steps=self.args.steps, limit_val_batches=0,
                          num_sanity_val_steps=0, logger=logger, log_every_n_steps=5,
                          enable_progress_bar=logging_on, enable_model_summary=False,
                          enable_checkpointing=any(isinstance(c, AtomicModelCheckpoint) for c in callbacks),
                          default_root_dir=str(self.root / f"run{self.runs}"), callbacks=[*callbacks, timer])
        trainer.fit(self.module, train_dataloaders=self.loader)
        shutil.rmtree(self.root / "checkpoints", ignore_errors=True)  # written after the last step
        return timer.intervals()

    def defaults(self, features: str = "step", probe_every: int = 1) -> list[Callback]:
        """configs/pretrain.yaml's callbacks (the probe told its classes: the loader is no DataModule)."""
        probe = OnlineLinearProbe(num_classes=10, lr=1e-2, every_n_steps=probe_every, features=features)
        return [ModelSummary(max_depth=2), ReconstructionGridLogger(every_n_epochs=10, num_images=8),
                probe, KNNMonitor(every_n_epochs=10),
                AtomicModelCheckpoint(dirpath=str(self.root / "checkpoints"), save_top_k=1, save_last="link")]

    def runners(self) -> dict[str, Callable[[], list[float]]]:
        return {"bare": self.bare, "lightning": lambda: self.lightning([], False),
                "+ logging": lambda: self.lightning([], True),
                "defaults": lambda: self.lightning(self.defaults(), True),
                "defaults, unmasked probe": lambda: self.lightning(self.defaults("unmasked"), True),
                "defaults, unmasked probe every 16": lambda: self.lightning(self.defaults("unmasked", 16), True)}


def per_epoch_costs(variants: Variants, args: argparse.Namespace, step_s: float) -> list[list[str]]:
    """Seconds of the per-epoch work, once each, and their share of an epoch of `--epoch-images`."""
    module, images = variants.module, next(iter(variants.loader))[0]
    encoder = module.model.encoder

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    with torch.no_grad():
        encode_s = timed(lambda: encoder.pool(encoder.forward_features(images), "cls")) / len(images)
    grid_s = timed(lambda: reconstruction_grid(module.model, images[:8], (0.5,) * 3, (0.25,) * 3, None, 0))
    path = variants.root / "timing.ckpt"
    optimizer = torch.optim.AdamW(module.parameters())
    for p in module.parameters():
        optimizer.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    save_s = timed(lambda: torch.save({"state_dict": module.state_dict(), "optimizer": optimizer.state_dict()}, path))
    epoch_s = args.epoch_images / args.batch * step_s
    every = 10  # configs/pretrain.yaml's every_n_epochs of the kNN monitor and the grid
    return [
        ["kNN bank (KNNMonitor, every 10 epochs): encode the training set", f"{encode_s * 1e3:.1f} ms per image",
         number(100 * encode_s * args.epoch_images / every / epoch_s)],
        ["reconstruction grid (every 10 epochs), 8 images", f"{grid_s * 1e3:.0f} ms",
         number(100 * grid_s / every / epoch_s)],
        ["checkpoint with AdamW state (every epoch)", f"{save_s * 1e3:.0f} ms", number(100 * save_s / epoch_s)],
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="steps per run (the first interval starts after one)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every variant, in turns")
    parser.add_argument("--epoch-images", type=int, default=1_281_167, help="an epoch for the per-epoch shares "
                                                                             "(ImageNet-1k's training set)")
    parser.add_argument("--smoke", action="store_true", help="32 px model, batch 4, 3 steps, 1 round")
    parser.add_argument("--markdown", help="also write the tables to this path")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.img_size, args.batch, args.steps, args.rounds = "smoke", 32, 4, 3, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lit_mae").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")  # Lightning's tips about short runs and loader workers
    start, load_before = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory() as temp:
        variants = Variants(args, Path(temp))
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for round_ in range(args.rounds):
            for name, run in variants.runners().items():
                seconds = run()
                times[name] += seconds
                print(f"  round {round_ + 1}: {name}: {' '.join(f'{s * 1e3:.0f}' for s in seconds)} ms", flush=True)
        steps = {name: median(values) for name, values in times.items()}
        epoch_rows = per_epoch_costs(variants, args, steps["lightning"])
    bare = steps["bare"]
    rows = [[name, number(s * 1e3), number(args.batch / s), f"{bare / s:.3f}", number((s - bare) * 1e3),
             number(100 * (s - bare) / s)] for name, s in steps.items()]
    text = "\n".join([
        f"## Lightning's overhead: {args.preset} at {args.img_size} px, batch {args.batch}, fp32, data in memory, "
        f"median of {args.rounds} x {args.steps - 1} steps",
        "",
        device_line(torch.device("cpu")),
        f"load average {load_before} before, {load_average()} after; {(time.perf_counter() - start) / 60:.1f} min",
        "",
        markdown_table(HEADERS, rows),
        "",
        "vs bare: images/s over the bare loop's; share of the step: (step - bare step) / step.",
        "",
        markdown_table(["per-epoch work", "cost", f"share of an epoch of {args.epoch_images} images %"], epoch_rows),
    ])
    emit(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
