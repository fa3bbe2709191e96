"""What the command line tells the user at the end: `fit`'s summary (folder, checkpoints, grids,
the latest metrics, which also go into the checkpoint), `predict`'s embeddings file, and only the
warnings that concern the run."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, tiny_cli_args
from lit_mae.interop.checkpoint import data_statistics, logged_metrics

CONFIGS = REPO_ROOT / "configs"
QUICK = ["--trainer.limit_train_batches", "0.02", "--trainer.limit_val_batches", "0.2", "--trainer.enable_progress_bar",
         "false", "--trainer.num_sanity_val_steps", "0", "--data.init_args.batch_size", "16"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, str]:
    """A ten-epoch run (grids and kNN every 10) of configs/pretrain.yaml with the tiny architecture,
    one batch an epoch: (its folder, stdout)."""
    import contextlib
    import io
    from conftest import run_cli_in

    where = tmp_path_factory.mktemp("summary")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_cli_in(where, ["fit", "--config", str(CONFIGS / "pretrain.yaml"), *tiny_cli_args(), *QUICK,
                           "--trainer.max_epochs", "10"])
    return where, out.getvalue()


def test_fit_ends_with_a_summary_of_where_things_are_and_the_latest_metrics(pretrained):
    where, out = pretrained
    summary = out[out.index("fit finished"):]
    assert summary.startswith("fit finished after 10 epochs, 10 steps; run folder runs/pretrain\n")
    assert re.search(r"checkpoints +runs/pretrain/checkpoints/ +\(last\.ckpt -> epoch009\.ckpt\)", summary)
    assert re.search(r"grids +runs/pretrain/reconstructions/ +\(1 PNG, newest epoch009\.png\)", summary)
    assert "tensorboard --logdir runs" in summary
    metrics = dict(re.findall(r"([\w/]+) (\d+\.\d+%?)", summary.split("metrics", 1)[1].splitlines()[0]))
    assert set(metrics) == {"train/loss", "val/loss", "online_probe/val_acc", "knn/val_acc"}

    # the same numbers are in the checkpoint, beside the data's statistics
    checkpoint = torch.load(where / "runs/pretrain/checkpoints/last.ckpt", weights_only=True)
    recorded = logged_metrics(checkpoint)
    assert f"{recorded['val/loss']:.4f}" == metrics["val/loss"]
    assert f"{recorded['knn/val_acc']:.1%}" == metrics["knn/val_acc"]
    from lit_mae.datamodules import DigitsDataModule

    digits = DigitsDataModule(image_size=16)
    digits.setup("fit")
    assert data_statistics(checkpoint) == (digits.mean, digits.std)


def test_predict_writes_the_embeddings_into_the_run_and_says_where(pretrained, lit_mae_main):
    where, _ = pretrained
    code, out, err = lit_mae_main(where, ["predict", "--config", "runs/pretrain/config.yaml", "--ckpt_path", "last",
                                          "--trainer.limit_predict_batches", "0.2"])
    assert code == 0, err[-3000:]
    path = where / "runs/pretrain/predict_0/predictions.pt"
    assert f"wrote the embeddings to {path.relative_to(where)}" in out
    predictions = torch.load(path, weights_only=True)
    assert predictions["embeddings"].shape == (32, 32)  # 2 batches of 16, the tiny width
    assert predictions["indices"].tolist() == list(range(32))


def _fit_warnings(where: Path, args: list[str]) -> tuple[list[str], list[str]]:
    """(the warnings, the log lines) of a `fit` through `lit_mae.cli.main` in this process."""
    from lit_mae.cli import main

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib_chdir(where):
            warnings.simplefilter("always")
            main(args)
    finally:
        logger.removeHandler(handler)
    return [str(w.message) for w in caught], records


def contextlib_chdir(where: Path):
    import contextlib

    return contextlib.chdir(where)


def test_the_default_path_shows_no_warning_about_expected_things(pretrained, tmp_path, monkeypatch, one_thread):
    where, _ = pretrained
    monkeypatch.setattr("sys.argv", ["lit-mae"])
    probe = ["fit", "--config", str(CONFIGS / "linprobe.yaml"), "--trainer.enable_progress_bar", "false",
             "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
             "--model.init_args.pretrained", str(where / "runs/pretrain/checkpoints/last.ckpt"),
             "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.init_args.images.init_args.batch_size", "16"]
    caught, logged = _fit_warnings(tmp_path, probe)
    shown = "\n".join(caught + logged)
    assert "in eval mode at the start of training" not in shown  # the frozen encoder is meant to be
    assert "smaller than the logging interval" not in shown  # an epoch of 1 batch; epoch means are logged
    assert "treespec" not in shown and "💡 Tip" not in shown
    assert "dirpath has changed" not in shown


def test_a_module_left_in_eval_mode_by_mistake_is_still_reported(pretrained, tmp_path, one_thread):
    from lightning.pytorch import Trainer
    from lit_mae import LitLinearProbe
    from lit_mae.datamodules import DigitsDataModule

    where, _ = pretrained
    probe = LitLinearProbe(str(where / "runs/pretrain/checkpoints/last.ckpt"), warmup_epochs=0)
    extra = torch.nn.Sequential(torch.nn.Identity()).eval()
    probe.extra = extra  # one more module in eval mode than the frozen encoder
    original_train = probe.train
    probe.train = lambda mode=True: (original_train(mode), extra.eval())[0]
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(probe, datamodule=DigitsDataModule(image_size=16, batch_size=16))
    assert any("module(s) in eval mode at the start of training" in str(w.message) for w in caught)
