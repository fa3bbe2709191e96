"""Where one forward's time goes, lit-mae beside transformers: the kernels (or CPU ops) of each.

    python benchmarks/profile_forward.py --device cuda --dtype fp32 --batch 1 --attn sdpa
    python benchmarks/profile_forward.py --smoke        # a tiny 32 px model on the CPU

Profiles one inference-mode forward with loss (masking, encoder, decoder, loss) of each
implementation, same weights and masking noise, after warm-up, with torch.profiler. Prints, per
implementation, the number of kernels launched (CUDA) or ops run (CPU), their total time and the
ops that take the most of it, so that a latency gap at small batches (launch-bound) can be traced
to the kernels that differ. Complements `inference.py`, which only times.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from _common import (IMPLS, Reference, autocast, device_line, emit, fixed_inputs, lit_config, loss_of,
                     markdown_table, number, resolve_device, synchronize)

HEADERS = ["implementation", "op", "calls", "self time ms", "share %"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", help="lit-mae preset name")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = torch.autocast")
    parser.add_argument("--top", type=int, default=12, help="ops listed per implementation")
    parser.add_argument("--smoke", action="store_true", help="tiny 32 px model, top 5")
    parser.add_argument("--markdown", help="also write the tables to this path")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.img_size, args.top = "smoke", 32, 5
    return args


def profile_forward(model: torch.nn.Module, images: torch.Tensor, noise: torch.Tensor,
                    args: argparse.Namespace, device: torch.device) -> list[tuple[str, int, float]]:
    """[(op name, calls, self seconds)] of one forward, on the device's clock (CUDA kernels) or the CPU's."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), autocast(device, args.dtype):
        for _ in range(3):  # warm-up: kernel selection, allocator
            loss_of(model, images, noise)
        synchronize(device)
        with profile(activities=activities) as profiler:
            loss_of(model, images, noise)
            synchronize(device)
    rows = []
    for event in profiler.key_averages():
        seconds = (event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total) / 1e6
        if seconds > 0:
            rows.append((event.key, event.count, seconds))
    return sorted(rows, key=lambda row: -row[2])


def table(impl: str, rows: list[tuple[str, int, float]], top: int) -> list[list[str]]:
    total = sum(seconds for _, _, seconds in rows)
    cells = [[impl, "(all)", str(sum(calls for _, calls, _ in rows)), number(total * 1e3), "100"]]
    cells += [[impl, name[:70].replace("|", "/"), str(calls), number(seconds * 1e3), number(100 * seconds / total)]
              for name, calls, seconds in rows[:top]]
    return cells


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cells = []
    with tempfile.TemporaryDirectory() as directory:
        reference = Reference(lit_config(args.preset, args.img_size), Path(directory))
        images, noise = fixed_inputs(reference.config, args.batch, device)
        for impl in IMPLS:
            model = reference.build(impl, args.attn).to(device).eval()
            cells += table(impl, profile_forward(model, images, noise, args, device), args.top)
    clock = "CUDA kernel time" if device.type == "cuda" else "CPU self time"
    emit("\n".join([
        f"## One forward, profiled: {args.preset}, {args.img_size} px, batch {args.batch}, {args.attn}, {args.dtype}",
        "",
        device_line(device),
        "",
        markdown_table(HEADERS, cells),
        "",
        f"self time: {clock} of each op, summed over its calls; (all): every op with a nonzero time, "
        "its calls the number of kernels launched (CUDA) or ops run (CPU).",
    ]), args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
