"""The model card `export_hf` writes (lit_mae/interop/model_card.py): the recipe, data and probe numbers
of a real lit-mae checkpoint through `lit-mae convert --to hf`, and loading instructions that work
(transformers' ViTMAEModel with mask_ratio=0.0 and lit-mae give the same cls features)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything

from conftest import tiny_config_values, tiny_lit_mae
from lit_mae import MAEConfig, MaskedAutoencoderViT
from lit_mae.callbacks import OnlineLinearProbe
from lit_mae.cli import convert as convert_cli
from lit_mae.datamodules import DigitsDataModule
from lit_mae.interop import export_hf
from lit_mae.interop.features import load_feature_extractor


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory) -> Path:
    """A LitMAE fitted 2 epochs of 2 batches on the digits with the online probe: a real checkpoint."""
    from lightning.pytorch import Trainer

    seed_everything(0)
    where = tmp_path_factory.mktemp("fit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, max_epochs=2,
                          limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                          callbacks=[OnlineLinearProbe()], default_root_dir=where)
        trainer.fit(tiny_lit_mae(lr=None, base_lr=2e-3, warmup_epochs=1, mask_ratio=0.5),
                    datamodule=DigitsDataModule(image_size=16, batch_size=16))
        trainer.save_checkpoint(where / "last.ckpt")
    finally:
        torch.set_num_threads(threads)
    return where / "last.ckpt"


def test_convert_to_hf_writes_the_recipe_data_and_probe_numbers(trained_ckpt, tmp_path):
    convert_cli.main([str(trained_ckpt), str(tmp_path / "hub"), "--to", "hf"])
    card = (tmp_path / "hub" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")  # Hub metadata first
    assert "| encoder | width 32, 1 blocks, 2 heads" in card
    assert "| epochs | 2 (4 optimizer steps) |" in card
    assert "| batch | 16 per device |" in card
    assert "base 0.002 per 256 images; peak 0.000125 = base x effective batch 16 / 256" in card
    assert "| mask ratio | 0.5 |" in card and "| norm-pix loss | off |" in card
    assert "The DataModule's settings: image_size=16, channels=3, batch_size=16" in card
    assert "| `online_probe/val_acc` |" in card  # logged by the probe, carried by the checkpoint
    assert "normalised with mean" in card


def test_weights_without_a_training_record_say_so(tmp_path):
    model = MaskedAutoencoderViT(MAEConfig(**tiny_config_values(norm_pix_loss=True)))
    card = (export_hf(model, tmp_path) / "README.md").read_text()
    assert "Not recorded: these weights came without a lit-mae training checkpoint" in card
    assert "norm-pix loss on" in card and "## Evaluation" not in card and "## Data\n\nNot recorded" in card


@pytest.mark.parametrize("encoder_only", [False, True])
def test_the_cards_loading_code_gives_the_same_features(tmp_path, encoder_only):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(MAEConfig(**tiny_config_values())).eval()
    directory = export_hf(model, tmp_path, encoder_only=encoder_only)
    card = (directory / "README.md").read_text()
    assert ("`ViTMAEModel` directory" in card) == encoder_only
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    # the card's two snippets, run
    hf = transformers.ViTMAEModel.from_pretrained(directory, mask_ratio=0.0).eval()
    with torch.no_grad():
        hf_features = hf(pixel_values=images).last_hidden_state[:, 0]
        tokens, features = load_feature_extractor(directory, pool="cls")(images)
        expected = model.encoder.pool(model.encoder.forward_features(images), "cls")
    assert 'ViTMAEModel.from_pretrained("path/to/this/directory", mask_ratio=0.0)' in card
    assert 'load_feature_extractor("path/to/this/directory", pool="cls")' in card
    assert tokens.shape == (3, 17, 32)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(hf_features, expected, rtol=0, atol=1e-5)
