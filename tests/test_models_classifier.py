"""ViTClassifier (lit_mae/models/classifier.py) against timm's VisionTransformer (the model MAE's
released fine-tuned weights use). The Lightning systems around it: test_systems_classification.py."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from conftest import perturbed
from lit_mae.models import MAEConfig, ViTClassifier

CONFIG = MAEConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=3.0,
                   decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def timm_names(state_dict: dict, pool: str) -> dict:
    """lit-mae classifier keys -> timm VisionTransformer keys (the "avg" model has no final norm)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("encoder.norm.") and pool == "avg":
            continue
        out[key.removeprefix("encoder.")] = value
    return out


@pytest.mark.parametrize("pool, timm_pool", [("cls", "token"), ("avg", "avg")])
def test_logits_match_timm_vision_transformer(pool, timm_pool):
    torch.manual_seed(0)
    ours = perturbed(ViTClassifier(CONFIG, num_classes=5, pool=pool)).eval()
    reference = VisionTransformer(img_size=32, patch_size=8, in_chans=3, num_classes=5, global_pool=timm_pool,
                                  embed_dim=32, depth=2, num_heads=4, mlp_ratio=3.0, qkv_bias=True).eval()
    reference.load_state_dict(timm_names(ours.state_dict(), pool), strict=True)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (ours(images) - reference(images)).abs().max().item() <= 1e-5
        tokens = ours.forward_features(images)  # the same vocabulary as timm: tokens, then the head
        assert (tokens - reference.forward_features(images)).abs().max().item() <= 1e-5
        pooled = reference.forward_head(reference.forward_features(images), pre_logits=True)
        assert (ours.forward_head(tokens, pre_logits=True) - pooled).abs().max().item() <= 1e-5


def test_avg_pool_skips_the_final_norm_and_cls_pool_uses_it():
    avg = perturbed(ViTClassifier(CONFIG, num_classes=3, pool="avg")).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = avg(images)
        avg.encoder.norm.weight.mul_(3.0)
        assert torch.equal(avg(images), before)
    cls = perturbed(ViTClassifier(CONFIG, num_classes=3, pool="cls")).eval()
    with torch.no_grad():
        before = cls(images)
        cls.encoder.norm.weight.mul_(3.0)
        assert not torch.allclose(cls(images), before)


def test_probe_head_batchnorm_has_no_affine_and_standardises_with_running_stats():
    model = ViTClassifier(CONFIG, num_classes=4, head_batchnorm=True).eval()
    bn = model.head_norm
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        features = torch.randn(5, 32)
        expected = model.head((features - bn.running_mean) / torch.sqrt(bn.running_var + 1e-6))
        assert torch.allclose(model.classify(features), expected, atol=1e-6)


@pytest.mark.parametrize("std", [0.01, 2e-5])
def test_head_init(std):
    model = ViTClassifier(MAEConfig(img_size=32, patch_size=8, embed_dim=256, depth=1, num_heads=4,
                                    decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2),
                          num_classes=1000, head_init_std=std)
    weight = model.head.weight
    assert weight.std().item() == pytest.approx(std, rel=0.05)
    # the official code's trunc_normal_(std=...) cuts at +-2 absolute, i.e. effectively a normal
    assert abs(weight.mean().item()) < 0.05 * std
    assert not model.head.bias.any()


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'max'"):
        ViTClassifier(CONFIG, num_classes=3, pool="max")
    with pytest.raises(ValueError, match="num_classes.*0"):
        ViTClassifier(CONFIG, num_classes=0)
