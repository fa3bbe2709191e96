"""Memory soak: a tiny LitMAE pretrains for thousands of steps on CPU (Lightning Trainer, CSV logger,
a validation pass every epoch, SyntheticDataModule with persistent loader workers), and the resident
memory of the main process and its workers is sampled every N steps. Prints a table and the growth
from the end of warm-up to the end, with a verdict against a threshold (5 %).

    python benchmarks/soak.py                 # 3000 steps, 2 workers, a sample every 100 steps
    python benchmarks/soak.py --smoke         # 40 steps: the script works (no verdict enforced)

RSS comes from /proc (Linux; no psutil needed): VmRSS of each process, summed over the main process
and its descendants. Forked workers share copy-on-write pages with the main process, so the RSS sum
counts those twice; PSS (/proc/<pid>/smaps_rollup) splits shared pages and is shown beside it.
The validation loader's persistent workers join at the first validation (end of epoch 1, step 128),
hence the default warm-up of 500 steps before the baseline.
Exit status 1 when the RSS growth exceeds the threshold (not with --smoke).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/soak.py` puts benchmarks/, not the root, first
    sys.path.insert(0, str(REPO_ROOT))

from lit_mae import LitMAE, MAEConfig  # noqa: E402
from lit_mae.datamodules import SyntheticDataModule  # noqa: E402

MIB = 2**20
HEADERS = ["step", "seconds", "main RSS MiB", "workers", "workers RSS MiB", "total RSS MiB", "total PSS MiB"]


# --- reading /proc --------------------------------------------------------------------------------

def _status_kib(pid: int, field: str, file: str = "status") -> int:
    """A `field: N kB` line of /proc/<pid>/<file> in KiB (0 when the process or line is gone)."""
    try:
        with open(f"/proc/{pid}/{file}") as lines:
            for line in lines:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (loader workers and whatever they start), from /proc/*/stat."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])  # field 4: ppid
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def memory_sample(pid: int) -> dict[str, float]:
    """RSS of `pid` and of its descendants, and the PSS total, in MiB."""
    workers = descendants(pid)
    main = _status_kib(pid, "VmRSS") / 1024
    rest = sum(_status_kib(child, "VmRSS") for child in workers) / 1024
    pss = sum(_status_kib(p, "Pss", "smaps_rollup") for p in [pid, *workers]) / 1024
    return {"main": main, "workers": float(len(workers)), "workers_rss": rest, "total": main + rest, "pss": pss}


class MemorySampler(Callback):
    """A memory sample after every `every`-th optimizer step (and after the last)."""

    def __init__(self, every: int) -> None:
        self.every, self.rows, self.start = every, [], time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self.rows.append({"step": step, "seconds": time.perf_counter() - self.start,
                              **memory_sample(os.getpid())})


# --- the run ---------------------------------------------------------------------------------------

def tiny_config() -> MAEConfig:
    """32 px images, 8 px patches, 2+1 blocks 64/32 wide: milliseconds a step on one core."""
    return MAEConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                     decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)


def soak(steps: int, every: int, workers: int, batch_size: int, log_dir: Path) -> list[dict[str, float]]:
    torch.set_num_threads(1)  # a tiny model; the loader workers get the other cores
    data = SyntheticDataModule(num_samples=2048, val_samples=2 * batch_size, test_samples=0, image_size=32,
                               augment="pretrain", batch_size=batch_size, num_workers=workers,
                               persistent_workers=workers > 0)
    model = LitMAE(config=tiny_config(), lr=1e-3, warmup_epochs=1)
    sampler = MemorySampler(every)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=CSVLogger(log_dir, name="soak"),
                      log_every_n_steps=50, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=[sampler])
    trainer.fit(model, data)
    return sampler.rows


def growth(rows: list[dict[str, float]], warmup: int, key: str = "total") -> tuple[dict[str, float], float]:
    """(the first sample at or after `warmup` steps, growth in % from it to the last sample)."""
    base = next((row for row in rows if row["step"] >= warmup), rows[-1])
    return base, 100.0 * (rows[-1][key] - base[key]) / base[key]


def table(rows: list[dict[str, float]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("-" * (len(h) + 2) for h in HEADERS) + "|"]
    for row in rows:
        cells = [f"{row['step']:.0f}", f"{row['seconds']:.1f}", f"{row['main']:.1f}", f"{row['workers']:.0f}",
                 f"{row['workers_rss']:.1f}", f"{row['total']:.1f}", f"{row['pss']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=100, help="steps between samples")
    parser.add_argument("--warmup", type=int, default=500, help="steps before the growth baseline")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threshold", type=float, default=5.0, help="allowed RSS growth in %%")
    parser.add_argument("--smoke", action="store_true", help="40 steps, a sample every 10, warm-up 10")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.every, args.warmup = 40, 10, 10
    if not Path("/proc/self/status").exists():
        print("soak.py reads memory from /proc: Linux only", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as log_dir:
        rows = soak(args.steps, args.every, args.workers, args.batch_size, Path(log_dir))
    base, rss_growth = growth(rows, args.warmup)
    _, pss_growth = growth(rows, args.warmup, "pss")
    text = table(rows)
    print(f"soak: {args.steps} steps, {args.workers} workers, batch {args.batch_size}, torch {torch.__version__}, "
          f"device: CPU\n\n{text}\n")
    passed = rss_growth <= args.threshold
    print(f"growth after warm-up (step {base['step']:.0f} -> {rows[-1]['step']:.0f}): total RSS "
          f"{base['total']:.1f} -> {rows[-1]['total']:.1f} MiB ({rss_growth:+.2f} %), total PSS {pss_growth:+.2f} %")
    print(f"verdict: {'PASS' if passed else 'FAIL'} (RSS growth {rss_growth:+.2f} % vs threshold {args.threshold} %)")
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return 0 if passed or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
