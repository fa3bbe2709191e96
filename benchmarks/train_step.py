"""Pretraining steps/s of lit-mae vs transformers' ViTMAEForPreTraining: same weights, same noise.

    python benchmarks/train_step.py --presets tiny,small,base --img-size 224 --batch 16
    python benchmarks/train_step.py --presets base --batch 64 --device cuda --dtype bf16 --compile both
    python benchmarks/train_step.py --smoke            # a tiny 32 px model: proves the script runs

One step = forward with loss, backward, AdamW step; the same images and masking noise every step.
transformers builds the random init and saves it; lit-mae reads it back with `load_pretrained`.
Reported: median step time over `--repeats` (device synchronised around each step; the rows of a
(preset, attention) group timed in turns, one step each per repeat), images/s, the step-rate ratios
to transformers in the same compile mode and to transformers without compile, peak memory (CUDA
only), model FLOPs per step (forward + backward, counted once with FlopCounterMode), achieved
FLOP/s and MFU against a square-matmul peak measured in the same run, in the benchmark dtype, on
the same device.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from _common import (IMPLS, Reference, autocast, both, csv, describe_error, device_line, emit, fixed_inputs,
                     lit_config, loss_of, markdown_table, matmul_peak, median, number, peak_sizes, resolve_device,
                     synchronize, time_interleaved)

HEADERS = ["preset", "attention", "compile", "implementation", "step ms", "images/s", "lit/HF rate",
           "lit/HF-eager rate", "peak GiB", "GFLOP/step", "TFLOP/s", "MFU %", "loss@step0"]


@dataclass
class Measurement:
    preset: str
    attn: str
    compile: str
    impl: str
    step_s: float | None = None  # median seconds per step
    peak_bytes: int | None = None  # CUDA max allocated; None on CPU
    loss0: float | None = None  # loss of the first step, before any update: equal weights agree here
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", type=csv, default=["tiny", "small", "base"], help="lit-mae preset names")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = torch.autocast")
    parser.add_argument("--attn", choices=["sdpa", "eager", "both"], default="sdpa")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off", help="torch.compile the model")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles)")
    parser.add_argument("--smoke", action="store_true", help="tiny 32 px model, batch 2, 1 repeat")
    parser.add_argument("--markdown", help="also write the table to this path")
    args = parser.parse_args(argv)
    if args.smoke:
        args.presets, args.img_size, args.batch, args.repeats, args.warmup = ["smoke"], 32, 2, 1, 1
    return args


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, noise: Tensor,
               device: torch.device, dtype: str) -> Callable[[], Tensor]:
    """One pretraining step as a closure: forward with loss (autocast if bf16), backward, AdamW."""

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = loss_of(model, images, noise)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def prepare(reference: Reference, row: Measurement, images: Tensor, noise: Tensor,
            args: argparse.Namespace, device: torch.device) -> Callable[[], Tensor]:
    """Build a fresh model of `row`, run its warm-up steps (the first compiles) and return its step.

    Fills `row.loss0` and, on CUDA, `row.peak_bytes`: the peak over the warm-up above what was
    allocated before the build (so other models alive in the same group do not count)."""
    baseline = 0
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    model = reference.build(row.impl, row.attn).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    runner = torch.compile(model) if row.compile == "on" else model
    step = train_step(runner, optimizer, images, noise, device, args.dtype)
    row.loss0 = step().item()
    for _ in range(args.warmup - 1):
        step()
    if device.type == "cuda":
        synchronize(device)
        row.peak_bytes = torch.cuda.max_memory_allocated(device) - baseline
    return step


def measure_group(reference: Reference, rows: list[Measurement], images: Tensor, noise: Tensor,
                  args: argparse.Namespace, device: torch.device) -> None:
    """Time the rows of one (preset, attention) in turns, one step of each per repeat; failures are
    recorded in the row and the others go on."""
    torch._dynamo.reset()  # fresh compiles per group; keeps dynamo's recompile limit out of reach
    steps = {}
    for row in rows:
        try:
            steps[row.compile, row.impl] = prepare(reference, row, images, noise, args, device)
        except Exception as error:  # noqa: BLE001 - one failure must not end the table
            traceback.print_exc()
            row.error = describe_error(error)
    try:
        times = time_interleaved(steps, device, args.repeats)
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        for row in rows:
            row.error = row.error or describe_error(error)
        return
    for row in rows:
        if (row.compile, row.impl) in times:
            row.step_s = median(times[row.compile, row.impl])
        print(f"  {row.preset} {row.attn} compile={row.compile} {row.impl}: "
              f"{row.error or f'{row.step_s * 1e3:.1f} ms/step'}", flush=True)


def count_flops(reference: Reference, images: Tensor, noise: Tensor) -> int:
    """Model FLOPs of forward + backward, with eager attention so that every matmul is seen."""
    model = reference.build("lit-mae", "eager").to(images.device).train()
    with FlopCounterMode(display=False) as counter:
        loss_of(model, images, noise).backward()
    return counter.get_total_flops()


def format_rows(rows: list[Measurement], flops: dict[str, int | None], peak: float, batch: int) -> list[list[str]]:
    """Table cells; the ratios sit on the lit-mae rows: against transformers in the same compile mode
    and against transformers without compile (its eager mode)."""
    step_s = {(r.preset, r.attn, r.compile, r.impl): r.step_s for r in rows}
    cells = []
    for r in rows:
        key = (r.preset, r.attn, r.compile, r.impl)
        if r.step_s is None:
            cells.append([*key, r.error or "failed", *[""] * (len(HEADERS) - 5)])
            continue
        ratios = []
        for compiled in (r.compile, "off"):
            hf_s = step_s.get((r.preset, r.attn, compiled, "transformers"))
            ratios.append(f"{hf_s / r.step_s:.2f}" if r.impl == "lit-mae" and hf_s else "—")
        peak_gib = f"{r.peak_bytes / 2**30:.2f}" if r.peak_bytes is not None else "n/a"
        flop = flops.get(r.preset)
        flop_cells = ["n/a"] * 3 if flop is None else [  # GFLOP/step, TFLOP/s, MFU %
            number(flop / 1e9), number(flop / r.step_s / 1e12), number(100 * flop / r.step_s / peak)]
        cells.append([*key, number(r.step_s * 1e3), number(batch / r.step_s), *ratios, peak_gib, *flop_cells,
                      f"{r.loss0:.5f}"])
    return cells


def report(args: argparse.Namespace, device: torch.device, rows: list[Measurement], flops: dict[str, int | None],
           peak: float, peak_size: int) -> str:
    """Header lines, the markdown table and what its columns mean."""
    precision = "bf16 autocast" if args.dtype == "bf16" else "fp32"
    lines = [
        f"## Pretraining step: {args.img_size} px, batch {args.batch}, {precision}, "
        f"median of {args.repeats} after {args.warmup} warm-up",
        "",
        device_line(device),
        "",
        markdown_table(HEADERS, format_rows(rows, flops, peak, args.batch)),
        "",
        "step = forward with loss + backward + AdamW step; same weights and masking noise for both.",
        "lit/HF rate: lit-mae steps/s over transformers steps/s in the same compile mode (above 1: lit-mae "
        "faster); lit/HF-eager rate: over transformers without compile.",
        "Timed in turns: each repeat runs one step of every row of a (preset, attention) group, so that "
        "load on the machine hits all rows alike.",
        "peak GiB: torch.cuda.max_memory_allocated over the warm-up steps, above what was allocated before "
        "the model was built (weights, grads, AdamW state, activations); n/a: not measured on CPU.",
        "GFLOP/step: FlopCounterMode, forward + backward, counted once per preset (lit-mae, eager attention).",
        f"MFU: achieved FLOP/s over the matmul peak measured in this run: {peak / 1e12:.3f} TFLOP/s, a "
        f"{peak_size}x{peak_size} {args.dtype} matmul (the fastest of sizes {', '.join(map(str, peak_sizes(device, args.smoke)))}, "
        f"median of 5 each, measured before and after the steps).",
    ]
    return "\n".join(lines)


def run_preset(preset: str, args: argparse.Namespace, device: torch.device,
               flops: dict[str, int | None]) -> list[Measurement]:
    """Every (attention, compile, implementation) measurement of one preset; failures are recorded."""
    config = lit_config(preset, args.img_size)
    images, noise = fixed_inputs(config, args.batch, device)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        reference = Reference(config, Path(directory))
        try:
            flops[preset] = count_flops(reference, images, noise)
        except Exception:  # noqa: BLE001 - timings are still worth having
            traceback.print_exc()
            flops[preset] = None
        for attn in both(args.attn, ("sdpa", "eager")):
            group = [Measurement(preset, attn, compiled, impl)
                     for compiled in both(args.compile, ("off", "on")) for impl in IMPLS]
            measure_group(reference, group, images, noise, args, device)
            rows += group
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    sizes = peak_sizes(device, args.smoke)
    before = matmul_peak(device, args.dtype, sizes)
    flops: dict[str, int | None] = {}
    rows = [row for preset in args.presets for row in run_preset(preset, args, device, flops)]
    peak, peak_size = max(before, matmul_peak(device, args.dtype, sizes))  # the better of before and after
    emit(report(args, device, rows, flops, peak, peak_size), args.markdown)
    return 1 if any(row.error for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
