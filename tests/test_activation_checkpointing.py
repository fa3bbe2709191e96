"""Activation checkpointing (`MaskedAutoencoderViT.activation_checkpointing`, `LitMAE(activation_checkpointing=True)`
and FSDP's `activation_checkpointing_policy` on `Block`): the same losses and gradients, blocks
really recomputed in backward, fewer tensors kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

from conftest import ImageDataModule, tiny_config_values
from lit_mae import LitMAE
from lit_mae.models import MAEConfig, MaskedAutoencoderViT
from lit_mae.models.layers import Block


def twin_models(**overrides) -> tuple[MaskedAutoencoderViT, MaskedAutoencoderViT]:
    """Two models with equal weights, the second checkpointing its blocks; in training mode."""
    torch.manual_seed(0)
    config = MAEConfig(**tiny_config_values(depth=2, decoder_depth=2, norm_pix_loss=True, **overrides))
    plain = MaskedAutoencoderViT(config).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing = True
    return plain, checkpointed


def loss_and_grads(model: MaskedAutoencoderViT, images: torch.Tensor, noise: torch.Tensor, seed: int = 0
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)  # drop path draws from the global generator
    model.zero_grad(set_to_none=True)
    loss = model(images, noise=noise).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def assert_same_step(plain: torch.nn.Module, other: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    images, noise = torch.randn(4, 3, 16, 16, generator=generator), torch.rand(4, 16, generator=generator)
    want_loss, want = loss_and_grads(plain, images, noise)
    got_loss, got = loss_and_grads(other, images, noise)
    assert abs(got_loss.item() - want_loss.item()) <= 1e-6
    assert want.keys() == {name.replace("._checkpoint_wrapped_module", "") for name in got}
    for name, grad in got.items():
        reference = want[name.replace("._checkpoint_wrapped_module", "")]
        assert grad is not None and reference is not None, name
        torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("drop_path_rate", [0.0, 0.3])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(drop_path_rate):
    # with drop path the recomputation must replay the same random draws
    assert_same_step(*twin_models(drop_path_rate=drop_path_rate))


def test_the_blocks_are_recomputed_in_backward(monkeypatch):
    calls = []
    forward = Block.forward
    monkeypatch.setattr(Block, "forward", lambda self, *args: calls.append(self) or forward(self, *args))
    for model in twin_models():  # (forward hooks do not fire when checkpoint recomputes)
        calls.clear()
        model(torch.randn(2, 3, 16, 16), noise=torch.rand(2, 16)).loss.backward()
        recomputed = len(calls) - 4  # 2 encoder + 2 decoder blocks ran forward once
        assert recomputed == (4 if model.activation_checkpointing else 0)


def test_checkpointing_keeps_fewer_tensors_for_backward():
    """The bytes autograd saves for backward (the activations a step holds), counted with torch's
    saved-tensor hooks: checkpointed blocks keep only their inputs."""
    saved = {}
    for model, name in zip(twin_models(), ("plain", "checkpointed")):
        total = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(torch.randn(8, 3, 16, 16), noise=torch.rand(8, 16)).loss.backward()
        saved[name] = total
    assert saved["checkpointed"] < 0.6 * saved["plain"], saved


def test_no_checkpointing_without_gradients():
    _, checkpointed = twin_models()
    with torch.no_grad():  # eval, probes, kNN: nothing to recompute, no checkpoint machinery
        out = checkpointed(torch.randn(2, 3, 16, 16), noise=torch.rand(2, 16))
    assert torch.isfinite(out.loss)


def test_fsdp_policy_wrapper_on_block_gives_the_same_step():
    """What Lightning's FSDPStrategy(activation_checkpointing_policy={Block}) does to the model:
    torch's checkpoint wrapper around every `Block`; the model's calls go through it unchanged."""
    plain, wrapped = twin_models(drop_path_rate=0.2)
    wrapped.activation_checkpointing = False
    apply_activation_checkpointing(wrapped, check_fn=lambda module: isinstance(module, Block))
    assert sum(type(m).__name__ == "CheckpointWrapper" for m in wrapped.modules()) == 4
    assert_same_step(plain, wrapped)


def test_lit_mae_activation_checkpointing_trains_as_without(make_trainer, tmp_path):
    losses = {}
    for enabled in (False, True):
        torch.manual_seed(0)
        system = LitMAE(config=MAEConfig(**tiny_config_values(depth=2)), lr=1e-3, warmup_epochs=0,
                        activation_checkpointing=enabled)
        assert system.model.activation_checkpointing is enabled
        assert system.hparams.activation_checkpointing is enabled  # saved, so a resumed run keeps it
        seen: list[float] = []
        system.on_train_batch_end = lambda outputs, batch, batch_idx: seen.append(outputs["loss"].item())
        make_trainer(max_steps=3).fit(system, ImageDataModule(n=12, size=16, batch_size=4))
        losses[enabled] = seen
    assert len(losses[True]) == 3
    for plain, checkpointed in zip(losses[False], losses[True]):
        assert abs(plain - checkpointed) <= 1e-6  # three AdamW steps later: still the same run
