"""One run per folder: a second fresh fit into a folder that holds a run stops and says how to
resume or where to write; evaluations write beside the training record, never over it; without a
logger nothing lands in the current directory; an unwritable place is named before any work."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, tiny_cli_args

CONFIG = REPO_ROOT / "configs" / "pretrain.yaml"
QUICK = [*tiny_cli_args(), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.num_sanity_val_steps", "0", "--data.init_args.batch_size", "16"]


def listing(folder: Path) -> dict[str, float]:
    """Every file under `folder` with its modification time."""
    return {str(path.relative_to(folder)): path.lstat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


@pytest.fixture
def fitted(lit_mae_main, tmp_path) -> Path:
    code, _, err = lit_mae_main(tmp_path, ["fit", "--config", str(CONFIG), *QUICK])
    assert code == 0, err[-3000:]
    return tmp_path


def test_a_second_fresh_fit_into_the_same_folder_stops_and_changes_nothing(lit_mae_main, fitted):
    before = listing(fitted / "runs")
    code, _, err = lit_mae_main(fitted, ["fit", "--config", str(CONFIG), *QUICK])
    assert code == 2 and "Traceback" not in err
    assert "runs/pretrain already holds a run (runs/pretrain/config.yaml" in err
    assert "--ckpt_path last" in err and "--trainer.logger.init_args.name" in err
    assert listing(fitted / "runs") == before  # no file written, rewritten or removed
    assert sorted(path.name for path in (fitted / "runs/pretrain/checkpoints").iterdir()) == [
        "epoch000.ckpt", "last.ckpt"]  # no last-v1.ckpt


def test_another_name_gives_the_second_run_its_own_folder(lit_mae_main, fitted):
    code, _, err = lit_mae_main(fitted, ["fit", "--config", str(CONFIG), *QUICK, "--trainer.logger.init_args.name",
                                         "second"])
    assert code == 0, err[-3000:]
    assert (fitted / "runs/second/checkpoints/last.ckpt").resolve() == (
        fitted / "runs/second/checkpoints/epoch000.ckpt")
    assert (fitted / "runs/second/config.yaml").is_file()


def test_evaluations_write_beside_the_training_record(lit_mae_main, fitted):
    run = fitted / "runs/pretrain"
    record = (run / "config.yaml").read_bytes()
    for index, subcommand in enumerate(["validate", "test", "validate"]):
        code, _, err = lit_mae_main(fitted, [subcommand, "--config", str(run / "config.yaml"), "--ckpt_path",
                                             str(run / "checkpoints/last.ckpt")])
        assert code == 0, err[-3000:]
    assert (run / "config.yaml").read_bytes() == record
    for folder in ("validate_0", "test_0", "validate_1"):
        assert (run / folder / "config.yaml").is_file(), folder
        assert list((run / folder).glob("events.out.tfevents.*")), folder
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # the fit's own log, alone in its folder


def test_without_a_logger_the_config_lands_in_the_run_folder(lit_mae_main, tmp_path):
    code, _, err = lit_mae_main(tmp_path, ["fit", "--config", str(CONFIG), *QUICK, "--trainer.logger", "false"])
    assert code == 0, err[-3000:]
    assert not (tmp_path / "config.yaml").exists()
    assert (tmp_path / "runs/pretrain/config.yaml").is_file()
    assert (tmp_path / "runs/pretrain/checkpoints/last.ckpt").is_file()


def _read_only_folder(where: Path) -> Path | None:
    """A read-only file system at `where` (a tmpfs mounted read-only), or None where mounting is not allowed."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True)
    return where if done.returncode == 0 else None


def test_a_read_only_runs_folder_is_named_before_any_work(lit_mae_main, tmp_path):
    runs = _read_only_folder(tmp_path / "runs")
    if runs is None:
        pytest.skip("no read-only file system: mounting a tmpfs needs root and a mount-capable sandbox")
    try:
        code, out, err = lit_mae_main(tmp_path, ["fit", "--config", str(CONFIG), *QUICK])
    finally:
        subprocess.run(["umount", str(runs)], check=True)
    assert code == 2 and "Traceback" not in err
    assert f"cannot write into {Path('runs/pretrain')}" in err and "Read-only file system" in err
    assert "Epoch 0" not in out + err  # stopped before training


def test_resuming_from_a_backup_copy_never_leaves_last_ckpt_dangling(lit_mae_main, fitted):
    """Fit on past the backup's epoch, then resume from the backup: `last.ckpt` must name the
    resumed run's newest checkpoint and load; the file it named before is not deleted under it."""
    run = fitted / "runs/pretrain"
    backup = fitted / "backup.ckpt"
    shutil.copy(run / "checkpoints/last.ckpt", backup)  # epoch 0
    steps = {}
    for epochs, ckpt_path in ((3, "last"), (2, str(backup))):
        code, _, err = lit_mae_main(fitted, ["fit", "--config", str(run / "config.yaml"), "--trainer.max_epochs",
                                             str(epochs), "--ckpt_path", ckpt_path])
        assert code == 0, err[-3000:]
        links = [path for path in (run / "checkpoints").iterdir() if path.is_symlink()]
        assert [path.name for path in links] == ["last.ckpt"]  # no last-v1.ckpt
        assert all(path.resolve().is_file() for path in links)  # none dangles
        steps[epochs] = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert steps == {3: 6, 2: 4}  # last.ckpt is the resumed run's newest (2 steps an epoch)
    assert (run / "checkpoints/epoch002.ckpt").is_file()  # what last.ckpt named before the backup resume


def test_validate_with_ckpt_path_last_evaluates_the_runs_last_checkpoint(lit_mae_main, fitted):
    """The evaluation writes into its own folder, but `last` is the training run's last.ckpt (it
    was looked for in the evaluation's folder, found nothing, and validated untrained weights)."""
    run = fitted / "runs/pretrain"

    def val_loss(*ckpt: str) -> str:
        code, out, err = lit_mae_main(fitted, ["validate", "--config", str(run / "config.yaml"), *ckpt])
        assert code == 0, err[-3000:]
        return next(line.split()[-1] for line in out.splitlines() if "val/loss" in line)

    trained = val_loss("--ckpt_path", str(run / "checkpoints/last.ckpt"))
    assert val_loss("--ckpt_path", "last") == trained
    assert val_loss() != trained  # without a checkpoint: the fresh weights, a control
