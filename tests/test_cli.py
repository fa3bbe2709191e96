"""The command line, run as users run it: `lightning`, `lit-mae` and `python -m lit_mae` subprocesses.

Each start costs seconds, so commands that do not depend on each other run side by side, and
every run happens in a temporary directory (the config's relative `runs/...` paths land there).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT, assert_ok, run_all, tiny_cli_args, tiny_config_values
from lit_mae import LitMAE

CONFIG = REPO_ROOT / "configs" / "pretrain.yaml"
SCRIPTS = Path(sys.executable).parent
LIGHTNING = [str(SCRIPTS / "lightning")]
LIT_MAE = [str(SCRIPTS / "lit-mae")]
PYTHON_M = [sys.executable, "-m", "lit_mae"]

TINY = tiny_config_values()
TINY_ARGS = tiny_cli_args()
# limits are fractions: Trainer types them `float | int`, so "1" on the command line means 100%
QUICK_ARGS = [*TINY_ARGS, "--data.init_args.image_size", "16", "--data.init_args.batch_size", "16",
              "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0"]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_all([command], cwd)[0]


# --- fit, then validate / test / predict from its checkpoint ----------------------------------

@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A two-step `lightning fit --config configs/pretrain.yaml` in a fresh directory."""
    where = tmp_path_factory.mktemp("fit")
    result = run([*LIGHTNING, "fit", "--config", str(CONFIG), *QUICK_ARGS, "--trainer.max_steps", "2",
                  "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0.1"], where)
    assert_ok(result)
    return where


def test_fit_writes_the_checkpoint_and_config_under_the_run_directory(fitted):
    run_dir = fitted / "runs" / "pretrain"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    assert (run_dir / "config.yaml").is_file()

    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2
    system = LitMAE.load_from_checkpoint(checkpoint)
    for key, value in TINY.items():
        assert getattr(system.config, key) == value  # the command-line overrides were used
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["config"]["embed_dim"] == TINY["embed_dim"]
    assert saved["trainer"]["max_steps"] == 2


def test_validate_test_and_predict_from_the_checkpoint_with_each_entry_point(fitted):
    # the saved config.yaml describes the run; each command logs to its own folder
    shutil.copy(fitted / "runs" / "pretrain" / "config.yaml", fitted / "saved.yaml")
    ckpt = ["--ckpt_path", "runs/pretrain/checkpoints/last.ckpt"]
    commands = {
        "validate": [*LIT_MAE, "validate", "--trainer.limit_val_batches", "0.1"],
        "test": [*PYTHON_M, "test", "--trainer.limit_test_batches", "0.1"],
        "predict": [*LIGHTNING, "predict", "--trainer.limit_predict_batches", "0.1"],
    }
    results = run_all([[*cmd, "--config", "saved.yaml", *ckpt,
                        "--trainer.logger.init_args.save_dir", f"logs_{name}"]
                       for name, cmd in commands.items()], fitted)
    for result in results:
        assert_ok(result)
    validate, test, predict = results
    assert "val/loss" in validate.stdout
    assert "test/loss" in test.stdout
    assert "Restoring states from the checkpoint" in predict.stdout + predict.stderr


# --- parsing: --print_config and misspelled keys ----------------------------------------------

def _yaml_with(tmp: Path, name: str, old: str, new: str) -> str:
    text = CONFIG.read_text()
    assert old in text, f"{old!r} not in {CONFIG}"
    (tmp / name).write_text(text.replace(old, new, 1))
    return str(tmp / name)


@pytest.fixture(scope="module")
def parse_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parse")


@pytest.fixture(scope="module")
def parsed(parse_dir) -> dict[str, subprocess.CompletedProcess]:
    """`--print_config` of the shipped config, and a misspelled YAML field, as subprocesses."""
    commands = {
        "print": [*LIGHTNING, "fit", "--config", str(CONFIG), "--print_config"],
        "typo": [*LIT_MAE, "fit", "--print_config",
                 "--config", _yaml_with(parse_dir, "field.yaml", "embed_dim:", "embed_dimm:")],
    }
    return dict(zip(commands, run_all(list(commands.values()), parse_dir)))


@pytest.fixture
def parse(capsys, monkeypatch):
    """`lightning <args>` through `lit_mae.cli.main` in this process: (exit code, stdout, stderr).

    Parsing alone takes a fraction of a second here against seconds for a new interpreter."""
    from lit_mae.cli import main

    def parse_args(args: list[str]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["lightning"])
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(args)
        out, err = capsys.readouterr()
        return info.value.code or 0, out, err

    return parse_args


def test_print_config_round_trips(parsed, parse_dir, parse):
    first = parsed["print"]
    assert_ok(first)
    printed = yaml.safe_load(first.stdout)
    original = yaml.safe_load(CONFIG.read_text())
    assert printed["model"]["class_path"] == original["model"]["class_path"] == "lit_mae.LitMAE"
    for key, value in original["model"]["init_args"]["config"].items():
        assert printed["model"]["init_args"]["config"][key] == value, key
    assert printed["data"]["init_args"]["batch_size"] == original["data"]["init_args"]["batch_size"]
    assert printed["trainer"]["max_epochs"] == original["trainer"]["max_epochs"]

    (parse_dir / "printed.yaml").write_text(first.stdout)
    code, again, _ = parse(["fit", "--config", str(parse_dir / "printed.yaml"), "--print_config"])
    assert code == 0
    assert again == first.stdout


def _assert_rejected_with_hint(code: int, stderr: str, wrong: str, right: str, others: list[str]) -> None:
    assert code != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    hint = [line for line in stderr.splitlines() if f"'{wrong}' is not a key" in line]
    assert hint, stderr[-3000:]
    assert f"Did you mean '{right}'?" in hint[-1]
    valid = hint[-1].split("Valid keys:")[1]
    for name in [right, *others]:
        assert name in valid, (name, hint[-1])


@pytest.mark.parametrize("typo, expected", [
    ("model_arg", ("base_lrr", "lit_mae.LitMAE", True)),
    ("config_arg", ("num_head", "lit_mae.MAEConfig", True)),
    ("trainer_arg", ("max_epocs", "trainer", False)),
    ("trainer_yaml", ("max_epoch", "trainer", False)),
])
def test_unknown_keys_reads_what_jsonargparse_says(parse_dir, monkeypatch, typo, expected):
    """The canary of `unknown_keys`, the one reader of jsonargparse's message text: it fails when
    jsonargparse words an unknown key otherwise (the hints would then silently vanish)."""
    from lit_mae.cli import lightning_cli

    messages, error = [], lightning_cli.LightningArgumentParser.error

    def recording_error(self, message, ex=None):
        messages.append(message)  # every parser's message, nested ones too; then jsonargparse's own error
        error(self, message, ex)

    monkeypatch.setattr(lightning_cli.LightningArgumentParser, "error", recording_error)
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit):
        lightning_cli.run_cli(_fit_args(parse_dir, typo))
    found = [tuple(key) for message in messages for key in lightning_cli.unknown_keys(message)]
    assert expected in found, messages


def test_misspelled_config_field_in_yaml_is_rejected_by_the_script(parsed):
    result = parsed["typo"]
    _assert_rejected_with_hint(result.returncode, result.stderr, "embed_dimm", "embed_dim", ["depth", "mask_ratio"])
    assert result.stdout == ""  # nothing printed, nothing trained


def _fit_args(parse_dir: Path, typo: str) -> list[str]:
    """`fit --print_config` (so an accepted typo would not train) with one misspelling."""
    base = ["fit", "--print_config", "--config"]
    return {
        "model_arg": [*base, str(CONFIG), "--model.init_args.base_lrr", "1e-3"],
        "config_arg": [*base, str(CONFIG), "--model.init_args.config.num_head", "2"],
        "data_arg": [*base, str(CONFIG), "--data.init_args.batch_sze", "8"],
        "data_yaml": [*base, _yaml_with(parse_dir, "data.yaml", "batch_size:", "batch_sise:")],
        "trainer_yaml": [*base, _yaml_with(parse_dir, "trainer.yaml", "max_epochs:", "max_epoch:")],
        # not "max_epoch": argparse takes a unique prefix on the command line as the full name
        "trainer_arg": [*base, str(CONFIG), "--trainer.max_epocs", "3"],
    }[typo]


@pytest.mark.parametrize("typo, wrong, right, others", [
    ("model_arg", "base_lrr", "base_lr", ["weight_decay", "warmup_epochs"]),
    ("config_arg", "num_head", "num_heads", ["embed_dim", "decoder_num_heads"]),
    ("data_arg", "batch_sze", "batch_size", ["image_size", "channels"]),
    ("data_yaml", "batch_sise", "batch_size", ["image_size", "channels"]),
])
def test_misspelled_keys_are_rejected_with_a_suggestion(parse_dir, parse, typo, wrong, right, others):
    code, out, err = parse(_fit_args(parse_dir, typo))
    assert out == ""
    _assert_rejected_with_hint(code, err, wrong, right, others)


@pytest.mark.parametrize("typo, wrong", [("trainer_yaml", "max_epoch"), ("trainer_arg", "max_epocs")])
def test_misspelled_trainer_keys_are_rejected(parse_dir, parse, typo, wrong):
    code, out, err = parse(_fit_args(parse_dir, typo))
    assert code != 0 and out == ""
    assert wrong in err


def test_misspelled_trainer_key_in_yaml_gets_a_suggestion(parse_dir, parse):
    code, _, err = parse(_fit_args(parse_dir, "trainer_yaml"))
    _assert_rejected_with_hint(code, err, "max_epoch", "max_epochs", ["max_steps", "devices"])


def test_misspelled_trainer_argument_gets_a_suggestion(parse_dir, parse):
    code, _, err = parse(_fit_args(parse_dir, "trainer_arg"))
    _assert_rejected_with_hint(code, err, "max_epocs", "max_epochs", ["max_steps", "devices"])


def test_linprobe_and_finetune_configs_run_on_the_pretrain_checkpoint(fitted):
    """The chain of the README: the probe and fine-tune configs read runs/pretrain/checkpoints/last.ckpt,
    end by testing their best checkpoint, and their checkpoints work with validate and test."""
    quick = ["--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
             "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0.1"]
    data = {"linprobe": "--data.init_args.images.init_args.", "finetune": "--data.init_args."}  # probe: CachedFeatures
    names = ("linprobe", "finetune")
    configs = {name: str(REPO_ROOT / "configs" / f"{name}.yaml") for name in names}
    results = run_all([[*LIGHTNING, "fit", "--config", configs[name], *quick, f"{data[name]}image_size", "16",
                        f"{data[name]}batch_size", "16"] for name in names], fitted)
    for result, name in zip(results, names):
        assert_ok(result)
        assert (fitted / "runs" / name / "checkpoints" / "last.ckpt").is_file()
        assert "testing the best checkpoint" in result.stdout and "runs/" + name in result.stdout
        assert "test/acc_top1" in result.stdout and "test/acc_top5" in result.stdout

    commands = [[*LIGHTNING, subcommand, "--config", configs[name], "--trainer.enable_progress_bar", "false",
                 "--ckpt_path", f"runs/{name}/checkpoints/last.ckpt",
                 "--trainer.logger.init_args.save_dir", f"logs_{subcommand}_{name}"]
                for subcommand, name in (("validate", "linprobe"), ("test", "finetune"))]
    validate, test = run_all(commands, fitted)
    for result in (validate, test):
        assert_ok(result)
        assert "Restoring states from the checkpoint" in result.stdout + result.stderr
    assert "val/acc_top1" in validate.stdout and "test/acc_top1" not in validate.stdout
    assert "test/acc_top1" in test.stdout
