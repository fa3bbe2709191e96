"""A bad value given to the command line ends in its own named message as the last line and exit
status 2, without jsonargparse's and Lightning's traceback; LIT_MAE_TRACEBACK=1 shows the whole."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO_ROOT, tiny_cli_args

PRETRAIN = ["fit", "--config", str(REPO_ROOT / "configs" / "pretrain.yaml"), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]", "--trainer.logger", "false"]


@pytest.mark.parametrize("args, message", [
    (["--model.init_args.config.mask_ratio", "1.0"], "MAEConfig.mask_ratio must be in [0, 1), got 1.0"),
    (["--model.init_args.config.mask_ratio", "0.0"],
     "LitMAE: mask_ratio=0.0 masks none of the 16 patches (16x16 images in 4-pixel patches): the loss averages"),
    (["--model.init_args.config.mask_ratio", "0.99"], "MAEConfig.mask_ratio=0.99 keeps int(16 x (1 - 0.99)) = 0"),
    (["--model.init_args.config.layer_norm_eps", ".inf"], "MAEConfig.layer_norm_eps must be a finite positive"),
    (["--model.init_args.base_lr", "-0.1"], "LitMAE.base_lr must be a positive number, got -0.1"),
    (["--data.init_args.batch_size", "0"], "DigitsDataModule.batch_size must be an integer >= 1, got 0"),
    (["--data.init_args.val_fraction", "0.6", "--data.init_args.test_fraction", "0.5"],
     "DigitsDataModule: val_fraction=0.6 and test_fraction=0.5 must be in [0, 1) and leave some training data"),
], ids=["mask_ratio_1", "mask_ratio_0", "mask_ratio_0.99", "eps_inf", "negative_lr", "batch_size_0", "fractions"])
def test_a_bad_value_is_the_last_line_and_exit_status_2(lit_mae_main, tmp_path, args, message):
    code, out, err = lit_mae_main(tmp_path, [*PRETRAIN, *args])
    lines = err.strip().splitlines()
    assert code == 2
    assert "Traceback" not in err, err[-3000:]
    assert lines[-2].startswith("lit-mae: error: ") and message in lines[-2], lines[-3:]
    assert "LIT_MAE_TRACEBACK=1" in lines[-1]
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_a_split_left_empty_at_setup_is_named_too(lit_mae_main, tmp_path):
    """A one-image folder with val_fraction 0.9: the error comes from `setup`, inside Lightning's fit."""
    folder = tmp_path / "one"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "only.png")
    data = ["--data", "lit_mae.datamodules.ImageFolderDataModule", f"--data.init_args.root={folder}",
            "--data.init_args.labels=none", "--data.init_args.val_fraction=0.9", "--data.init_args.image_size=16",
            "--data.init_args.num_workers=0", "--data.init_args.batch_size=1"]
    code, _, err = lit_mae_main(tmp_path, [*PRETRAIN, *tiny_cli_args(), *data])
    assert code == 2 and "Traceback" not in err
    assert (f"ImageFolderDataModule: val_fraction=0.9 and test_fraction=0.0 of the 1 images under {folder} "
            "leave the training split empty") in err


def test_a_missing_optional_extra_says_what_to_install(lit_mae_main, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litdata", None)  # as if `lit-mae[streaming]` were not installed
    data = ["--data", "lit_mae.datamodules.StreamingDataModule", f"--data.init_args.input_dir={tmp_path / 'shards'}",
            "--data.init_args.image_size=16"]
    code, _, err = lit_mae_main(tmp_path, [*PRETRAIN, *tiny_cli_args(), *data])
    assert code == 2 and "Traceback" not in err, err[-3000:]  # before: a traceback ending in the hint
    assert 'pip install "lit-mae[streaming]"' in err.strip().splitlines()[-2]


def test_the_traceback_switch_shows_the_whole_error(lit_mae_main, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_MAE_TRACEBACK", "1")
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)") as info:
        lit_mae_main(tmp_path, [*PRETRAIN, "--model.init_args.config.mask_ratio", "1.0"], catch=False)
    assert info.traceback  # the full chain, for a bug report


def test_errors_from_elsewhere_keep_their_traceback(tmp_path):
    """Only lit-mae's own messages are shortened: an error raised by another library is a bug to report."""
    from lit_mae.cli.errors import user_error

    try:
        Path(tmp_path / "missing").read_text()
    except OSError as error:
        assert user_error(error) is None
    try:
        from lit_mae import MAEConfig

        try:
            MAEConfig(mask_ratio=2.0)
        except ValueError as inner:
            raise RuntimeError("wrapped by a library") from inner
    except RuntimeError as outer:
        assert "mask_ratio" in str(user_error(outer))
