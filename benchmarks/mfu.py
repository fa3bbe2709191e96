"""Model-FLOP utilisation of the whole Lightning pretraining step, as a user runs it.

    python benchmarks/mfu.py                                    # CPU: tiny and small, fp32 and bf16-mixed
    python benchmarks/mfu.py --device cuda --presets base,large --batch 64 --precisions bf16-mixed \
        --compile both --workers 12 --steps 20 --rounds 2       # GPU (see RESULTS.md)
    python benchmarks/mfu.py --smoke                            # a 32 px model: proves the script runs

What runs: `LitMAE(preset, img_size)` in a `Trainer` (the given precision, a TensorBoard logger
logging every 5 steps, the progress bar), fed by `ImageFolderDataModule` over generated JPEGs
(benchmarks/dataloading.py's ImageNet-like files, `augment: pretrain`, labels from class folders)
through `--workers` loader processes, AdamW with the warmup-cosine schedule; with and without
`OnlineLinearProbe` (its defaults: every step, on the step's own features; `--probe-features
unmasked` encodes the full images once more, the cost measured apart). Rows of a preset are timed in turns: each round fits every row
for `--steps` steps with a fresh Trainer (the module and its weights carry on), and the step time
is the median interval between consecutive batch ends after the first of each fit (so start-up,
worker spawning and compiling are outside it); a first, untimed round warms every row up.

FLOPs: one real step of each preset is counted with FlopCounterMode, from the start of the batch to
the optimizer step (the MAE's forward + backward: model FLOPs) and on to the batch end (the probe's
head, and its extra forward with `--probe-features unmasked`); attention runs eager in that step, so that its matmuls are counted without the
recomputation of fused kernels. MFU = model FLOPs per second / the best square-matmul rate of
the precision's dtype (fp32 or bf16), measured in the same run before and after the steps.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.flop_counter import FlopCounterMode

from _common import (csv, device_line, emit, lit_config, markdown_table, matmul_peak, median, number, peak_sizes,
                     resolve_device, synchronize)
from dataloading import prepare_images
from lit_mae import LitMAE
from lit_mae.callbacks import OnlineLinearProbe
from lit_mae.datamodules import ImageFolderDataModule
from lit_mae.models import MAEConfig
from lit_mae.models.layers import Attention
from lit_mae.models.ops import num_kept

PROBE_WORK = {"step": "its head on the step's features", "unmasked": "its forward of the full images and its head"}
HEADERS = ["preset", "precision", "compile", "probe", "step ms", "images/s", "model GFLOP/image",
           "probe GFLOP/image", "model TFLOP/s", "MFU %"]
DTYPE_OF = {"32-true": "fp32", "bf16-mixed": "bf16"}


# --- FLOPs -----------------------------------------------------------------------------------------
def linear_flops(tokens: int, width: int, out: int) -> int:
    return 2 * tokens * width * out


def blocks_flops(tokens: int, width: int, mlp_ratio: float, depth: int) -> int:
    """Forward FLOPs of `depth` pre-norm blocks on (1, tokens, width): qkv, proj, fc1, fc2 and the
    two attention matmuls (q k^T and weights v), 2 FLOPs per multiply-add."""
    hidden = round(width * mlp_ratio)
    per_block = (linear_flops(tokens, width, 3 * width) + linear_flops(tokens, width, width)
                 + 2 * linear_flops(tokens, width, hidden) + 2 * 2 * tokens * tokens * width)
    return depth * per_block


def analytic_step_flops(config: MAEConfig) -> int:
    """Model FLOPs of one image's pretraining forward + backward, counted by hand: the encoder on
    1+K tokens, the decoder on 1+L; backward is twice the forward, but for the patch embedding,
    whose input (the images) needs no gradient."""
    L, K = config.num_patches, num_kept(config.num_patches, config.mask_ratio)
    D, Dd, pixels = config.embed_dim, config.decoder_embed_dim, config.patch_size**2 * config.in_chans
    patch_embed = linear_flops(L, pixels, D)
    rest = (blocks_flops(1 + K, D, config.mlp_ratio, config.depth) + linear_flops(1 + K, D, Dd)
            + blocks_flops(1 + L, Dd, config.decoder_mlp_ratio, config.decoder_depth)
            + linear_flops(1 + L, Dd, pixels))
    return 2 * patch_embed + 3 * rest


@contextlib.contextmanager
def eager_attention(module: torch.nn.Module) -> Iterator[None]:
    """Every `Attention` of `module` computes its weights explicitly inside (FlopCounterMode sees
    no FLOPs in CPU SDPA kernels, and counts the GPU kernels' backward recomputation)."""
    attentions = [m for m in module.modules() if isinstance(m, Attention)]
    saved = [m.implementation for m in attentions]
    for m in attentions:
        m.implementation = "eager"
    try:
        yield
    finally:
        for m, implementation in zip(attentions, saved):
            m.implementation = implementation


class StepFlops(Callback):
    """FLOPs of training batch `at`: up to the optimizer step (forward + backward) and the rest of
    the batch (callbacks' work, as the online probe's forward). Put it last among the callbacks."""

    def __init__(self, at: int = 1) -> None:
        self.at, self.model, self.after = at, 0, 0
        self._counter: FlopCounterMode | None = None
        self._eager: contextlib.ExitStack | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.at:
            self._eager = contextlib.ExitStack()
            self._eager.enter_context(eager_attention(pl_module))
            self._counter = self._eager.enter_context(FlopCounterMode(display=False))

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self._counter is not None:
            self.model = self._counter.get_total_flops()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._counter is not None:
            self.after = self._counter.get_total_flops() - self.model
            self._eager.close()
            self._counter = self._eager = None


class StepTimer(Callback):
    """perf_counter at every training batch end (device synchronised): consecutive differences
    are whole steps, data loading, hooks and logging included."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        synchronize(pl_module.device)
        self.ends.append(time.perf_counter())

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


# --- one row ------------------------------------------------------------------------------------
@dataclass
class Row:
    preset: str
    precision: str
    compile: bool
    probe: bool
    module: LitMAE | None = None
    seconds: list[float] = field(default_factory=list)  # step intervals over all rounds


def build_module(preset: str, img_size: int, compile: bool) -> LitMAE:
    config = lit_config(preset, img_size)
    return LitMAE(config=config, compile=compile, warmup_epochs=1.0)


def datamodule(root: Path, args: argparse.Namespace) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), labels="folders", image_size=args.img_size, augment="pretrain",
                                 batch_size=args.batch, num_workers=args.workers, pin_memory=args.device == "cuda",
                                 persistent_workers=True)


def fit(module: LitMAE, root: Path, args: argparse.Namespace, precision: str, callbacks: list[Callback],
        steps: int, log_dir: Path) -> None:
    """`steps` training steps of `module` in a fresh Trainer, as a user's fit (no validation)."""
    trainer = Trainer(accelerator=args.device, devices=1, precision=precision, max_steps=steps,
                      limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                      enable_model_summary=False, log_every_n_steps=5,
                      logger=TensorBoardLogger(str(log_dir), name="mfu"), callbacks=callbacks)
    trainer.fit(module, datamodule=datamodule(root, args))


def probe(args: argparse.Namespace) -> OnlineLinearProbe:
    return OnlineLinearProbe(features=args.probe_features)


def count_flops(preset: str, root: Path, args: argparse.Namespace, log_dir: Path) -> tuple[int, int]:
    """(model, probe) FLOPs of one real step of `preset`, per step (not per image), uncompiled."""
    counter = StepFlops(at=1)
    module = build_module(preset, args.img_size, compile=False)
    fit(module, root, args, args.precisions[0], [probe(args), counter], steps=2, log_dir=log_dir)
    return counter.model, counter.after


def time_rows(rows: list[Row], root: Path, args: argparse.Namespace, log_dir: Path) -> None:
    """Fit every row for `args.steps` steps, `args.rounds` times in turns, after an untimed round
    (compiling, and the first use of each precision's kernels, took seconds of several steps)."""
    for round_ in range(args.rounds + 1):
        for row in rows:
            if row.module is None:
                row.module = build_module(row.preset, args.img_size, row.compile)
            timer = StepTimer()
            callbacks = [probe(args), timer] if row.probe else [timer]
            fit(row.module, root, args, row.precision, callbacks, args.steps, log_dir)
            if round_ > 0:
                row.seconds += timer.intervals()
            print(f"  {f'round {round_}' if round_ else 'warm-up'}: {row.preset} {row.precision} "
                  f"compile={row.compile} probe={row.probe}: "
                  f"{' '.join(f'{s * 1e3:.0f}' for s in timer.intervals())} ms", flush=True)
    for row in rows:
        row.module = None  # free the weights before the next preset


# --- the run ------------------------------------------------------------------------------------
def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast is worth measuring: always on CUDA; on a CPU when a bf16 matmul beats fp32's
    (native bf16 instructions, as AVX512-BF16 or AMX; emulated bf16 is slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return matmul_peak(device, "bf16", (512,), repeats=3)[0] > matmul_peak(device, "fp32", (512,), repeats=3)[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", type=csv, default=["tiny", "small"])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", type=csv, default=None,
                        help="32-true and/or bf16-mixed (default: both where the device has bf16 matmuls)")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off")
    parser.add_argument("--probe", choices=["off", "on", "both"], default="both", help="OnlineLinearProbe rows")
    parser.add_argument("--probe-features", choices=["step", "unmasked"], default="step",
                        help="what the probe trains on (OnlineLinearProbe.features)")
    parser.add_argument("--workers", type=int, default=2, help="loader processes")
    parser.add_argument("--steps", type=int, default=4, help="steps per fit (the first interval starts after one)")
    parser.add_argument("--rounds", type=int, default=2, help="timed fits of every row, in turns, after a warm-up fit")
    parser.add_argument("--images", type=Path, help="folder of generated JPEGs (made if missing; default: temp)")
    parser.add_argument("--smoke", action="store_true", help="32 px model, batch 4, 1 worker, 2 steps, 1 round")
    parser.add_argument("--markdown", help="also write the table to this path")
    args = parser.parse_args(argv)
    if args.smoke:
        args.presets, args.img_size, args.batch, args.workers, args.steps, args.rounds = ["smoke"], 32, 4, 1, 2, 1
    return args


def load_average() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "n/a"


def report(args: argparse.Namespace, device: torch.device, rows: list[Row], flops: dict[str, tuple[int, int]],
           peaks: dict[str, tuple[float, int]], loads: tuple[str, str], minutes: float) -> str:
    cells = []
    for row in rows:
        model, probe = flops[row.preset]
        step = median(row.seconds)
        rate = model / step
        cells.append([row.preset, row.precision, "on" if row.compile else "off", "on" if row.probe else "off",
                      number(step * 1e3), number(args.batch / step), number(model / args.batch / 1e9),
                      number(probe / args.batch / 1e9) if row.probe else "—", number(rate / 1e12),
                      number(100 * rate / peaks[DTYPE_OF[row.precision]][0])])
    checks = ", ".join(f"{preset} {flops[preset][0] / args.batch / analytic_step_flops(lit_config(preset, args.img_size)):.4f}"
                       for preset in flops)
    peak_text = "; ".join(f"{dtype} {rate / 1e12:.3f} TFLOP/s ({size}x{size})" for dtype, (rate, size) in peaks.items())
    return "\n".join([
        f"## Lightning pretraining step: {args.img_size} px, batch {args.batch}, {args.workers} loader workers, "
        f"median of {args.rounds} x {args.steps - 1} steps after a warm-up round",
        "",
        device_line(device),
        f"load average {loads[0]} before, {loads[1]} after; {minutes:.1f} min",
        "",
        markdown_table(HEADERS, cells),
        "",
        "step: median interval between training batch ends (JPEG decoding in the loader workers, transfer, "
        "normalisation, forward, backward, AdamW, schedule, logging, progress bar, callbacks); the rows of a "
        "preset timed in turns, each fit of a round with a fresh Trainer.",
        "model GFLOP/image: FlopCounterMode over one real step (eager attention), batch start to optimizer step; "
        f"probe GFLOP/image: the rest of the batch (OnlineLinearProbe(features={args.probe_features!r}): "
        f"{PROBE_WORK[args.probe_features]}).",
        f"counted / analytic model FLOPs (analytic_step_flops): {checks}.",
        f"MFU: model FLOP/s over the matmul peak of the precision's dtype, measured in this run: {peak_text} "
        f"(the best of sizes {', '.join(map(str, peak_sizes(device, args.smoke)))} before and after the steps).",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")  # the short-run and worker-count tips
    if args.precisions is None:
        args.precisions = ["32-true", "bf16-mixed"] if bf16_supported(device) else ["32-true"]
    start, load_before = time.perf_counter(), load_average()
    dtypes = sorted({DTYPE_OF[p] for p in args.precisions})
    sizes = peak_sizes(device, args.smoke)
    before = {dtype: matmul_peak(device, dtype, sizes) for dtype in dtypes}
    with tempfile.TemporaryDirectory() as temp:
        root = args.images or Path(temp) / "jpegs"
        count = max(64, 2 * args.batch * (args.steps + 1))
        prepare_images(root, count, 0.25 if args.smoke else 1.0, seed=0)
        flops, rows = {}, []
        for preset in args.presets:
            flops[preset] = count_flops(preset, root, args, Path(temp) / "logs")
            group = [Row(preset, precision, compile == "on", probe == "on") for precision in args.precisions
                     for compile in (["off", "on"] if args.compile == "both" else [args.compile])
                     for probe in (["off", "on"] if args.probe == "both" else [args.probe])]
            time_rows(group, root, args, Path(temp) / "logs")
            rows += group
    peaks = {dtype: max(before[dtype], matmul_peak(device, dtype, sizes)) for dtype in dtypes}
    emit(report(args, device, rows, flops, peaks, (load_before, load_average()),
                (time.perf_counter() - start) / 60), args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
