"""lit_mae.optim as pure functions: parameter groups, lr scaling, warmup-cosine, layer-wise lr decay, LARS."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_mae import MAEConfig, MaskedAutoencoderViT
from lit_mae.models import ViTEncoder
from lit_mae.optim import (
    LARS,
    param_groups_layer_decay,
    param_groups_weight_decay,
    parameter_ndims,
    scaled_lr,
    vit_layer_id,
    warmup_cosine,
    warmup_cosine_scheduler,
)


def _names_by_id(module: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in module.named_parameters()}


def _group_names(module: nn.Module, groups: list[dict]) -> tuple[list[str], list[str]]:
    names = _names_by_id(module)
    decay = next(g for g in groups if g["weight_decay"] > 0)
    no_decay = next(g for g in groups if g["weight_decay"] == 0)
    return [names[id(p)] for p in decay["params"]], [names[id(p)] for p in no_decay["params"]]


def test_groups_split_weights_from_vectors_and_biases(tiny_config):
    model = MaskedAutoencoderViT(tiny_config)
    groups = param_groups_weight_decay(model, 0.05)
    decay, no_decay = _group_names(model, groups)
    params = dict(model.named_parameters())

    assert [g["weight_decay"] for g in groups if g["weight_decay"] > 0] == [0.05]
    assert all(params[n].ndim >= 2 and not n.endswith(".bias") for n in decay)
    assert all(params[n].ndim <= 1 or n.endswith(".bias") for n in no_decay)
    # the official recipe decays the learned tokens (they are 3-D)
    assert "mask_token" in decay and "encoder.cls_token" in decay
    assert any(n.endswith("norm.weight") for n in no_decay)
    assert any(n.endswith(".bias") for n in no_decay)


def test_groups_honour_skip_and_frozen_weights():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[1].weight.requires_grad_(False)
    decay, no_decay = _group_names(model, param_groups_weight_decay(model, 0.05, skip=["0.weight"]))
    assert decay == []
    assert sorted(no_decay) == ["0.bias", "0.weight", "1.bias"]


class _FlatShards(nn.Module):
    """What FSDP (use_orig_params) shows the optimizer: wrapper prefixes in the names, 1-D shards."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.shards = [(f"_fsdp_wrapped_module.{name}".replace("blocks.0.", "blocks.0._fsdp_wrapped_module."),
                        nn.Parameter(p.detach().flatten(), requires_grad=p.requires_grad))
                       for name, p in model.named_parameters()]

    def named_parameters(self, *args, **kwargs):
        yield from self.shards


def _grouping(groups: list[dict], names: dict[int, str]) -> list[tuple[float, float, list[str]]]:
    """(weight decay, lr scale, names) per group, names without wrapper prefixes."""
    bare = lambda name: name.replace("_fsdp_wrapped_module.", "")  # noqa: E731
    return [(g["weight_decay"], g.get("lr_scale", 1.0), [bare(names[id(p)]) for p in g["params"]]) for g in groups]


def test_groups_of_flattened_wrapped_shards_match_the_bare_model(tiny_config):
    model = MaskedAutoencoderViT(tiny_config)
    ndims = parameter_ndims(model)  # taken before "wrapping"
    sharded = _FlatShards(model)
    shard_names = {id(p): name for name, p in sharded.named_parameters()}
    expected = _grouping(param_groups_weight_decay(model, 0.05), _names_by_id(model))
    assert _grouping(param_groups_weight_decay(sharded, 0.05, ndims=ndims), shard_names) == expected
    # without the shapes every flattened weight would lose its weight decay
    assert not param_groups_weight_decay(sharded, 0.05)[0]["params"]

    encoder = ViTEncoder(tiny_config)
    sharded, ndims = _FlatShards(encoder), parameter_ndims(encoder)
    shard_names = {id(p): name for name, p in sharded.named_parameters()}
    expected = _grouping(param_groups_layer_decay(encoder, 0.05, 0.75, tiny_config.depth), _names_by_id(encoder))
    assert _grouping(param_groups_layer_decay(sharded, 0.05, 0.75, tiny_config.depth, ndims=ndims),
                     shard_names) == expected


def test_groups_build_an_adamw_that_steps_every_trainable_weight_once(tiny_config):
    model = MaskedAutoencoderViT(tiny_config)
    groups = param_groups_weight_decay(model, 0.05)
    grouped = [id(p) for group in groups for p in group["params"]]
    trainable = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter in exactly one group
    assert {"encoder.pos_embed", "decoder_pos_embed"} <= frozen  # the fixed sin-cos tables: in no group
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    model(torch.randn(2, 3, 16, 16), generator=torch.Generator().manual_seed(0)).loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():  # trained weights moved; the frozen sin-cos tables did not
        assert torch.equal(p, before[name]) != p.requires_grad, name


@pytest.mark.parametrize("batch, devices, nodes, accum", [(256, 1, 1, 1), (64, 2, 1, 1), (32, 4, 2, 1),
                                                          (16, 1, 1, 4), (8, 2, 2, 2)])
def test_scaled_lr_is_linear_in_the_effective_batch(batch, devices, nodes, accum):
    effective = batch * devices * nodes * accum
    assert scaled_lr(1.5e-4, batch, devices, nodes, accum) == pytest.approx(1.5e-4 * effective / 256)
    # doubling any factor doubles the lr
    assert scaled_lr(1e-3, batch, devices, nodes, 2 * accum) == pytest.approx(
        2 * scaled_lr(1e-3, batch, devices, nodes, accum))


def test_scaled_lr_at_batch_256_is_the_base_lr():
    assert scaled_lr(3e-4, 128, 2, 1, 1) == pytest.approx(3e-4)


TOTAL, WARMUP, PEAK, MIN = 100, 10, 2e-3, 1e-5


def test_warmup_starts_at_zero_and_rises_linearly_to_the_peak():
    lrs = [warmup_cosine(s, TOTAL, WARMUP, PEAK, MIN) for s in range(WARMUP + 1)]
    assert lrs[0] == 0.0
    steps = [b - a for a, b in zip(lrs, lrs[1:])]
    assert steps == pytest.approx([PEAK / WARMUP] * WARMUP)  # equal increments: linear
    assert lrs[WARMUP] == pytest.approx(PEAK)


def test_cosine_falls_monotonically_from_peak_to_minimum():
    lrs = [warmup_cosine(s, TOTAL, WARMUP, PEAK, MIN) for s in range(WARMUP, TOTAL + 1)]
    assert max(lrs) == pytest.approx(PEAK) and lrs[0] == pytest.approx(PEAK)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(MIN)
    assert min(lrs) >= MIN - 1e-12


def test_cosine_midpoint_is_halfway_between_peak_and_minimum():
    middle = WARMUP + (TOTAL - WARMUP) // 2
    assert warmup_cosine(middle, TOTAL, WARMUP, PEAK, MIN) == pytest.approx((PEAK + MIN) / 2)


def test_schedule_stays_at_minimum_after_the_end():
    assert warmup_cosine(TOTAL + 50, TOTAL, WARMUP, PEAK, MIN) == pytest.approx(MIN)


def test_no_warmup_starts_at_the_peak():
    assert warmup_cosine(0, TOTAL, 0, PEAK, MIN) == pytest.approx(PEAK)


def test_schedule_never_leaves_its_range():
    for total, warmup in [(1, 0), (1, 1), (5, 5), (7, 3), (1000, 37)]:
        for step in range(total + 2):
            lr = warmup_cosine(step, total, warmup, PEAK, MIN)
            assert math.isfinite(lr) and 0.0 <= lr <= PEAK + 1e-15, (total, warmup, step, lr)


# --- layer-wise lr decay (the fine-tuning recipe) -----------------------------------------------

class _Classifier(torch.nn.Module):
    """A ViT encoder with a trainable position table, an fc_norm and a head, as fine-tuning has."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        config = MAEConfig(img_size=16, patch_size=4, embed_dim=16, depth=depth, num_heads=2,
                           decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)
        self.encoder = ViTEncoder(config)
        self.encoder.pos_embed.requires_grad_(True)
        self.fc_norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 5)


def test_vit_layer_id_follows_the_official_numbering():
    depth = 3
    model = _Classifier(depth)
    layers = {name: vit_layer_id(name, depth) for name, _ in model.named_parameters()}
    assert layers["encoder.cls_token"] == layers["encoder.pos_embed"] == 0
    assert layers["encoder.patch_embed.proj.weight"] == layers["encoder.patch_embed.proj.bias"] == 0
    for i in range(depth):
        assert layers[f"encoder.blocks.{i}.attn.qkv.weight"] == i + 1
        assert layers[f"encoder.blocks.{i}.mlp.fc2.bias"] == i + 1
    assert layers["encoder.norm.weight"] == layers["fc_norm.weight"] == layers["head.weight"] == depth + 1
    assert vit_layer_id("blocks.2.norm1.weight", depth) == 3  # official names without the prefix


def test_layer_decay_groups_cover_each_parameter_once_with_the_right_decay():
    depth, decay = 3, 0.75
    model = _Classifier(depth)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=decay, depth=depth)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        assert group["lr_scale"] == pytest.approx(decay ** (depth + 1 - group["layer"]), rel=1e-15)
        for param in group["params"]:
            name = names[id(param)]
            exempt = param.ndim == 1 or name in ("encoder.pos_embed", "encoder.cls_token")
            assert group["weight_decay"] == (0.0 if exempt else 0.05), name


@pytest.mark.parametrize("decay", [0.75, 0.65])
def test_layer_decay_scales_the_actual_lr_by_exactly_the_factor_at_every_step(decay):
    depth, peak, total, warmup, min_lr = 4, 1e-3, 20, 5, 1e-6
    model = _Classifier(depth)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=decay, depth=depth)
    optimizer = torch.optim.AdamW(groups, lr=peak)
    schedule = warmup_cosine_scheduler(optimizer, total, warmup, min_lr)
    seen_steps = 0
    for step in range(total):
        by_layer = {g["layer"]: g["lr"] for g in optimizer.param_groups}
        assert sorted(by_layer) == list(range(depth + 2))
        top = warmup_cosine(step, total, warmup, peak, min_lr)
        assert by_layer[depth + 1] == pytest.approx(top, rel=1e-12, abs=0)
        if top > 0:
            seen_steps += 1
            for layer in range(depth + 1):
                assert by_layer[layer] / by_layer[layer + 1] == pytest.approx(decay, rel=1e-12)
        optimizer.step()
        schedule.step()
    assert seen_steps == total - 1  # every step but the first (lr 0 at the start of warmup)


# --- LARS (the linear-probe optimizer): plain momentum SGD on 1-D parameters, trust-ratio-scaled
# updates on the rest ---------------------------------------------------------------------------------

def _step(optimizer_cls, param: torch.Tensor, grads: list[torch.Tensor], **kwargs) -> torch.Tensor:
    param = torch.nn.Parameter(param.clone())
    optimizer = optimizer_cls([param], **kwargs)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    return param.detach()


def test_one_dimensional_parameters_follow_torch_momentum_sgd():
    torch.manual_seed(0)
    start, grads = torch.randn(7), [torch.randn(7) for _ in range(5)]
    ours = _step(LARS, start, grads, lr=0.3, weight_decay=0.5, momentum=0.9)  # no decay on 1-D
    reference = _step(torch.optim.SGD, start, grads, lr=0.3, momentum=0.9)
    assert torch.allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_first_step_of_a_matrix_has_length_lr_times_trust_times_weight_norm(weight_decay):
    torch.manual_seed(0)
    # float64: the step is ~1e-3 of the weights, so float32 rounding would blur its direction
    start, grad = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    lr, trust = 0.5, 0.001
    moved = _step(LARS, start, [grad], lr=lr, weight_decay=weight_decay, trust_coefficient=trust) - start
    assert torch.linalg.vector_norm(moved).item() == pytest.approx(lr * trust * start.norm().item(), rel=1e-9)
    direction = grad + weight_decay * start  # trust scaling applies even at weight decay 0
    assert torch.allclose(moved / moved.norm(), -direction / direction.norm(), atol=1e-9)


def test_matrix_updates_ignore_the_gradient_scale():
    torch.manual_seed(0)
    start, grad = torch.randn(3, 3), torch.randn(3, 3)
    small = _step(LARS, start, [grad], lr=1.0)
    large = _step(LARS, start, [grad * 1000], lr=1.0)
    assert torch.allclose(small, large, atol=1e-6)


def test_zero_weight_matrix_falls_back_to_plain_update():
    grad = torch.ones(2, 2)
    moved = _step(LARS, torch.zeros(2, 2), [grad], lr=0.1)
    assert torch.allclose(moved, -0.1 * grad)


def test_negative_settings_name_the_field():
    with pytest.raises(ValueError, match="momentum.*-0.5"):
        LARS([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=-0.5)
