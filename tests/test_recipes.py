"""The paper-recipe configs (configs/imagenet/, configs/cifar10/): their arithmetic, and two steps of each.

Every run goes through the CLI parser with the shipped YAML (`lit_mae.cli.run_cli`, in this
process: nine fresh interpreters would spend ~5 s each importing torch and Lightning; the console
scripts themselves are covered by test_cli.py). Only what cannot run here is overridden: a tiny
model, generated images, CPU instead of 8 GPUs under DDP, small batches, two optimizer steps.
The rest of each YAML (optimizer settings, gradient accumulation, bf16-mixed precision,
augmentation, callbacks, log and checkpoint paths) runs as written. The probe and fine-tune runs
are not told where the encoder is: they read the checkpoint the pretraining run of this module
wrote, at the path their YAML names.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import lit_mae.datamodules
from conftest import REPO_ROOT, run_cli_in
from lit_mae.cli.lightning_cli import LitMAECLI, run_cli

CONFIGS = REPO_ROOT / "configs"
SIZES = ("base", "large")

# the encoder every run trains: one block at 32 px in 8-pixel patches
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
ON_CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
          "--trainer.strategy", "auto", "--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
DATA_ON_CPU = {"image_size": "32", "batch_size": "2", "num_workers": "0"}

HAS_CIFAR10 = hasattr(lit_mae.datamodules, "CIFAR10DataModule")
# the linear probe's frozen encoder stays in eval mode on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode:UserWarning")
NO_CIFAR10 = "lit_mae.datamodules.CIFAR10DataModule does not exist yet"
needs_cifar10 = pytest.mark.skipif(not HAS_CIFAR10, reason=NO_CIFAR10)


def recipe(path: str) -> dict:
    return yaml.safe_load((CONFIGS / path).read_text())


def tiny_model_args(config: dict) -> list[str]:
    """The pretraining YAML's preset swapped for `tiny`, keeping its other overrides (norm_pix_loss ...)."""
    overrides = {**config["model"]["init_args"]["overrides"], **TINY}
    return ["--model.init_args.preset", "tiny", "--model.init_args.overrides", json.dumps(overrides),
            "--model.init_args.compile", "false"]  # compiling a tiny CPU model would take most of the test


def data_args(config: dict, values: dict[str, str]) -> list[str]:
    """`--data.init_args.<key> <value>`, through `images` when the config wraps its DataModule in CachedFeatures."""
    wrapped = config["data"]["class_path"] == "lit_mae.CachedFeatures"
    prefix = "--data.init_args.images.init_args." if wrapped else "--data.init_args."
    return [arg for key, value in values.items() for arg in (prefix + key, value)]


def fit(config: str, where: Path, *args: str) -> LitMAECLI:
    """`lightning fit --config configs/<config> <ON_CPU> <args>` in this process, run from `where`.

    The epoch is cut to the two steps' batches (the YAML's gradient accumulation decides how many),
    so that the two steps end an epoch and validation and the checkpoint callbacks run as in a real one.
    """
    accumulate = recipe(config)["trainer"].get("accumulate_grad_batches", 1)
    one_epoch = ["--trainer.limit_train_batches", str(2 * accumulate)]
    return run_cli_in(where, ["fit", "--config", str(CONFIGS / config), *ON_CPU,
                              *data_args(recipe(config), DATA_ON_CPU), *one_epoch, *args])


def encoder_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("model.encoder."): v for k, v in state.items() if k.startswith("model.encoder.")}


def assert_checkpoints(run: Path, best: bool) -> None:
    """The epoch's checkpoint, last.ckpt linking to it, and (with a monitor) the best epoch's."""
    folder = run / "checkpoints"
    assert (folder / "last.ckpt").resolve() == (folder / "epoch000.ckpt").resolve()
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    assert (folder / "best-epoch000.ckpt").is_file() == best
    assert (run / "config.yaml").is_file()


def assert_chained(cli: LitMAECLI, config: dict, where: Path, frozen: bool) -> None:
    """The run loaded the encoder at the YAML's `pretrained` path, and trained two steps."""
    assert cli.trainer.global_step == 2
    pretrained = encoder_weights(where / config["model"]["init_args"]["pretrained"])
    tuned = cli.model.model.encoder.state_dict()
    assert pretrained.keys() <= tuned.keys()
    for name, value in pretrained.items():
        # frozen: bit-identical; fine-tuned: two steps at a warmup lr move weights by ~1e-5
        torch.testing.assert_close(tuned[name], value, rtol=0, atol=0 if frozen else 1e-3, msg=name)


# --- the recipes' arithmetic -----------------------------------------------------------------

PAPER = {  # config: (effective batch, lr, epochs, warmup epochs), as the MAE paper and its official code give them
    "imagenet/pretrain_vit_base.yaml": (4096, 2.4e-3, 800, 40),
    "imagenet/pretrain_vit_large.yaml": (4096, 2.4e-3, 800, 40),
    "imagenet/linprobe_vit_base.yaml": (16384, 6.4, 90, 10),
    "imagenet/linprobe_vit_large.yaml": (16384, 6.4, 50, 10),
    "imagenet/finetune_vit_base.yaml": (1024, 2e-3, 100, 5),
    "imagenet/finetune_vit_large.yaml": (1024, 4e-3, 50, 5),
}


@pytest.mark.parametrize("path", PAPER)
def test_imagenet_recipes_have_the_papers_batch_lr_and_schedule_on_one_node_of_8_gpus(path):
    config, (batch, lr, epochs, warmup) = recipe(path), PAPER[path]
    trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    per_step = trainer["devices"] * trainer["num_nodes"] * trainer["accumulate_grad_batches"]
    effective = data["batch_size"] * per_step
    assert (trainer["devices"], trainer["num_nodes"], trainer["strategy"]) == (8, 1, "ddp")
    assert effective == batch
    assert model["base_lr"] * effective / 256 == pytest.approx(lr)
    assert (trainer["max_epochs"], model["warmup_epochs"]) == (epochs, warmup)
    assert trainer["precision"] == "bf16-mixed"
    assert "root" not in data and "val_root" not in data  # given on the command line


@pytest.mark.parametrize("path", ["imagenet/pretrain_vit_base.yaml", "imagenet/pretrain_vit_large.yaml",
                                  "cifar10/pretrain.yaml"])
def test_gpu_pretraining_recipes_take_the_compiled_fast_path(path):
    assert recipe(path)["model"]["init_args"]["compile"] is True


@pytest.mark.parametrize("path, pretrain", [
    *[(f"imagenet/{stage}_vit_{size}.yaml", f"imagenet/pretrain_vit_{size}.yaml")
      for stage in ("linprobe", "finetune") for size in SIZES],
    ("cifar10/linprobe.yaml", "cifar10/pretrain.yaml"),
    ("cifar10/finetune.yaml", "cifar10/pretrain.yaml"),
])
def test_probe_and_fine_tune_read_the_checkpoint_their_pretraining_writes(path, pretrain):
    trainer = recipe(pretrain)["trainer"]
    (checkpoint,) = trainer["callbacks"]
    assert checkpoint["init_args"]["save_last"] and "dirpath" not in checkpoint["init_args"]  # <run>/checkpoints
    logger = trainer["logger"]["init_args"]
    run = Path(logger["save_dir"]) / logger["name"] / logger["version"]
    assert run == Path(trainer["default_root_dir"])  # the same folder with a logger or without one
    assert Path(recipe(path)["model"]["init_args"]["pretrained"]) == run / "checkpoints" / "last.ckpt"


def test_an_imagenet_config_without_a_data_root_stops_and_names_it(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit) as info:
        run_cli(["fit", "--config", str(CONFIGS / "imagenet" / "pretrain_vit_base.yaml"),
                 "--data.init_args.val_root", "/nowhere"])
    assert info.value.code != 0
    assert "required: root" in capsys.readouterr().err


# --- two steps of each recipe: ImageNet layout ----------------------------------------------

@pytest.fixture(scope="module")
def image_folders(tmp_path_factory) -> dict[str, Path]:
    """train/ and val/ in ImageNet's class-per-folder layout: 3 classes, 12 + 2 images each, 40x30
    (36 training images: 18 batches of 2, the 16 that two steps at accumulation 8 take)."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 2)):
        for label in ("n01440764", "n01443537", "n01484850"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{label}_{i}.{'JPEG' if i % 2 else 'png'}")
    return {"train": root / "train", "val": root / "val"}


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory) -> Path:
    """Where the ImageNet runs start (their runs/ folder), shared so that the probes find the checkpoints."""
    return tmp_path_factory.mktemp("imagenet_runs")


def imagenet_fit(config: str, where: Path, folders: dict[str, Path], *args: str) -> LitMAECLI:
    data = ["--data.init_args.root", str(folders["train"]), "--data.init_args.val_root", str(folders["val"])]
    return fit(config, where, *data, *args)


@pytest.fixture(scope="module", params=SIZES)
def imagenet_pretrained(request, image_folders, imagenet_dir) -> tuple[str, LitMAECLI]:
    config = f"imagenet/pretrain_vit_{request.param}.yaml"
    cli = imagenet_fit(config, imagenet_dir, image_folders, *tiny_model_args(recipe(config)))
    return request.param, cli


def test_imagenet_pretraining_writes_last_ckpt(imagenet_pretrained, imagenet_dir):
    size, cli = imagenet_pretrained
    assert cli.trainer.global_step == 2
    assert cli.trainer.accumulate_grad_batches == 8  # the YAML's: 16 batches of 2 ran
    assert cli.model.config.norm_pix_loss and cli.model.config.mask_ratio == 0.75
    assert "val/loss" in cli.trainer.callback_metrics
    assert_checkpoints(imagenet_dir / "runs" / "imagenet" / f"pretrain_vit_{size}", best=False)


@pytest.mark.parametrize("stage", ["linprobe", "finetune"])
def test_imagenet_probe_and_fine_tune_train_the_pretrained_encoder(imagenet_pretrained, image_folders,
                                                                   imagenet_dir, stage):
    size, _ = imagenet_pretrained
    config = f"imagenet/{stage}_vit_{size}.yaml"
    cli = imagenet_fit(config, imagenet_dir, image_folders)
    assert_chained(cli, recipe(config), imagenet_dir, frozen=stage == "linprobe")
    assert cli.model.model.head.out_features == 3  # the number of class folders
    assert "val/acc_top1" in cli.trainer.callback_metrics
    assert_checkpoints(imagenet_dir / "runs" / "imagenet" / f"{stage}_vit_{size}", best=True)


# --- two steps of each recipe: CIFAR-10 -------------------------------------------------------

def write_fake_cifar10(folder: Path, per_file: int = 4) -> None:
    """torchvision's CIFAR-10 layout (cifar-10-batches-py: five training pickles, a test one, the
    label names), with a few random images in place of 60,000."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_file).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory) -> Iterator[Path]:
    """Where the CIFAR-10 runs start: data/cifar10 (the YAML's root) holds a fake CIFAR-10, which
    torchvision accepts with its md5 check switched off; nothing is downloaded."""
    if not HAS_CIFAR10:
        pytest.skip(NO_CIFAR10)
    where = tmp_path_factory.mktemp("cifar10_runs")
    write_fake_cifar10(where / "data" / "cifar10" / "cifar-10-batches-py")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
        yield where


@pytest.fixture(scope="module")
def cifar10_pretrained(cifar10_dir) -> LitMAECLI:
    return fit("cifar10/pretrain.yaml", cifar10_dir, *tiny_model_args(recipe("cifar10/pretrain.yaml")))


@needs_cifar10
def test_cifar10_pretraining_writes_last_ckpt(cifar10_pretrained, cifar10_dir):
    assert cifar10_pretrained.trainer.global_step == 2
    assert cifar10_pretrained.model.config.norm_pix_loss
    assert_checkpoints(cifar10_dir / "runs" / "cifar10" / "pretrain", best=False)


@needs_cifar10
@pytest.mark.parametrize("stage", ["linprobe", "finetune"])
def test_cifar10_probe_and_fine_tune_train_the_pretrained_encoder_and_test(cifar10_pretrained, cifar10_dir,
                                                                         stage, capsys):
    config = f"cifar10/{stage}.yaml"
    cli = fit(config, cifar10_dir)
    assert_chained(cli, recipe(config), cifar10_dir, frozen=stage == "linprobe")
    assert cli.model.model.head.out_features == 10
    run = cifar10_dir / "runs" / "cifar10" / stage
    assert_checkpoints(run, best=True)
    out = capsys.readouterr().out  # test_after_fit tested the best checkpoint on the test split
    assert "testing the best checkpoint" in out and "best-epoch000.ckpt" in out
    assert "test/acc_top1" in out
