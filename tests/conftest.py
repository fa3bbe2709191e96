"""Shared fixtures and helpers: a tiny architecture, a quiet CPU Trainer, a user-style image
DataModule, perturbed weights and bitwise state comparisons, and running the CLI (in this process
or as side-by-side subprocesses)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping
from unittest import mock

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lit_mae import MAEConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def tiny_config_values(**overrides: Any) -> dict[str, Any]:
    """A model small enough to train a few steps in well under a second on CPU."""
    values = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=1, num_heads=2,
                  decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    return {**values, **overrides}


def tiny_cli_args(**overrides: Any) -> list[str]:
    """The tiny architecture as `--model.init_args.config.<field>=<value>` command-line arguments."""
    return [f"--model.init_args.config.{key}={value}" for key, value in tiny_config_values(**overrides).items()]


def tiny_lit_mae(**kwargs: Any):
    """A LitMAE of the tiny architecture at lr 1e-3 without warmup (`kwargs` override those)."""
    from lit_mae import LitMAE  # lazily, as `lit_mae` itself resolves it

    return LitMAE(config=MAEConfig(**tiny_config_values()), **{"lr": 1e-3, "warmup_epochs": 0, **kwargs})


@pytest.fixture
def tiny_config() -> MAEConfig:
    return MAEConfig(**tiny_config_values())


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine their
    spinning made 16-step fits take 2-11 s instead of 0.1 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_trainer(tmp_path: Path, one_thread) -> Callable[..., Trainer]:
    """A CPU Trainer with no logger, checkpoints or progress bar, rooted in `tmp_path`."""

    def make(**kwargs: Any) -> Trainer:
        settings = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path)
        settings.update(kwargs)
        return Trainer(**settings)

    return make


class ImageDataset(Dataset):
    """`n` fixed random images, yielded as a plain tensor, an (image, label) pair or a dict."""

    def __init__(self, n: int, size: int, channels: int, kind: str, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, channels, size, size, generator=generator)  # (N, C, S, S)
        self.labels = torch.arange(n) % 10
        self.kind = kind

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> object:
        if self.kind == "tensor":
            return self.images[i]
        if self.kind == "tuple":
            return self.images[i], self.labels[i]
        if self.kind == "dict":
            return {"images": self.images[i], "labels": self.labels[i]}
        raise ValueError(self.kind)


class ImageDataModule(LightningDataModule):
    """What a user might write: no shuffling (runs are comparable), no labels unless asked for."""

    def __init__(self, n: int = 32, size: int = 16, channels: int = 3, batch_size: int = 4,
                 kind: str = "tensor", dataset: Dataset | None = None) -> None:
        super().__init__()
        self.dataset = dataset if dataset is not None else ImageDataset(n, size, channels, kind)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)


UNREADABLE_KINDS = ("not-an-image", "truncated", "empty")


def write_unreadable(path: Path, kind: str) -> Path:
    """A file with an image suffix that is no readable image (one of UNREADABLE_KINDS): text, the
    first 60% of a JPEG, or nothing at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "not-an-image":
        path.write_text("name,label\ncat,1\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
        whole = io.BytesIO()
        Image.fromarray(pixels).save(whole, format="JPEG", quality=95)
        path.write_bytes(whole.getvalue()[:int(len(whole.getvalue()) * 0.6)])
    else:
        raise ValueError(f"kind must be one of {UNREADABLE_KINDS}, got {kind!r}")
    return path


# --- weights ---------------------------------------------------------------------------------------

def perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """`model` in eval mode with seeded noise added to every parameter (biases, LayerNorms and the
    frozen position tables too) and random BatchNorm statistics, so that a weight mapped to the
    wrong place cannot hide behind an init value (zeros, ones, the sin-cos table)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator).to(param) * scale)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of `module`'s state dict, unaffected by later training."""
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def assert_same_state(got: torch.nn.Module | Mapping[str, torch.Tensor],
                      want: torch.nn.Module | Mapping[str, torch.Tensor],
                      skip: tuple[str, ...] = (), ordered: bool = False) -> None:
    """Bitwise-equal state dicts (of modules, or the dicts themselves): the same keys, those starting
    with a prefix in `skip` left out (in the same order if `ordered`), and every tensor equal."""
    got = dict(got.state_dict() if isinstance(got, torch.nn.Module) else got)
    want = dict(want.state_dict() if isinstance(want, torch.nn.Module) else want)
    got_keys = [key for key in got if not key.startswith(skip)]
    want_keys = [key for key in want if not key.startswith(skip)]
    assert want_keys, "nothing to compare"
    if ordered:
        assert got_keys == want_keys
    else:
        assert set(got_keys) == set(want_keys), set(got_keys) ^ set(want_keys)
    for key in want_keys:
        a, b = got[key], want[key]
        if not torch.equal(a, b):
            same_shape = a.shape == b.shape and a.numel()
            raise AssertionError(f"{key} differs " + (f"by {(a.float() - b.float()).abs().max().item()}" if same_shape
                                                      else f"in shape: {tuple(a.shape)} vs {tuple(b.shape)}"))


# --- the command line -------------------------------------------------------------------------------

def run_cli_in(where: Path, args: list[str]):
    """`lightning <args>` through `lit_mae.cli.lightning_cli.run_cli` in this process, run from
    `where` on one thread (a tiny model on a shared 2-core machine: more threads only spin); the CLI."""
    from lit_mae.cli.lightning_cli import run_cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # as if typed: LightningCLI warns when pytest's own arguments are in sys.argv
        with contextlib.chdir(where), mock.patch.object(sys, "argv", ["lightning"]):
            return run_cli(args)
    finally:
        torch.set_num_threads(threads)


def run_all(commands: list[list[str]], cwd: Path, timeout: float = 120,
            env: Callable[[], dict[str, str]] | None = None) -> list[subprocess.CompletedProcess]:
    """Run commands side by side; their outputs in order. One thread each (they share the machine's
    cores); `env()` adds variables, called once per command. Each command gets a session of its own,
    so a hung one is stopped whole, with any process it started (DDP's other ranks), and says so."""
    base = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=cwd, env={**base, **(env() if env else {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for cmd in commands]
    results = []
    for cmd, proc in zip(commands, procs):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n[run_all] killed after {timeout} s"
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return results


def assert_ok(result: subprocess.CompletedProcess) -> None:
    """The command succeeded; if not, the message shows its arguments and the ends of its output."""
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


QUIET = (  # Lightning's hints that are noise for these tiny runs
    "ignore:.*does not have many workers.*",
    "ignore:.*log_every_n_steps.*",
    "ignore:.*treespec, LeafSpec.*",  # Lightning 2.6 vs torch 2.14
    "ignore:.*Skipping val loop.*",
    "ignore:.*callbacks used to create the checkpoint.*",
    "ignore::DeprecationWarning:lightning.pytorch.cli",  # jsonargparse's, about Lightning's own calls
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for spec in QUIET:
            item.add_marker(pytest.mark.filterwarnings(spec))


@pytest.fixture
def lit_mae_main(capsys, monkeypatch, one_thread) -> Callable[..., tuple[int, str, str]]:
    """`lit-mae <args>` through `lit_mae.cli.main` in this process, run from a folder: (exit status,
    stdout, stderr). `catch=False` lets an exception out instead of reading an exit status."""
    from lit_mae.cli import main

    def run(where: Path, args: list[str], catch: bool = True) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["lit-mae"])
        capsys.readouterr()
        code = 0
        with contextlib.chdir(where):
            try:
                main(args)
            except SystemExit as exit_:
                if not catch:
                    raise
                code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
