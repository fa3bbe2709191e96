"""The proof on data: a synthetic 13-band 16-bit GeoTIFF-like folder and a 16-bit grey PNG folder
pretrain a tiny model for two steps through the CLI with configs/multispectral.yaml and
configs/grey16.yaml, write a reconstruction grid, are probed, and draw a grid with
`lit-mae visualize` (the statistics from the checkpoint)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import REPO_ROOT, run_cli_in, tiny_cli_args
from lit_mae.cli.stats import main as stats_main
from lit_mae.cli.visualize import main as visualize_main

pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode:UserWarning")
ON_CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_steps", "2",
          "--trainer.limit_train_batches", "2", "--trainer.num_sanity_val_steps", "0",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
DATA = ["--data.init_args.image_size", "16", "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--data.init_args.val_fraction", "0.25"]


def scene(kind: int, seed: int, bands: int, size: int = 24) -> np.ndarray:
    """uint16 (bands, size, size) 12-bit values: class 0 bright on the left, class 1 on the right,
    each band at its own brightness (as a spectrum), plus noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size)[None, None, :] if kind == 0 else np.linspace(1, 0, size)[None, None, :]
    level = np.linspace(400, 3000, bands)[:, None, None]
    values = level * (0.5 + x) + rng.normal(0, 60, (bands, size, size))
    return values.clip(0, 4095).astype(np.uint16)


def labelled_folder(root: Path, bands: int, suffix: str) -> Path:
    for kind, name in enumerate(("fields", "water")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            array = scene(kind, 10 * kind + i, bands)
            path = root / name / f"{i}{suffix}"
            if suffix == ".tif":
                tifffile.imwrite(path, array, photometric="minisblack")
            else:
                Image.fromarray(array[0]).save(path)
    return root


def pretrain(where: Path, config: str, root: Path, channels: int):
    args = ["fit", "--config", str(REPO_ROOT / "configs" / config), "--data.init_args.root", str(root), *DATA,
            *tiny_cli_args(in_chans=channels), *ON_CPU]
    return run_cli_in(where, args)


def probe(where: Path, ckpt: Path, root: Path, channels: int, statistics: dict):
    args = ["fit", "--model", "lit_mae.LitLinearProbe", "--model.init_args.pretrained", str(ckpt),
            "--model.init_args.base_lr", "0.1", "--data", "lit_mae.datamodules.ImageFolderDataModule",
            "--data.init_args.root", str(root), "--data.init_args.channels", str(channels),
            "--data.init_args.augment", "null", "--data.init_args.mean", json.dumps(statistics["mean"]),
            "--data.init_args.std", json.dumps(statistics["std"]), *DATA, *ON_CPU,
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.default_root_dir", "probe"]
    return run_cli_in(where, args)


@pytest.mark.parametrize("config, bands, suffix, mode", [("multispectral.yaml", 13, ".tif", "RGB"),
                                                         ("grey16.yaml", 1, ".png", "L")])
def test_pretrain_probe_and_draw_beyond_8_bit_rgb(tmp_path: Path, config: str, bands: int, suffix: str,
                                                  mode: str):
    root = labelled_folder(tmp_path / "data", bands, suffix)
    cli = pretrain(tmp_path, config, root, bands)
    data = cli.datamodule
    assert data.full_depth and len(data.mean) == bands  # 16-bit: read at full depth, statistics computed
    name = Path(config).stem
    run = tmp_path / "runs" / name
    ckpt = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    recorded = checkpoint["lit_mae_data"]
    assert recorded["mean"] == list(data.mean) == list(checkpoint["datamodule_hyper_parameters"]["mean"])
    assert checkpoint["hyper_parameters"]["config"]["in_chans"] == bands
    with Image.open(run / "reconstructions" / "epoch000.png") as grid:  # display bands 3, 2, 1 / grey
        assert grid.mode == mode and np.asarray(grid).std() > 20

    # `lit-mae stats` prints what normalize: auto computed
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        stats_main([str(root), "--channels", str(bands), "--labels", "none", "--val-fraction", "0.25"])
    assert printed.getvalue().splitlines()[0] == "mean: [" + ", ".join(f"{m:.6g}" for m in data.mean) + "]"

    probed = probe(tmp_path, ckpt, root, bands, recorded)
    assert probed.model.arch.in_chans == bands
    assert 0.0 <= probed.trainer.callback_metrics["val/acc_top1"].item() <= 1.0

    out = tmp_path / "files.png"
    files = [str(root / "fields" / f"0{suffix}"), str(root / "water" / f"1{suffix}")]
    with contextlib.redirect_stderr(io.StringIO()) as said:
        visualize_main(["--ckpt", str(ckpt), "--images", *files, "--out", str(out)])
    assert "the training data's" in said.getvalue()  # statistics read from the checkpoint
    with Image.open(out) as grid:
        assert grid.mode == mode
