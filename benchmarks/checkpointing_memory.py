"""Activation checkpointing: memory saved and time paid, pretraining step of one model (CPU or GPU).

    python benchmarks/checkpointing_memory.py                    # ViT-L/16, 224 px, batch 8, fp32 (CPU)
    python benchmarks/checkpointing_memory.py --device cuda --batch 64 --dtype bf16
    python benchmarks/checkpointing_memory.py --smoke            # a 32 px model: proves the script runs

Each variant (off, on) runs in a fresh Python process, in turns (off, on, off, on, ...): the model
(`MaskedAutoencoderViT`, `activation_checkpointing` off or on), AdamW, `--steps` steps of forward,
backward and update on fixed images and masks. Each process reports:

  saved MiB   the activations autograd keeps for backward during one forward (torch's saved-tensor
              hooks; each storage once, weights left out): what checkpointing drops, counted exactly
  peak MiB    the process's peak resident memory (getrusage ru_maxrss: weights, gradients, AdamW
              state, activations, allocator slack) on CPU; torch.cuda.max_memory_allocated on CUDA
  step ms     median step time after the first step (which allocates AdamW's state)
  loss        of the first step: equal in both variants
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time

import torch

from _common import DTYPES, autocast, device_line, emit, lit_config, markdown_table, median, number, synchronize
from lit_mae.models import MaskedAutoencoderViT
from mfu import load_average

HEADERS = ["activation checkpointing", "saved for backward MiB", "peak MiB", "step ms", "loss@step0"]


def child(args: argparse.Namespace) -> dict[str, float]:
    """One variant, in this process: the measurements as a dict."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(lit_config(args.preset, args.img_size)).to(device).train()
    model.activation_checkpointing = args.checkpointing == "on"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=generator).to(device)
    noise = torch.rand(args.batch, model.config.num_patches, generator=generator).to(device)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}  # storage address -> bytes: a tensor saved by several ops counts once

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # activations only, not the weights an op keeps
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    times, loss0 = [], None
    for step in range(args.steps):
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if step == 0 else contextlib.nullcontext():
            with autocast(device, args.dtype):
                loss = model(images, noise=noise).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
        loss0 = loss.item() if loss0 is None else loss0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"saved": sum(kept.values()), "peak": peak, "step": median(times[1:] or times), "loss": loss0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="large")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = torch.autocast")
    parser.add_argument("--steps", type=int, default=3, help="steps per process; the first is not timed")
    parser.add_argument("--repeats", type=int, default=2, help="processes per variant, in turns")
    parser.add_argument("--checkpointing", choices=["off", "on"], help=argparse.SUPPRESS)  # the child's variant
    parser.add_argument("--smoke", action="store_true", help="32 px model, batch 2, 2 steps, 1 repeat")
    parser.add_argument("--markdown", help="also write the table to this path")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.img_size, args.batch, args.steps, args.repeats = "smoke", 32, 2, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.checkpointing:  # a child: measure and answer on the last line
        print(json.dumps(child(args)))
        return 0
    argv = list(sys.argv[1:] if argv is None else argv)
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    load_before = load_average()
    for _ in range(args.repeats):
        for variant in results:
            out = subprocess.run([sys.executable, __file__, *argv, "--checkpointing", variant], check=True,
                                 capture_output=True, text=True).stdout
            results[variant].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  {variant}: {results[variant][-1]}", flush=True)
    rows, mib = [], 2**20
    for variant, runs in results.items():
        rows.append([variant, number(median(r["saved"] for r in runs) / mib), number(median(r["peak"] for r in runs) / mib),
                     number(median(r["step"] for r in runs) * 1e3), f"{runs[0]['loss']:.6f}"])
    off, on = ({k: median(r[k] for r in results[v]) for k in ("saved", "peak", "step")} for v in ("off", "on"))
    precision = "bf16 autocast" if args.dtype == "bf16" else args.dtype
    text = "\n".join([
        f"## Activation checkpointing: {args.preset} at {args.img_size} px, batch {args.batch}, {precision}, "
        f"{args.repeats} fresh processes per variant, in turns",
        "",
        device_line(torch.device(args.device)),
        f"load average {load_before} before, {load_average()} after",
        "",
        markdown_table(HEADERS, rows),
        "",
        f"checkpointing saves {number((off['saved'] - on['saved']) / mib)} MiB of saved activations "
        f"({100 * (1 - on['saved'] / off['saved']):.0f}%) and {number((off['peak'] - on['peak']) / mib)} MiB of peak "
        f"memory ({100 * (1 - on['peak'] / off['peak']):.0f}%), for {100 * (on['step'] / off['step'] - 1):+.0f}% step time.",
        "peak: " + ("torch.cuda.max_memory_allocated." if args.device == "cuda" else
                    "ru_maxrss of the variant's own process (weights, gradients, AdamW state, activations)."),
    ])
    emit(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
