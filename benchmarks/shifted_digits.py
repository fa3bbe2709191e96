"""What MAE pretraining buys on translated digits (configs/shifted/): MAE pretraining, then
fine-tuning from its encoder against the same fine-tuning from a random encoder, plus a linear
probe and a kNN classifier of both encoders, for several seeds.

    python benchmarks/shifted_digits.py --jobs 3            # 3 seeds side by side; about 45 minutes on 2 CPU cores
    python benchmarks/shifted_digits.py --seeds 0 --markdown out.md
    python benchmarks/shifted_digits.py --smoke             # one epoch of each: proves it runs

Each seed `s` sets `seed_everything` and the DataModule's `seed` (the 80/10/10 split, the training
order, the places of the digits and the masks). The configs run unchanged otherwise, through the
CLI, inside `--out`. Test top-1 (%) on the test digits at their fixed places; the fine-tunes test
their best checkpoint by val top-1. kNN: 20 nearest training digits (one fixed place each) by cosine
similarity of the cls token, as `lit_mae.callbacks.KNNMonitor`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

import _common  # noqa: F401  (puts the repository root on sys.path)
from lit_mae.callbacks.monitors import knn_predict
from lit_mae.cli.lightning_cli import run_cli
from lit_mae.datamodules import DigitsDataModule
from lit_mae.datamodules.digits import fixed_offsets, place
from lit_mae.interop import load_pretrained
from lit_mae.models import MAEConfig, MaskedAutoencoderViT

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "shifted"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SMOKE = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "0.05", "--trainer.limit_val_batches", "0.5",
         "--trainer.limit_test_batches", "0.5"]


def fit(config: str, name: str, seed: int, extra: list[str]) -> tuple[float | None, Path]:
    """(test top-1 % or None, the run's last checkpoint) of `lit-mae fit --config configs/shifted/<config>`."""
    cli = run_cli(["fit", "--config", str(CONFIGS / config), *QUIET, f"--seed_everything={seed}",
                   f"--data.init_args.seed={seed}", "--trainer.logger.init_args.name", name,
                   "--trainer.default_root_dir", f"runs/{name}", *extra])
    test = cli.trainer.callback_metrics.get("test/acc_top1")
    return (None if test is None else 100 * test.item()), Path(f"runs/{name}/checkpoints/last.ckpt").resolve()


def probe(encoder: list[str], name: str, seed: int, extra: list[str]) -> float:
    """Test top-1 % of the linear probe recipe of configs/linprobe.yaml on translated digits (the
    frozen encoder sees a new place of each training digit every epoch: no feature cache)."""
    data = {"class_path": "lit_mae.datamodules.DigitsDataModule",
            "init_args": {**yaml.safe_load((CONFIGS / "finetune.yaml").read_text())["data"]["init_args"], "seed": seed}}
    cli = run_cli(["fit", "--config", str(CONFIGS.parent / "linprobe.yaml"), *QUIET, f"--seed_everything={seed}",
                   "--data", json.dumps(data), "--trainer.logger.init_args.name", name,
                   "--trainer.default_root_dir", f"runs/{name}", *encoder, *extra])
    return 100 * cli.trainer.callback_metrics["test/acc_top1"].item()


@torch.no_grad()
def knn(model: MaskedAutoencoderViT, seed: int) -> float:
    """Test top-1 % of a 20-NN classifier on the encoder's cls tokens (test digits at their fixed places)."""
    data = DigitsDataModule(image_size=32, digit_size=16, placement="random", channels=1, seed=seed)
    data.setup("fit")
    train = data.splits["train"]
    train_pixels = place(train.sources, 32, fixed_offsets(len(train.sources), 16, seed, "train"))
    test = data.splits["test"]
    model.eval()

    def features(pixels: torch.Tensor) -> torch.Tensor:
        tokens = model.encoder.forward_features(data.normalise(pixels))
        return torch.nn.functional.normalize(model.encoder.pool(tokens, "cls"), dim=1)

    predicted = knn_predict(features(train_pixels), torch.as_tensor(train.labels), features(test.sources), 10)
    return 100 * (predicted == torch.as_tensor(test.labels)).float().mean().item()


def architecture() -> dict:
    return yaml.safe_load((CONFIGS / "pretrain.yaml").read_text())["model"]["init_args"]["config"]


def one_seed(seed: int, smoke: bool) -> dict[str, float]:
    extra = SMOKE if smoke else []
    _, pretrained = fit("pretrain.yaml", f"pretrain_s{seed}", seed, extra)
    results = {}
    results["finetune_mae"], _ = fit("finetune.yaml", f"finetune_s{seed}", seed,
                                     ["--model.init_args.pretrained", str(pretrained), *extra])
    results["finetune_scratch"], _ = fit("finetune_scratch.yaml", f"scratch_s{seed}", seed, extra)
    random_init = ["--model.init_args.pretrained", "null", "--model.init_args.config", json.dumps(architecture())]
    results["probe_mae"] = probe(["--model.init_args.pretrained", str(pretrained)], f"probe_s{seed}", seed, extra)
    results["probe_scratch"] = probe(random_init, f"probe_random_s{seed}", seed, extra)
    results["knn_mae"] = knn(load_pretrained(pretrained), seed)
    torch.manual_seed(seed)
    results["knn_scratch"] = knn(MaskedAutoencoderViT(MAEConfig(**architecture())), seed)
    return results


ROWS = (("fine-tune (configs/shifted/finetune*.yaml)", "finetune"), ("linear probe (configs/linprobe.yaml)", "probe"),
        ("kNN, k = 20", "knn"))


def table(per_seed: dict[int, dict[str, float]]) -> str:
    def cell(key: str) -> str:
        values = [results[key] for results in per_seed.values()]
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread} ({', '.join(f'{v:.1f}' for v in values)})"

    lines = [f"| test top-1 %, mean ± std (seeds {', '.join(map(str, per_seed))}) | from MAE pretraining | "
             "from a random encoder |", "|---|---|---|"]
    lines += [f"| {label} | {cell(key + '_mae')} | {cell(key + '_scratch')} |" for label, key in ROWS]
    return "\n".join(lines)


def in_processes(seeds: list[int], out: Path, jobs: int, smoke: bool) -> dict[int, dict[str, float]]:
    """Each seed in a process of its own (one thread each), `jobs` at a time; their results."""
    pending, running, results = list(seeds), [], {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            command = [sys.executable, __file__, "--seeds", str(seed), "--out", str(out / f"seed{seed}"),
                       "--json", str(out / f"seed{seed}.json"), *(["--smoke"] if smoke else [])]
            running.append((seed, subprocess.Popen(command, env=env)))
        seed, process = running.pop(0)
        if process.wait() != 0:
            raise SystemExit(f"seed {seed} failed (exit {process.returncode}); its log is above")
        results.update({int(k): v for k, v in json.loads((out / f"seed{seed}.json").read_text()).items()})
    return {seed: results[seed] for seed in seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--smoke: 0)")
    parser.add_argument("--out", default="runs/shifted_digits", help="working folder for logs and checkpoints")
    parser.add_argument("--smoke", action="store_true", help="one short epoch of every run")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run side by side, each in its own process")
    parser.add_argument("--json", type=Path, default=None, help="also write {seed: results} to this file")
    args = parser.parse_args()
    markdown = args.markdown.resolve() if args.markdown else None
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.jobs > 1 and len(seeds) > 1:
        per_seed = in_processes(seeds, out, args.jobs, args.smoke)
    else:
        os.chdir(out)
        per_seed = {seed: one_seed(seed, args.smoke) for seed in seeds}
    if args.json:
        args.json.write_text(json.dumps(per_seed, indent=1))
    text = table(per_seed) + f"\n\n{time.perf_counter() - start:.0f} s in all"
    print("\n" + text)
    if markdown:
        markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
