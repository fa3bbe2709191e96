"""The online probe's accuracy on the digits when it trains on one batch in N: `configs/pretrain.yaml`
unchanged but for `OnlineLinearProbe(every_n_steps=N)`.

    python benchmarks/probe_digits.py --every 1,16          # about 5 minutes per value on 2 CPU cores
    python benchmarks/probe_digits.py --every 16 --epochs 30

Each value runs the whole config through the CLI (seed 0, so the encoder, its masks and the kNN
monitor are the same in every run: the probe sends no gradient and draws no random numbers), in
`--out`/every_<N>/. Prints one markdown table: the last `online_probe/val_acc`, `knn/val_acc`, the
final losses and the wall time of each run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml

from _common import csv, markdown_table  # also puts the repository root on sys.path
from lit_mae.cli.lightning_cli import run_cli

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pretrain.yaml"
HEADERS = ["every_n_steps", "epochs", "online_probe/val_acc %", "knn/val_acc %", "train/loss", "val/loss", "wall s"]


def config_with_probe_every(every: int, epochs: int, folder: Path) -> Path:
    """configs/pretrain.yaml with the probe's `every_n_steps` and `max_epochs` set, written into `folder`."""
    config = yaml.safe_load(CONFIG.read_text())
    probe = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("OnlineLinearProbe"))
    probe.setdefault("init_args", {})["every_n_steps"] = every
    config["trainer"]["max_epochs"] = epochs
    path = folder / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(every: int, epochs: int, out: Path) -> list[str]:
    folder = (out / f"every_{every}").resolve()
    folder.mkdir(parents=True, exist_ok=False)  # one run per folder, as the CLI wants
    config = config_with_probe_every(every, epochs, folder)
    here = Path.cwd()
    os.chdir(folder)  # the config's relative runs/pretrain lands inside
    try:
        start = time.perf_counter()
        cli = run_cli(["fit", "--config", str(config), "--trainer.enable_progress_bar", "false"])
        seconds = time.perf_counter() - start
    finally:
        os.chdir(here)
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    percent = lambda name: f"{100 * metrics[name]:.1f}" if name in metrics else "n/a"  # noqa: E731
    loss = lambda name: f"{metrics[name]:.4f}" if name in metrics else "n/a"  # noqa: E731
    return [str(every), str(epochs), percent("online_probe/val_acc"), percent("knn/val_acc"),
            loss("train/loss_epoch"), loss("val/loss"), f"{seconds:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=csv, default=["1", "16"], help="every_n_steps values, in turn")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/probe_digits"))
    args = parser.parse_args()
    rows = [run(int(every), args.epochs, args.out) for every in args.every]
    print(markdown_table(HEADERS, rows))


if __name__ == "__main__":
    main()
