"""Reconstruction grids: layout, exact de-normalisation, the callback in a fit, `lit-mae visualize`."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from conftest import tiny_config_values
from lit_mae import LitMAE, MAEConfig, MaskedAutoencoderViT
from lit_mae.callbacks import ReconstructionGridLogger
from lit_mae.datamodules import DigitsDataModule
from lit_mae.models.ops import patchify
from lit_mae.visualize import GREY, reconstruction_grid, reconstruction_panels, save_png

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
S, P = 16, 4  # image size, patch size of the tiny config


def make_images(B: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels in [0, 1], the same normalised with MEAN/STD), both (B, 3, S, S)."""
    pixels = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(seed))
    normalised = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return pixels, normalised


def removed_pixels(model: MaskedAutoencoderViT, images: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, 1, H, W) bool, True where the seeded mask removed the patch."""
    mask = model(images, generator=torch.Generator().manual_seed(seed)).mask  # (B, L)
    grid = mask.view(len(images), 1, S // P, S // P).bool()
    return grid.repeat_interleave(P, dim=2).repeat_interleave(P, dim=3)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def perfect(model: MaskedAutoencoderViT, images: torch.Tensor, monkeypatch) -> None:
    """Make the decoder predict the loss targets of `images` exactly."""
    target = patchify(images, P)  # (B, L, p*p*C)
    if model.config.norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    monkeypatch.setattr(model, "forward_decoder", lambda latent, ids_restore, grid: target)


def test_grid_layout_size_and_panels():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(MAEConfig(**tiny_config_values()))
    pixels, images = make_images(B=3)
    grid = reconstruction_grid(model, images, MEAN, STD, seed=5, pad=1)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 3 * S + 2, 4 * S + 3)
    assert (grid[:, S, :] == 255).all() and (grid[:, :, S] == 255).all()  # separators
    assert torch.equal(reconstruction_grid(model, images, MEAN, STD, seed=5, pad=1), grid)  # fixed mask
    assert reconstruction_grid(model, images, MEAN, STD, pad=0).shape == (3, 3 * S, 4 * S)

    removed = removed_pixels(model, images, seed=5).expand(-1, 3, -1, -1)
    assert removed.float().mean().item() == pytest.approx(0.75)  # the config's ratio (12 of 16 patches)
    for row in range(3):
        cells = [grid[:, row * (S + 1):row * (S + 1) + S, col * (S + 1):col * (S + 1) + S] for col in range(4)]
        original, masked, _, pasted = cells
        assert (original.int() - to_uint8(pixels[row]).int()).abs().max() <= 1
        assert torch.equal(masked[~removed[row]], original[~removed[row]])
        assert (masked[removed[row]] == round(GREY * 255)).all()
        assert torch.equal(pasted[~removed[row]], original[~removed[row]])  # visible patches pasted back


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_a_perfect_prediction_reproduces_the_image(norm_pix_loss, monkeypatch):
    model = MaskedAutoencoderViT(MAEConfig(**tiny_config_values(norm_pix_loss=norm_pix_loss)))
    pixels, images = make_images(B=2, seed=1)
    perfect(model, images, monkeypatch)
    original, masked, recon, pasted = reconstruction_panels(model, images, MEAN, STD, mask_ratio=0.5, seed=3)
    assert (original - pixels).abs().max() < 1e-5
    assert (to_uint8(recon).int() - to_uint8(pixels).int()).abs().max() <= 1  # within 1/255
    assert (to_uint8(pasted).int() - to_uint8(pixels).int()).abs().max() <= 1
    assert not torch.allclose(masked, original)


def test_save_png_writes_the_grid_and_upscales(tmp_path):
    grid = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    with Image.open(save_png(grid, tmp_path / "a" / "g.png")) as image:
        assert image.size == (7, 5) and torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), grid)
    with Image.open(save_png(grid[:1], tmp_path / "g1.png", scale=3)) as image:
        assert image.size == (21, 15) and image.mode == "L"


# --- the callback in a fit ------------------------------------------------------------------------

def fit(tmp_path: Path, logger, callback: ReconstructionGridLogger, epochs: int = 2) -> Trainer:
    torch.manual_seed(0)
    system = LitMAE(config=MAEConfig(**tiny_config_values(norm_pix_loss=True)), lr=1e-3, warmup_epochs=0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=[callback], max_epochs=epochs,
                      limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    trainer.fit(system, datamodule=DigitsDataModule(image_size=16, batch_size=8))
    return trainer


def test_callback_writes_pngs_and_sends_tensorboard_images(tmp_path, one_thread, monkeypatch):
    logger = TensorBoardLogger(tmp_path, name="run", version="v0")
    sent = []
    monkeypatch.setattr(logger.experiment, "add_image",
                        lambda tag, grid, global_step=None, dataformats="CHW": sent.append((tag, grid, global_step)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # digits have mean/std: nothing to warn about
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*log_every_n_steps.*")
        fit(tmp_path, logger, ReconstructionGridLogger(every_n_epochs=1, num_images=4))
    files = sorted(p.name for p in (tmp_path / "run" / "v0" / "reconstructions").iterdir())
    assert files == ["epoch000.png", "epoch001.png"]  # train end repeats the last step: not drawn again
    assert [(tag, step) for tag, _, step in sent] == [("val/reconstructions", 2), ("val/reconstructions", 4)]
    assert sent[0][1].shape == (3, 4 * 16 + 3, 4 * 16 + 3) and sent[0][1].dtype == torch.uint8
    with Image.open(tmp_path / "run" / "v0" / "reconstructions" / "epoch001.png") as image:
        assert image.size == (4 * 16 + 3, 4 * 16 + 3)
    assert not torch.equal(sent[0][1], sent[1][1])  # the model changed; the images did not
    assert torch.equal(sent[0][1][:, :16, :16], sent[1][1][:, :16, :16])


@pytest.mark.filterwarnings("ignore:.*CSVLogger takes no images.*")
def test_callback_every_n_epochs_and_train_end(tmp_path, one_thread):
    fit(tmp_path, CSVLogger(tmp_path, name="csv", version=0), ReconstructionGridLogger(every_n_epochs=2), epochs=3)
    files = sorted(p.name for p in (tmp_path / "csv" / "version_0" / "reconstructions").iterdir())
    assert files == ["epoch001.png", "epoch002.png"]  # epoch 1 by the schedule, epoch 2 at train end


def test_a_logger_without_images_warns_once(tmp_path, one_thread):
    with pytest.warns(UserWarning, match="CSVLogger takes no images") as record:
        trainer = fit(tmp_path, CSVLogger(tmp_path, name="csv"), ReconstructionGridLogger(every_n_epochs=1))
    assert sum("takes no images" in str(w.message) for w in record) == 1
    assert trainer.state.finished and len(list(Path(trainer.log_dir, "reconstructions").iterdir())) == 2


def test_a_failing_write_warns_once_and_training_finishes(tmp_path, one_thread, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lit_mae.callbacks.reconstruction.save_png", broken)
    logger = TensorBoardLogger(tmp_path, name="run")
    monkeypatch.setattr(logger.experiment, "add_image", broken)
    with pytest.warns(UserWarning, match="disk full") as record:
        trainer = fit(tmp_path, logger, ReconstructionGridLogger(every_n_epochs=1))
    assert sum("could not write the PNG" in str(w.message) for w in record) == 1
    assert sum("sending the grid to TensorBoardLogger failed" in str(w.message) for w in record) == 1
    assert trainer.state.finished and trainer.current_epoch == 2


def test_without_datamodule_statistics_it_assumes_unit_pixels(tmp_path, one_thread):
    from conftest import ImageDataModule

    system = LitMAE(config=MAEConfig(**tiny_config_values()), lr=1e-3, warmup_epochs=0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, max_epochs=1, limit_train_batches=1,
                      limit_val_batches=1, num_sanity_val_steps=0, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[ReconstructionGridLogger(every_n_epochs=1, num_images=2)])
    with pytest.warns(UserWarning, match=r"assuming the validation images are pixels in \[0, 1\]"):
        trainer.fit(system, datamodule=ImageDataModule())
    assert (tmp_path / "reconstructions" / "epoch000.png").is_file()


# --- the command ----------------------------------------------------------------------------------

def test_lit_mae_visualize_on_a_lightning_checkpoint(tmp_path, one_thread):
    torch.manual_seed(0)
    system = LitMAE(config=MAEConfig(**tiny_config_values()), lr=1e-3, warmup_epochs=0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, max_steps=1, limit_val_batches=0,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    trainer.fit(system, datamodule=DigitsDataModule(image_size=16, batch_size=8))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "a.png")
    Image.new("L", (20, 20), 90).save(tmp_path / "b.png")

    script = Path(sys.executable).parent / "lit-mae"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(script), "visualize", "--ckpt", str(tmp_path / "last.ckpt"), "--images",
                             str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(tmp_path / "g.png"),
                             "--mask-ratio", "0.5", "--seed", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(tmp_path / "g.png") as image:
        assert image.size == (4 * 16 + 3, 2 * 16 + 1) and image.mode == "RGB"
        assert image.getpixel((2, 2)) == (200, 30, 30)  # the original panel of a uniform image
