"""Pretrain -> linear probe -> fine-tune on the embedded digits, against a random-init encoder.

    python benchmarks/digits_protocols.py                      # about 5 minutes on 2 CPU cores
    python benchmarks/digits_protocols.py --pretrained runs/pretrain/checkpoints/last.ckpt
    python benchmarks/digits_protocols.py --smoke              # one epoch of each: proves the script runs

Runs the repository's configs unchanged (configs/pretrain.yaml, linprobe.yaml, finetune.yaml)
through the CLI, then the same probe and fine-tuning from a randomly initialised encoder of the
same architecture, each in its own folder of `--out` (the configs' relative `runs/...` paths land
there; the CLI refuses to start a fresh run in a folder that holds one). Prints one markdown table
of test top-1 accuracy (best checkpoint by val top-1) and wall time per run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from _common import inside  # also puts the repository root on sys.path
from lit_mae.cli.lightning_cli import run_cli

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def fit(config: str, *overrides: str) -> tuple[float, float, float]:
    """(test top-1 %, best val top-1 %, seconds) of `lightning fit --config <config> ...`."""
    start = time.perf_counter()
    cli = run_cli(["fit", "--config", str(CONFIGS / config), "--trainer.enable_progress_bar", "false",
                   *overrides])
    seconds = time.perf_counter() - start
    test = cli.trainer.callback_metrics["test/acc_top1"].item()  # the config tests its best checkpoint
    val = cli.trainer.checkpoint_callback.best_model_score.item()
    return 100 * test, 100 * val, seconds


def architecture() -> str:
    """The encoder architecture of configs/pretrain.yaml, as a JSON value for `--model.init_args.config`."""
    return json.dumps(yaml.safe_load((CONFIGS / "pretrain.yaml").read_text())["model"]["init_args"]["config"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/protocols", help="working folder for logs and checkpoints")
    parser.add_argument("--pretrained", help="an existing LitMAE checkpoint: skip pretraining")
    parser.add_argument("--smoke", action="store_true", help="one epoch of every run")
    args = parser.parse_args(argv)
    pretrained = str(Path(args.pretrained).resolve()) if args.pretrained else None
    out = Path(args.out).resolve()
    epochs = ["--trainer.max_epochs", "1"] if args.smoke else []

    rows = []
    if pretrained is None:
        with inside(out / "pretrain"):
            start = time.perf_counter()
            run_cli(["fit", "--config", str(CONFIGS / "pretrain.yaml"), "--trainer.enable_progress_bar", "false",
                     *epochs])
            rows.append(("MAE pretraining (configs/pretrain.yaml)", "", "", time.perf_counter() - start))
            pretrained = str(Path("runs/pretrain/checkpoints/last.ckpt").resolve())
    random_init = ["--model.init_args.pretrained", "null", "--model.init_args.config", architecture()]
    for name, config in (("linear probe", "linprobe.yaml"), ("fine-tune", "finetune.yaml")):
        for encoder, slug, weights in (("MAE-pretrained", "mae", ["--model.init_args.pretrained", pretrained]),
                                       ("random init", "random", random_init)):
            with inside(out / f"{Path(config).stem}_{slug}"):
                test, val, seconds = fit(config, *weights, *epochs)
            rows.append((f"{name}, {encoder} encoder (configs/{config})", f"{test:.1f}", f"{val:.1f}", seconds))

    print("\n| run | test top-1 % | val top-1 % (best epoch) | wall time |")
    print("|---|---|---|---|")
    for name, test, val, seconds in rows:
        print(f"| {name} | {test} | {val} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
