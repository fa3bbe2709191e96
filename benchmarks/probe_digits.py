"""The online probe's accuracy on the digits with the features it trains on (the training step's
visible-patch features, or the full images encoded once more) and one batch in N:
`configs/pretrain.yaml` unchanged but for `OnlineLinearProbe(features=F, every_n_steps=N)`.

    python benchmarks/probe_digits.py --features step,unmasked --every 1    # about 5 minutes a run on 2 CPU cores
    python benchmarks/probe_digits.py --features unmasked --every 16 --epochs 30

Each (features, N) runs the whole config through the CLI (seed 0, so the encoder, its masks and the
kNN monitor are the same in every run: the probe sends no gradient and draws no random numbers), in
`--out`/<features>_every_<N>/. Prints one markdown table: the last `online_probe/val_acc`, its value at
epoch 20 and its mean over the last 10 epochs (the 180 validation digits make one epoch's figure
move by 0.6 points a digit), `knn/val_acc`, the final losses and the wall time of each run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from _common import csv, inside, markdown_table  # also puts the repository root on sys.path
from lit_mae.cli.lightning_cli import run_cli

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pretrain.yaml"
HEADERS = ["features", "every_n_steps", "epochs", "online_probe/val_acc %", "at epoch 20 %",
           "mean of the last 10 epochs %", "knn/val_acc %", "train/loss", "val/loss", "wall s"]


def config_with_probe(features: str, every: int, epochs: int, folder: Path) -> Path:
    """configs/pretrain.yaml with the probe's `features`, `every_n_steps` and `max_epochs` set, written into `folder`."""
    config = yaml.safe_load(CONFIG.read_text())
    probe = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("OnlineLinearProbe"))
    probe.setdefault("init_args", {}).update(features=features, every_n_steps=every)
    config["trainer"]["max_epochs"] = epochs
    path = folder / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def probe_curve(run_dir: Path) -> list[float]:
    """`online_probe/val_acc` of every validation of a run, from its TensorBoard events, in order."""
    [events] = run_dir.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    if "online_probe/val_acc" not in accumulator.Tags()["scalars"]:
        return []  # the probe switched itself off
    return [event.value for event in accumulator.Scalars("online_probe/val_acc")]


def run(features: str, every: int, epochs: int, out: Path) -> list[str]:
    folder = (out / f"{features}_every_{every}").resolve()
    with inside(folder):  # one run per folder, as the CLI wants; the config's runs/pretrain lands inside
        config = config_with_probe(features, every, epochs, folder)
        start = time.perf_counter()
        cli = run_cli(["fit", "--config", str(config), "--trainer.enable_progress_bar", "false"])
        seconds = time.perf_counter() - start
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    percent = lambda name: f"{100 * metrics[name]:.1f}" if name in metrics else "n/a"  # noqa: E731
    loss = lambda name: f"{metrics[name]:.4f}" if name in metrics else "n/a"  # noqa: E731
    curve = probe_curve(folder / "runs" / "pretrain")  # one value per epoch
    at_20 = f"{100 * curve[19]:.1f}" if len(curve) >= 20 else "n/a"
    last_10 = f"{100 * sum(curve[-10:]) / len(curve[-10:]):.1f}" if curve else "n/a"
    return [features, str(every), str(epochs), percent("online_probe/val_acc"), at_20, last_10, percent("knn/val_acc"),
            loss("train/loss_epoch"), loss("val/loss"), f"{seconds:.0f}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=csv, default=["step"], help="`features` values, in turn")
    parser.add_argument("--every", type=csv, default=["1"], help="every_n_steps values, in turn")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/probe_digits"))
    args = parser.parse_args(argv)
    rows = [run(features, int(every), args.epochs, args.out) for features in args.features for every in args.every]
    print(markdown_table(HEADERS, rows))


if __name__ == "__main__":
    main()
