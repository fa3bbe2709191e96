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
from lit_mae.visualize import COLUMN_TITLES, GREY, legible_scale, reconstruction_grid, reconstruction_panels, save_png, titled

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


def untitled(image: torch.Tensor, scale: int, height: int) -> torch.Tensor:
    """The grid inside a `titled` one: its bottom `height * scale` rows, every `scale`-th pixel."""
    return image[:, -height * scale:, :][:, ::scale, ::scale]


def test_titled_enlarges_by_nearest_and_titles_each_column():
    grid = torch.randint(0, 200, (3, 2 * S + 1, 4 * S + 3), dtype=torch.uint8)
    scale = legible_scale(S)
    assert scale == 6 and legible_scale(224) == 1  # 16 px images to 96 px; ImageNet sizes stay
    image = titled(grid, scale)
    band = image.shape[1] - grid.shape[1] * scale
    assert image.shape == (3, band + grid.shape[1] * scale, grid.shape[2] * scale) and 10 <= band <= 30
    assert torch.equal(untitled(image, scale, grid.shape[1]), grid)
    assert torch.equal(image[:, band:, :], grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2))
    header = image[0, :band].int()  # (band, W): white, with dark text over every column
    darkest = [header[:, c * (S + 1) * scale:(c * (S + 1) + S) * scale].min().item() for c in range(4)]
    assert all(value < 100 for value in darkest), darkest
    assert (header[:, S * scale:(S + 1) * scale] == 255).all()  # the gaps between columns stay white
    assert len(COLUMN_TITLES) == 4


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
    first, second = sent[0][1], sent[1][1]
    assert first.dtype == torch.uint8 and first.shape[2] == 6 * (4 * 16 + 3)  # 16 px digits enlarged 6x
    assert first.shape[1] > 6 * (4 * 16 + 3)  # and titled
    with Image.open(tmp_path / "run" / "v0" / "reconstructions" / "epoch001.png") as image:
        assert (image.height, image.width) == tuple(first.shape[1:])
        assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), second)
    assert not torch.equal(first, second)  # the model changed; the images did not
    assert torch.equal(untitled(first, 6, 67)[:, :16, :16], untitled(second, 6, 67)[:, :16, :16])


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


def grid_of_a_fit(tmp_path: Path, datamodule) -> torch.Tensor:
    """The first captured image's original panel (C, S, S) as the callback drew it in a 1-epoch fit."""
    system = LitMAE(config=MAEConfig(**tiny_config_values()), lr=1e-3, warmup_epochs=0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, max_epochs=1, limit_train_batches=1,
                      limit_val_batches=1, num_sanity_val_steps=0, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[ReconstructionGridLogger(every_n_epochs=1, num_images=2)])
    trainer.fit(system, datamodule=datamodule)
    with Image.open(tmp_path / "reconstructions" / "epoch000.png") as image:
        drawn = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return untitled(drawn, 6, 2 * S + 1)[:, :S, :S]


class Scaled(torch.utils.data.Dataset):
    """Images of pixels in [0, 1] normalised as (x - 0.5) / 0.1, unlabelled; the pixels kept."""

    def __init__(self) -> None:
        self.pixels = torch.rand(4, 3, S, S, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> torch.Tensor:
        return (self.pixels[index] - 0.5) / 0.1


def test_without_declared_statistics_each_channel_is_stretched(tmp_path, one_thread):
    from conftest import ImageDataModule

    with pytest.warns(UserWarning, match=r"declares no `mean`/`std`.*stretched"):
        original = grid_of_a_fit(tmp_path, ImageDataModule(dataset=Scaled(), batch_size=2))
    for channel in original:  # (S, S) uint8: the captured images span the whole range
        assert channel.min() <= 10 and channel.max() >= 150


def test_statistics_declared_as_hyper_parameters_are_used(tmp_path, one_thread):
    from conftest import ImageDataModule

    class Declared(ImageDataModule):
        def __init__(self, mean=(0.5, 0.5, 0.5), std=(0.1, 0.1, 0.1)) -> None:
            super().__init__(dataset=Scaled(), batch_size=2)
            self.save_hyperparameters()  # mean/std only as hyper-parameters, no attributes

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*(workers|log_every_n_steps|treespec).*")
        original = grid_of_a_fit(tmp_path, Declared())
    assert (original.int() - to_uint8(Scaled().pixels[0]).int()).abs().max() <= 1  # the true pixels


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
    assert "the training data's" in result.stderr  # the digits' statistics, from the checkpoint
    with Image.open(tmp_path / "g.png") as image:
        assert image.size[0] == 6 * (4 * 16 + 3) and image.mode == "RGB"
        assert image.getpixel((12, image.height - 6 * (2 * 16 + 1) + 12)) == (200, 30, 30)  # a uniform original


def test_visualize_takes_the_statistics_the_weights_record(tmp_path, one_thread):
    from lit_mae.cli.visualize import display_statistics
    from lit_mae.interop import export_hf, export_official
    from lit_mae.datamodules.base import IMAGENET_MEAN, IMAGENET_STD

    data = DigitsDataModule(image_size=16, batch_size=8)
    system = LitMAE(config=MAEConfig(**tiny_config_values()), lr=1e-3, warmup_epochs=0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, max_steps=1, limit_val_batches=0,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    trainer.fit(system, datamodule=data)
    trainer.save_checkpoint(tmp_path / "digits.ckpt")
    recorded = display_statistics(tmp_path / "digits.ckpt", 3)
    assert (recorded.mean, recorded.std) == (data.mean, data.std) and data.mean != IMAGENET_MEAN

    export_official(system.model, tmp_path / "official.pth")  # says nothing about its data
    fallback = display_statistics(tmp_path / "official.pth", 3)
    assert (fallback.mean, fallback.std) == (IMAGENET_MEAN, IMAGENET_STD) and "does not record" in fallback.source
    export_hf(system.model, tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text('{"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3]}')
    assert display_statistics(tmp_path / "hf", 3)[:2] == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    assert display_statistics(tmp_path / "hf", 3, [0.5] * 3, [0.2] * 3)[:2] == ((0.5,) * 3, (0.2,) * 3)
    with pytest.raises(ValueError, match="both --mean and --std"):
        display_statistics(tmp_path / "hf", 3, [0.5] * 3)
    with pytest.raises(ValueError, match="3 channels.*need 3 values"):
        display_statistics(tmp_path / "hf", 3, [0.5], [0.2])
