"""Forward latency of ViTMAEForPreTraining, lit-mae vs transformers: the ViTMAE docs' SDPA table.

    python benchmarks/inference.py --preset base --img-size 224 --batches 1,2,4,8
    python benchmarks/inference.py --device cuda --dtype bf16
    python benchmarks/inference.py --smoke             # a tiny 32 px model: proves the script runs

One forward (masking, encoder, decoder, loss) under torch.inference_mode, with the same weights
(transformers' random init, read back by lit-mae's `load_pretrained`) and the same masking noise;
eager and SDPA attention; fp32, or bf16 under torch.autocast. Median over `--repeats`, the device
synchronised around each call; lit-mae and transformers timed in turns (one forward each per
repeat).
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
import traceback
from pathlib import Path

import torch
from _common import (IMPLS, Reference, autocast, both, csv, describe_error, device_line, emit, fixed_inputs,
                     lit_config, loss_of, markdown_table, median, number, resolve_device, time_calls,
                     time_interleaved)

HEADERS = ["batch", "attention", "lit-mae ms", "transformers ms", "speedup (HF/lit)"]
Key = tuple[int, str, str]  # (batch, attention, implementation)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", help="lit-mae preset name")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batches", type=lambda text: [int(b) for b in csv(text)], default=[1, 2, 4, 8])
    parser.add_argument("--attn", choices=["sdpa", "eager", "both"], default="both")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = torch.autocast")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny 32 px model, batches 1,2, 1 repeat")
    parser.add_argument("--markdown", help="also write the table to this path")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.img_size, args.batches, args.repeats, args.warmup = "smoke", 32, [1, 2], 1, 1
    return args


def measure_all(reference: Reference, args: argparse.Namespace, device: torch.device) -> dict[Key, float | str]:
    """{(batch, attention, implementation): seconds, or an error cell}; a failure does not stop the rest.

    For each (attention, batch) the implementations are timed in turns, one forward each per
    repeat, so that load on the machine hits both alike."""
    results: dict[Key, float | str] = {}
    for attn in both(args.attn, ("eager", "sdpa")):
        models = {impl: reference.build(impl, attn).to(device).eval() for impl in IMPLS}
        for batch in args.batches:
            images, noise = fixed_inputs(reference.config, batch, device)
            forwards = {impl: partial(loss_of, model, images, noise) for impl, model in models.items()}
            try:
                with torch.inference_mode(), autocast(device, args.dtype):
                    for forward in forwards.values():
                        time_calls(forward, device, 0, args.warmup)
                    times = time_interleaved(forwards, device, args.repeats)
                for impl in IMPLS:
                    results[batch, attn, impl] = median(times[impl])
            except Exception as error:  # noqa: BLE001 - one failure must not end the table
                traceback.print_exc()
                for impl in IMPLS:
                    results[batch, attn, impl] = describe_error(error)
            print(f"  batch {batch} {attn}: " + ", ".join(f"{impl} {ms_cell(results[batch, attn, impl])} ms"
                                                          for impl in IMPLS), flush=True)
        del models
    return results


def ms_cell(value: float | str) -> str:
    """Seconds as milliseconds; an error cell as it is."""
    return number(value * 1e3) if isinstance(value, float) else value


def format_rows(results: dict[Key, float | str]) -> list[list[str]]:
    """One row per (batch, attention): both latencies in ms and transformers/lit-mae."""
    rows = []
    for batch, attn in sorted({key[:2] for key in results}):
        lit, hf = results[batch, attn, "lit-mae"], results[batch, attn, "transformers"]
        speedup = f"{hf / lit:.2f}" if isinstance(lit, float) and isinstance(hf, float) else "—"
        rows.append([str(batch), attn, ms_cell(lit), ms_cell(hf), speedup])
    return rows


def report(args: argparse.Namespace, device: torch.device, rows: list[list[str]]) -> str:
    precision = "bf16 autocast" if args.dtype == "bf16" else "fp32"
    return "\n".join([
        f"## ViTMAEForPreTraining forward (inference_mode): {args.preset}, {args.img_size} px, {precision}, "
        f"median of {args.repeats} after {args.warmup} warm-up",
        "",
        device_line(device),
        "",
        markdown_table(HEADERS, rows),
        "",
        "forward = masking, encoder, decoder and loss; same weights and masking noise for both.",
        "speedup (HF/lit): transformers ms over lit-mae ms (above 1: lit-mae faster).",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as directory:
        reference = Reference(lit_config(args.preset, args.img_size), Path(directory))
        results = measure_all(reference, args, device)
    emit(report(args, device, format_rows(results)), args.markdown)
    return 1 if any(isinstance(value, str) for value in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
