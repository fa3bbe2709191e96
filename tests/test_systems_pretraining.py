"""LitMAE (lit_mae/systems/pretraining.py): construction, starting from pretrained weights, the lr it
trains with, reproducible masks, checkpoints and embedding in a user's code.

Exact resume is tested in test_resume.py, NaN/inf losses in test_nonfinite.py."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from conftest import ImageDataModule, assert_same_state, perturbed, state_copy, tiny_config_values
from lit_mae import LitMAE, MAEConfig
from lit_mae.datamodules import DigitsDataModule
from lit_mae.interop import export_official, export_timm
from lit_mae.models import MaskedAutoencoderViT
from lit_mae.optim import warmup_cosine
from lit_mae.systems.base import step_generator


class StepRecorder(Callback):
    """The lr of each optimizer step (as the optimizer sees it) and each batch's training loss."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


# --- construction ----------------------------------------------------------------------------

def test_builds_from_a_config(tiny_config):
    system = LitMAE(config=tiny_config)
    assert system.config == tiny_config
    assert system.model.config == tiny_config


def test_builds_from_a_config_mapping(tiny_config):
    assert LitMAE(config=tiny_config.to_dict()).config == tiny_config


def test_builds_from_a_preset_with_overrides():
    system = LitMAE(preset="tiny", overrides={"img_size": 32, "patch_size": 4, "depth": 1})
    assert (system.config.img_size, system.config.patch_size, system.config.depth) == (32, 4, 1)
    assert system.config.embed_dim == LitMAE(preset="tiny").config.embed_dim  # the rest is the preset's


def test_mask_ratio_argument_replaces_the_configs(tiny_config):
    assert LitMAE(config=tiny_config, mask_ratio=0.5).config.mask_ratio == 0.5


@pytest.mark.parametrize("kwargs", [dict(), dict(preset="tiny", config=MAEConfig(**tiny_config_values()))])
def test_needs_exactly_one_of_config_or_preset(kwargs):
    with pytest.raises(ValueError, match="exactly one"):
        LitMAE(**kwargs)


def test_overrides_without_a_preset_are_refused(tiny_config):
    with pytest.raises(ValueError, match="overrides"):
        LitMAE(config=tiny_config, overrides={"depth": 2})


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="embed_dimm") as info:
        LitMAE(preset="tiny", overrides={"embed_dimm": 64})
    assert "embed_dim" in str(info.value).replace("embed_dimm", "")  # and the valid names are listed


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="gigantic"):
        LitMAE(preset="gigantic")


# --- starting from pretrained weights (any format lit_mae.interop reads) ----------------------

def test_lit_mae_starts_from_pretrained_weights_and_its_checkpoint_stands_alone(tmp_path, make_trainer):
    model = perturbed(MaskedAutoencoderViT(MAEConfig(**tiny_config_values())))
    export_official(model, tmp_path / "release.pth")
    system = LitMAE(pretrained=str(tmp_path / "release.pth"), overrides={"norm_pix_loss": True}, lr=1e-3)
    assert_same_state(system.model, model)
    assert system.config.norm_pix_loss and system.config.embed_dim == model.config.embed_dim
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "run", save_last=True)
    make_trainer(max_steps=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        system, ImageDataModule(n=8, size=model.config.img_size, batch_size=4))
    (tmp_path / "release.pth").unlink()
    reloaded = LitMAE.load_from_checkpoint(tmp_path / "run" / "last.ckpt")
    assert_same_state(reloaded.model, system.model)
    assert reloaded.config == system.config


def test_lit_mae_from_an_encoder_only_file_initialises_the_decoder_and_says_so(tmp_path):
    model = perturbed(MaskedAutoencoderViT(MAEConfig(**tiny_config_values())))
    torch.save(export_timm(model), tmp_path / "timm.pth")
    with pytest.warns(UserWarning, match="decoder"):
        system = LitMAE(pretrained=str(tmp_path / "timm.pth"), overrides={"num_heads": model.config.num_heads})
    assert_same_state(system.model.encoder, model.encoder)
    with pytest.raises(ValueError, match="pretrained.*architecture"):
        LitMAE(pretrained=str(tmp_path / "timm.pth"), preset="tiny")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        LitMAE(pretrained=str(tmp_path / "absent.pth"))


# --- the learning rate -----------------------------------------------------------------------

@pytest.mark.parametrize("accumulate", [1, 2])
def test_peak_lr_is_scaled_by_the_effective_batch(tiny_config, make_trainer, accumulate):
    batch, base_lr = 4, 1e-3
    system = LitMAE(config=tiny_config, base_lr=base_lr, warmup_epochs=1, min_lr=0.0)
    recorder = StepRecorder()
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=accumulate, callbacks=[recorder])
    trainer.fit(system, ImageDataModule(n=32, batch_size=batch))

    peak = base_lr * batch * accumulate / 256
    steps_per_epoch = 32 // batch // accumulate
    assert len(recorder.lrs) == 2 * steps_per_epoch
    assert recorder.lrs[0] == 0.0  # warmup starts from nothing
    assert max(recorder.lrs) == pytest.approx(peak, rel=1e-6)
    assert recorder.lrs[steps_per_epoch] == pytest.approx(peak, rel=1e-6)  # end of the 1-epoch warmup


def test_lr_argument_replaces_the_scaled_lr(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, base_lr=1.0, lr=3e-4, warmup_epochs=1)
    recorder = StepRecorder()
    make_trainer(max_epochs=2, callbacks=[recorder]).fit(system, ImageDataModule(n=16, batch_size=4))
    assert max(recorder.lrs) == pytest.approx(3e-4, rel=1e-6)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lr_follows_warmup_cosine_per_optimizer_step(tiny_config, make_trainer, accumulate):
    lr, min_lr, warmup_epochs = 2e-3, 1e-4, 1.5
    system = LitMAE(config=tiny_config, lr=lr, min_lr=min_lr, warmup_epochs=warmup_epochs)
    recorder = StepRecorder()
    trainer = make_trainer(max_epochs=3, accumulate_grad_batches=accumulate, callbacks=[recorder])
    trainer.fit(system, ImageDataModule(n=32, batch_size=4))

    per_epoch = 8 // accumulate
    total, warmup = 3 * per_epoch, round(warmup_epochs * per_epoch)
    expected = [warmup_cosine(step, total, warmup, lr, min_lr) for step in range(total)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert trainer.global_step == total


def test_max_steps_sets_the_schedule_length(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, lr=1e-3, warmup_epochs=0)
    recorder = StepRecorder()
    make_trainer(max_steps=5, callbacks=[recorder]).fit(system, ImageDataModule(n=64, batch_size=4))
    assert recorder.lrs == pytest.approx([warmup_cosine(s, 5, 0, 1e-3) for s in range(5)])


# Trainer(max_steps=N) without max_epochs sets max_epochs=-1, and then
# `trainer.estimated_stepping_batches` returns max_steps without loading the train dataloader:
# the batch size and the epoch length must still be found.
def test_scaled_lr_with_only_max_steps(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, base_lr=1e-3, warmup_epochs=0)
    recorder = StepRecorder()
    make_trainer(max_steps=4, callbacks=[recorder]).fit(system, ImageDataModule(n=16, batch_size=4))
    assert recorder.lrs[0] == pytest.approx(1e-3 * 4 / 256)


def test_warmup_epochs_count_real_epochs_with_only_max_steps(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, lr=1.0, warmup_epochs=1)
    recorder = StepRecorder()
    make_trainer(max_steps=12, callbacks=[recorder]).fit(system, ImageDataModule(n=16, batch_size=4))
    # 4 batches an epoch: 4 warmup steps, then cosine over the other 8
    assert recorder.lrs == pytest.approx([warmup_cosine(s, 12, 4, 1.0) for s in range(12)])


def test_weight_decay_skips_vectors_in_the_optimizer(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, weight_decay=0.123)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(system, ImageDataModule(n=8, batch_size=4))
    groups = trainer.optimizers[0].param_groups
    decays = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decays[id(system.model.mask_token)] == 0.123
    assert decays[id(system.model.decoder_norm.weight)] == 0.0
    assert id(system.model.decoder_pos_embed) not in decays
    assert trainer.optimizers[0].defaults["betas"] == (0.9, 0.95)


# --- masks and reproducibility ---------------------------------------------------------------

def test_step_generator_is_deterministic_and_distinct_per_step_rank_and_stream():
    def draw(*args) -> torch.Tensor:
        return torch.rand(8, generator=step_generator(*args))

    assert torch.equal(draw(0, 5, 0), draw(0, 5, 0))
    others = [draw(1, 5, 0), draw(0, 6, 0), draw(0, 5, 1), draw(0, 5, 0, "val")]
    for other in others:
        assert not torch.equal(draw(0, 5, 0), other)
    assert torch.equal(draw(0, 5, 0, "train"), draw(0, 5, 0))  # "train" is the default stream


def _fit_steps(system, make_trainer, steps: int = 3, global_seed: int = 0, **kwargs):
    torch.manual_seed(global_seed)
    make_trainer(max_steps=steps, **kwargs).fit(system, ImageDataModule(n=16, batch_size=4))
    return state_copy(system)


def test_same_seed_gives_bitwise_identical_weights(tiny_config, make_trainer):
    states = []
    for _ in range(2):
        seed_everything(7)
        states.append(_fit_steps(LitMAE(config=tiny_config, lr=1e-3, warmup_epochs=0), make_trainer))
    assert_same_state(*states)
    assert not torch.equal(states[0]["model.decoder_pred.weight"],
                           LitMAE(config=tiny_config).state_dict()["model.decoder_pred.weight"])


def test_masks_come_from_mask_seed_not_the_global_generator(tiny_config, make_trainer):
    start = LitMAE(config=tiny_config, lr=1e-3, warmup_epochs=0)
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    c = LitMAE(config=tiny_config, lr=1e-3, warmup_epochs=0, mask_seed=1)
    c.load_state_dict(start.state_dict())
    # different global seeds, same mask_seed: the same masks, so the same weights
    assert_same_state(_fit_steps(a, make_trainer, global_seed=1), _fit_steps(b, make_trainer, global_seed=2))
    # another mask_seed: other masks, other weights
    assert not torch.equal(_fit_steps(c, make_trainer)["model.decoder_pred.weight"],
                           a.state_dict()["model.decoder_pred.weight"])


# --- checkpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["config", "preset"])
def test_checkpoint_reloads_with_safe_loading(tiny_config, make_trainer, tmp_path, how):
    if how == "config":
        system = LitMAE(config=tiny_config, base_lr=2e-4, mask_seed=3)
    else:
        system = LitMAE(preset="tiny", overrides=tiny_config.to_dict(), base_lr=2e-4, mask_seed=3)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[saver])
    trainer.fit(system, ImageDataModule(n=8, batch_size=4))  # 2 steps
    path = tmp_path / "ckpt" / "last.ckpt"
    assert path.is_file()

    raw = torch.load(path, weights_only=True)  # plain data only: no pickled classes
    assert raw["global_step"] == 2
    loaded = LitMAE.load_from_checkpoint(path)  # Lightning's default (safe) loading
    assert loaded.config == system.config == tiny_config
    assert (loaded.base_lr, loaded.mask_seed) == (2e-4, 3)
    assert_same_state(loaded, system)
    assert not torch.equal(loaded.model.decoder_pred.weight, LitMAE(config=tiny_config).model.decoder_pred.weight)


# --- embedding lit-mae in a user's own code ---------------------------------------------------

class MyMAE(LitMAE):
    """A user subclass that adds its own bookkeeping."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.seen_losses.append(loss.item())
        return loss


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
def test_subclass_trains_on_a_users_datamodule(tiny_config, make_trainer, kind):
    system = MyMAE(config=tiny_config, lr=1e-3, warmup_epochs=0)
    trainer = make_trainer(max_steps=2, limit_val_batches=1)
    data = ImageDataModule(n=8, batch_size=4, kind=kind)
    trainer.fit(system, data)
    assert trainer.global_step == 2
    assert len(system.seen_losses) == 2 and all(torch.isfinite(torch.tensor(system.seen_losses)))
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    embeddings = trainer.predict(system, DataLoader(data.dataset, batch_size=4))
    assert embeddings[0]["embedding"].shape == (4, tiny_config.embed_dim)
    encoder = system.model.encoder.eval()
    with torch.no_grad():  # the cls token of the whole (unmasked) image, as EmbeddingWriter writes it
        expected = encoder.pool(encoder.forward_features(data.dataset.images[:4]), "cls")
    torch.testing.assert_close(embeddings[0]["embedding"], expected)


class OwnSystem(LightningModule):
    """A user's module that only borrows the network of a LitMAE."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.mae = LitMAE(config=config).model
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = self.mae(batch["images"]).loss
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_users_module_trains_the_borrowed_network(tiny_config, make_trainer):
    system = OwnSystem(tiny_config)
    before = state_copy(system.mae)
    make_trainer(max_steps=2).fit(system, ImageDataModule(n=8, batch_size=4, kind="dict"))
    assert len(system.losses) == 2 and all(map(torch.isfinite, torch.tensor(system.losses)))
    assert not torch.equal(before["decoder_pred.weight"], system.mae.state_dict()["decoder_pred.weight"])


def test_unsupported_batch_type_names_what_is_accepted(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, lr=1e-3)
    words = DataLoader(["a", "b", "c", "d"], batch_size=2)  # batches are lists of strings
    with pytest.raises(TypeError) as info:
        make_trainer(max_steps=1).fit(system, train_dataloaders=words)
    message = str(info.value)
    for accepted in ("tensor", "sequence", "dict", "images"):
        assert accepted in message
    with pytest.raises(TypeError, match="str"):
        system.training_step("not a batch", 0)


# --- learning ---------------------------------------------------------------------------------

def test_loss_decreases_on_digits(make_trainer):
    seed_everything(0)
    config = MAEConfig(**tiny_config_values(in_chans=1, embed_dim=64, num_heads=4, decoder_embed_dim=32))
    system = LitMAE(config=config, lr=3e-3, warmup_epochs=0, weight_decay=0.0)
    data = DigitsDataModule(image_size=16, channels=1, batch_size=64)
    recorder = StepRecorder()
    make_trainer(max_steps=60, callbacks=[recorder]).fit(system, data)

    assert len(recorder.losses) == 60
    first, last = sum(recorder.losses[:5]) / 5, sum(recorder.losses[-5:]) / 5
    assert last < 0.8 * first, recorder.losses
    # better than predicting zero (the mean of the normalised pixels) for the removed patches
    images = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0).images  # normalised
    out = system.model(images, generator=torch.Generator().manual_seed(0))
    zero = system.model.forward_loss(images, torch.zeros_like(out.pred), out.mask).item()
    assert last < 0.8 * zero, (last, zero)


def test_endless_training_has_no_schedule_length(tiny_config, make_trainer):
    system = LitMAE(config=tiny_config, lr=1e-3)
    with pytest.raises(ValueError, match="max_epochs or trainer.max_steps"):
        make_trainer(max_epochs=-1, max_steps=-1).fit(system, ImageDataModule(n=16, batch_size=4))


def test_each_batch_of_an_accumulation_window_gets_its_own_masks_and_drop_path(tiny_config, make_trainer):
    """The global step stays the same across an accumulation window: seeded by it alone, every
    micro-batch of the window drew the same mask pattern (and the same drop-path draws)."""
    system = LitMAE(config=tiny_config.replace(drop_path_rate=0.5), lr=1e-3, warmup_epochs=0)
    noises, forward = [], system._steps

    def recording(images, noise):
        noises.append(noise.clone())
        return forward(images, noise=noise)

    system._steps = recording
    make_trainer(max_steps=2, accumulate_grad_batches=2).fit(system, ImageDataModule(n=16, batch_size=4))
    assert len(noises) == 4  # 2 optimizer steps x 2 micro-batches
    orders = [noise.argsort(dim=1) for noise in noises]
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[2], orders[3])
    # the first batch of a window draws what a run without accumulation draws at that step
    assert torch.equal(noises[0], torch.rand(4, 16, generator=step_generator(0, 0, 0, "train")))
