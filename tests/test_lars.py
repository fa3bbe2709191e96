"""LARS: plain momentum SGD on 1-D parameters, trust-ratio-scaled updates on the rest."""

from __future__ import annotations

import pytest
import torch

from lit_mae.optim import LARS


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
