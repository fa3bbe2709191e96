"""`LitMAE(compile=True)`: one graph (no breaks), the same masks and losses as the eager path."""

from __future__ import annotations

import torch

from conftest import ImageDataModule, tiny_config_values
from lit_mae import LitMAE
from lit_mae.models import MAEConfig, MaskedAutoencoderViT


def test_the_model_compiles_into_one_graph_with_the_eager_numbers():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(MAEConfig(**tiny_config_values(), norm_pix_loss=True))
    images, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break would raise
    want, got = model(images, noise=noise), compiled(images, noise=noise)
    assert torch.equal(got.mask, want.mask)
    assert (got.loss - want.loss).abs().item() <= 1e-5
    assert (got.pred - want.pred).abs().max().item() <= 1e-5


def test_compiled_training_matches_eager_training(make_trainer):
    losses = {}
    for compile in (False, True):
        torch.manual_seed(0)
        system = LitMAE(config=MAEConfig(**tiny_config_values()), lr=1e-3, warmup_epochs=0, compile=compile)
        seen = []
        system.on_train_batch_end = lambda outputs, batch, batch_idx: seen.append(outputs["loss"].item())
        make_trainer(max_steps=3).fit(system, ImageDataModule(n=12, size=16, batch_size=4))
        losses[compile] = seen
        assert not any(".orig_mod" in name or "_steps" in name for name in system.state_dict())
    assert len(losses[True]) == 3
    for eager, compiled in zip(losses[False], losses[True]):
        assert abs(eager - compiled) <= 1e-5
