"""`--ckpt_path FILE`: the architecture comes from the checkpoint (another one in the config is an
error naming the fields), every other setting from the config and the command line; a file that
is no Lightning checkpoint is named in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI

from conftest import REPO_ROOT, tiny_cli_args
from lit_mae import LitMAE

CONFIG = REPO_ROOT / "configs" / "pretrain.yaml"
QUICK = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar",
         "false", "--trainer.num_sanity_val_steps", "0", "--data.init_args.batch_size", "16"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A one-epoch run of the digits config with the tiny architecture, in its own folder."""
    from conftest import run_cli_in

    where = tmp_path_factory.mktemp("tiny_run")
    run_cli_in(where, ["fit", "--config", str(CONFIG), *tiny_cli_args(), *QUICK, "--trainer.max_epochs", "1"])
    return where


def test_lightning_still_has_the_step_lit_mae_replaces():
    """LitMAECLI overrides LightningCLI's `_parse_ckpt_path` (no public switch): if Lightning renames
    it, its checkpoint-over-config merge would silently come back."""
    assert callable(getattr(LightningCLI, "_parse_ckpt_path", None))


def test_a_config_of_another_architecture_is_refused_naming_the_fields(lit_mae_main, tiny_run):
    checkpoint = tiny_run / "runs/pretrain/checkpoints/last.ckpt"
    code, _, err = lit_mae_main(tiny_run, ["fit", "--config", str(CONFIG), *QUICK, "--trainer.max_epochs", "2",
                                           "--ckpt_path", str(checkpoint)])
    assert code == 2 and "Traceback" not in err
    assert f"--ckpt_path {checkpoint}: the checkpoint is of another architecture" in err
    assert "written with embed_dim=32, depth=1" in err and "this model has embed_dim=192, depth=6" in err
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2  # nothing trained over it


def test_settings_given_with_the_checkpoint_apply_and_are_recorded(lit_mae_main, tiny_run, tmp_path):
    """Lightning 2.6 would rebuild the model from the checkpoint's hyper-parameters and drop these."""
    shutil.copytree(tiny_run / "runs", tmp_path / "runs", symlinks=True)  # the other tests keep the original
    run = tmp_path / "runs/pretrain"
    code, _, err = lit_mae_main(tmp_path, [
        "fit", "--config", str(run / "config.yaml"), "--trainer.max_epochs", "2", "--ckpt_path",
        str(run / "checkpoints/last.ckpt"), "--model.init_args.base_lr", "0.5", "--model.init_args.mask_ratio", "0.5"])
    assert code == 0, err[-3000:]
    saved = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 4  # resumed from step 2, not started afresh
    assert (saved["hyper_parameters"]["base_lr"], saved["hyper_parameters"]["mask_ratio"]) == (0.5, 0.5)
    recorded = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    assert (recorded["base_lr"], recorded["mask_ratio"]) == (0.5, 0.5)


def test_a_config_without_an_architecture_gets_the_checkpoints(lit_mae_main, tiny_run):
    checkpoint = tiny_run / "runs/pretrain/checkpoints/epoch000.ckpt"
    code, out, err = lit_mae_main(tiny_run, [
        "validate", "--model", "lit_mae.LitMAE", "--data", "lit_mae.datamodules.DigitsDataModule",
        "--data.init_args.image_size", "16", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
        "--trainer.default_root_dir", "evaluations", "--ckpt_path", str(checkpoint)])
    assert code == 0, err[-3000:]
    assert "val/loss" in out


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "official"])
def test_a_file_that_is_no_lightning_checkpoint_is_named_in_one_line(lit_mae_main, tiny_run, tmp_path, kind):
    bad = tmp_path / f"{kind}.ckpt"
    real = (tiny_run / "runs/pretrain/checkpoints/last.ckpt").resolve().read_bytes()
    content = {"empty": b"", "random": os.urandom(4096), "truncated": real[: len(real) // 2]}
    if kind == "official":
        torch.save({"model": {"cls_token": torch.zeros(1, 1, 32)}}, bad)
    else:
        bad.write_bytes(content[kind])
    expected = {"empty": "the file is empty", "random": "not a weights file", "truncated": "truncated or corrupt",
                "official": "not a Lightning checkpoint"}[kind]
    code, _, err = lit_mae_main(tiny_run, ["validate", "--config", str(CONFIG), "--ckpt_path", str(bad)])
    assert code == 2 and "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("lit-mae: error: "))
    assert line.startswith(f"lit-mae: error: {bad}: ") and expected in line, line
    with pytest.raises(ValueError, match=f"{bad}: .*{expected}"):
        LitMAE.load_from_checkpoint(bad)
