"""Custom autograd Functions and the smooth surrogate against independent oracles.

Oracles: ``torch.autograd.gradcheck`` / ``gradgradcheck`` (float64 finite differences) and autograd on
the explicit smooth-ReLU primitive written here,

    r(z) = z + sqrt(z^2 + tau)  for z < 0,      sqrt(z^2 + tau)  for z >= 0,

whose first derivative is the smooth ReLU gradient the surrogate must use (ADV², paper 001 §3.2).
``FrozenBatchNorm2d`` and ``smooth_surrogate`` are checked against ``BatchNorm2d.eval()`` and the
original network.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import idls
from idls import system
from idls.models import create_model
from idls.system import FrozenBatchNorm2d, SmoothGradReLU, smooth_surrogate

F64 = torch.float64


def primitive(z: torch.Tensor, tau: float) -> torch.Tensor:
    """The explicit primitive r(z) (the oracle; written independently of idls.system)."""
    root = torch.sqrt(z * z + tau)
    return torch.where(z < 0, z + root, root)


def oracle_derivatives(z: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r'(z) and r''(z) by autograd on the explicit formula."""
    z = z.detach().clone().requires_grad_(True)
    (first,) = torch.autograd.grad(primitive(z, tau).sum(), z, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), z)
    return first.detach(), second


def points_away_from_zero(n: int, seed: int, low: float = 0.02, high: float = 2.0) -> torch.Tensor:
    """Float64 points with |z| in [low, high] of both signs: r' jumps at 0 (1 on the left, 0 on the right),
    so finite differences must not straddle it."""
    g = torch.Generator().manual_seed(seed)
    magnitude = low + (high - low) * torch.rand(n, generator=g, dtype=F64)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(F64)
    return magnitude * sign


SMOOTH_FUNCTION = system._SmoothGradReLUFunction
SLOPE_PRODUCT = system._SlopeProduct


# -- every custom Function is covered ---------------------------------------------------------------
COVERED = {"_SmoothGradReLUFunction", "_SlopeProduct", "_StraightThrough"}


def test_every_custom_autograd_function_in_idls_has_a_gradcheck_here():
    """A new ``torch.autograd.Function`` anywhere in src/idls must get its gradcheck in this file."""
    source = Path(idls.__file__).resolve().parent
    pattern = re.compile(r"^class\s+(\w+)\(\s*(?:torch\.)?(?:autograd\.)?Function\s*\)", re.MULTILINE)
    found = {name for path in source.rglob("*.py") for name in pattern.findall(path.read_text())}
    assert "_SmoothGradReLUFunction" in found  # the scan itself works
    assert found <= COVERED, f"custom autograd Functions without a gradcheck: {sorted(found - COVERED)}"


# -- _SmoothGradReLUFunction ------------------------------------------------------------------------
def with_primitive_values(z: torch.Tensor, tau: float) -> torch.Tensor:
    """Value r(z) from the explicit formula, derivatives (all orders) from the custom Function.

    The custom forward is relu(z), deliberately *not* r(z), so gradcheck on the bare Function
    would compare its smooth backward with relu's step derivative. Adding ``y - y.detach()`` (value 0)
    grafts the custom backward onto the oracle's value: gradcheck then checks the custom first
    derivative against finite differences of r, gradgradcheck the custom second derivative.
    """
    y = SMOOTH_FUNCTION.apply(z, tau)
    return primitive(z, tau).detach() + (y - y.detach())


@pytest.mark.parametrize("tau", [1e-2, 1e-4])
def test_smooth_relu_function_derivatives_are_those_of_the_primitive(tau):
    """First and second derivatives exact (gradcheck / gradgradcheck against finite differences of r).

    Exact only to second order: the curvature r'' is saved as a constant in the forward pass,
    so a third derivative misses r''' (documented in idls.system; nothing takes one).
    """
    z = points_away_from_zero(24, seed=1, low=0.005)
    z.requires_grad_(True)
    assert gradcheck(lambda v: with_primitive_values(v, tau), (z,), eps=1e-7, atol=1e-6, rtol=1e-5)
    grad_out = torch.randn(24, dtype=F64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    assert gradgradcheck(lambda v: with_primitive_values(v, tau), (z,), (grad_out,), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_bare_function_is_relu_forward_with_the_smooth_backward():
    """The forward is exactly relu; the backward is r', not relu's step (the two differ near zero)."""
    tau = 1e-4
    z = torch.linspace(-0.5, 0.5, 101, dtype=F64).requires_grad_(True)
    y = SMOOTH_FUNCTION.apply(z, tau)
    assert torch.equal(y.detach(), torch.relu(z.detach()))
    (first,) = torch.autograd.grad(y.sum(), z, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), z)
    r1, r2 = oracle_derivatives(z, tau)
    torch.testing.assert_close(first.detach(), r1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second, r2, rtol=1e-10, atol=1e-10)
    # closed form of the curvature quoted in the docstring: tau / (z^2 + tau)^(3/2)
    torch.testing.assert_close(second, tau / (z.detach() ** 2 + tau) ** 1.5, rtol=1e-12, atol=0)
    # near zero the smooth slope is far from relu's 0/1 step: the surrogate really changes the derivative
    step = (z.detach() > 0).to(F64)
    assert float((first.detach() - step).abs().max()) > 0.5
    # far from zero it is relu's to within tau / (2 z^2)
    far = z.detach().abs() > 0.3
    assert float((first.detach() - step)[far].abs().max()) < 1e-4 / (2 * 0.3**2) + 1e-12


def test_gradcheck_on_the_bare_function_fails_as_it_must():
    """Guards the test above: relu's own derivative is not r', so a plain gradcheck must reject it."""
    z = points_away_from_zero(12, seed=3, low=0.02, high=0.2).requires_grad_(True)
    assert not gradcheck(lambda v: SMOOTH_FUNCTION.apply(v, 1e-2), (z,), eps=1e-7, atol=1e-6, raise_exception=False)


# -- _SlopeProduct ---------------------------------------------------------------------------------
def slope_product_of(grad: torch.Tensor, z: torch.Tensor, tau: float) -> torch.Tensor:
    """``g * r'(z)`` with slope and curvature from the oracle, as the surrogate's backward builds it."""
    r1, r2 = oracle_derivatives(z, tau)
    return SLOPE_PRODUCT.apply(grad, z, r1, r2)


def test_slope_product_gradcheck_in_grad_and_z():
    """Value g r'(z); d/dg = r'(z), d/dz = g r''(z): checked against finite differences of the oracle value."""
    tau = 1e-2
    z = points_away_from_zero(16, seed=4).requires_grad_(True)
    g = torch.randn(16, dtype=F64, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    # slope and curvature are recomputed by the oracle at every perturbed z, so the finite differences see g r'(z)
    assert gradcheck(lambda grad, zz: slope_product_of(grad, zz, tau), (g, z), eps=1e-7, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(slope_product_of(g, z, tau), g.detach() * oracle_derivatives(z, tau)[0])


def test_slope_product_gradgradcheck_in_grad():
    """Second order in ``grad`` (z fixed) is exact. In ``z`` it is first order only: slope and curvature
    are constants of the backward, so d/dz of its ``outer * slope`` output misses r''' (third order of the
    ReLU surrogate; documented in idls.system, never taken)."""
    tau = 1e-2
    z = points_away_from_zero(16, seed=6)
    g = torch.randn(16, dtype=F64, generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    outer = torch.randn(16, dtype=F64, generator=torch.Generator().manual_seed(8)).requires_grad_(True)
    assert gradgradcheck(lambda grad: slope_product_of(grad, z, tau), (g,), (outer,), eps=1e-7, atol=1e-6)


# -- SmoothGradReLU module, through a network-sized tensor ----------------------------------------
def test_smooth_relu_module_matches_oracle_and_is_plain_relu_without_grad():
    module = SmoothGradReLU()  # default tau 1e-4
    z = torch.randn(2, 4, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(9))
    assert torch.equal(module(z), torch.relu(z)) and module(z).grad_fn is None
    zr = z.clone().requires_grad_(True)
    weights = torch.rand(z.shape, dtype=F64, generator=torch.Generator().manual_seed(10))
    (first,) = torch.autograd.grad((module(zr) * weights).sum(), zr, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), zr)
    r1, r2 = oracle_derivatives(z, module.tau)
    torch.testing.assert_close(first.detach(), weights * r1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(second, weights * r2, rtol=1e-10, atol=1e-12)


# -- FrozenBatchNorm2d ------------------------------------------------------------------------------
def randomised_bn(channels: int, affine: bool, seed: int, eps: float = 1e-5) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, affine=affine, eps=eps)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g) * 2)
        bn.running_var.copy_(0.05 + 3 * torch.rand(channels, generator=g))
        if affine:
            bn.weight.copy_(torch.randn(channels, generator=g))
            bn.bias.copy_(torch.randn(channels, generator=g))
    return bn.eval()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_frozen_batchnorm_equals_eval_batchnorm(affine, dtype, tol):
    bn = randomised_bn(6, affine, seed=11, eps=1e-3).to(dtype)
    frozen = FrozenBatchNorm2d(bn)
    x = (torch.randn(4, 6, 5, 7, generator=torch.Generator().manual_seed(12)) * 3 + 1).to(dtype)
    expected = bn(x)
    # the oracle itself, written out: (x - mean) / sqrt(var + eps) * weight + bias
    by_hand = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    if affine:
        by_hand = by_hand * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(expected, by_hand.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(frozen(x), expected.detach(), rtol=tol, atol=tol)
    # the same input gradient (the per-channel scale), and frozen: training the bn later changes nothing
    xr = x.clone().requires_grad_(True)
    (g_frozen,) = torch.autograd.grad(frozen(xr).sum(), xr)
    (g_bn,) = torch.autograd.grad(bn(xr).sum(), xr)
    torch.testing.assert_close(g_frozen, g_bn, rtol=tol, atol=tol)
    before = frozen(x).clone()
    bn.train()(x)  # updates bn's running statistics
    assert torch.equal(frozen(x), before)


def random_cifar_resnet20(seed: int) -> system.Classifier:
    """A seeded random cifar_resnet20 whose BatchNorm layers have non-trivial statistics and affine parameters."""
    torch.manual_seed(seed)
    model = create_model("cifar_resnet20")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


def test_smooth_surrogate_logits_equal_the_models():
    model = random_cifar_resnet20(seed=13)
    original = copy.deepcopy(model.state_dict())
    surrogate = smooth_surrogate(model)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        logits = model(x)
    assert float(logits.std()) > 1e-2  # not a degenerate network
    torch.testing.assert_close(surrogate(x), logits, rtol=1e-4, atol=1e-5)
    with torch.enable_grad():  # the smooth branch (inputs that require grad) computes the same values
        torch.testing.assert_close(surrogate(x.clone().requires_grad_(True)).detach(), logits, rtol=1e-4, atol=1e-5)
    # the surrogate really is another network: no ReLU, no BatchNorm left; the original is untouched
    kinds = {type(m) for m in surrogate.modules()}
    assert nn.ReLU not in kinds and nn.BatchNorm2d not in kinds
    assert SmoothGradReLU in kinds and FrozenBatchNorm2d in kinds
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert not {p.data_ptr() for p in surrogate.parameters()} & {p.data_ptr() for p in model.parameters()}
    # float64: equal to rounding
    model64, x64 = copy.deepcopy(model).double(), x.double()
    torch.testing.assert_close(smooth_surrogate(model64)(x64), model64(x64), rtol=1e-12, atol=1e-12)


# -- _StraightThrough (BPDA of idls.defenses) -------------------------------------------------------
def test_straight_through_is_the_identity_in_every_derivative():
    """BPDA: forward fn(x), backward the identity. With fn the identity, gradcheck / gradgradcheck compare
    that backward with finite differences of the identity (first derivative 1, second 0)."""
    from idls.transforms.input_transforms import _StraightThrough

    x = torch.rand(2, 3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    identity = lambda t: t.clone()  # noqa: E731
    assert gradcheck(lambda t: _StraightThrough.apply(t, identity), (x,))
    assert gradgradcheck(lambda t: _StraightThrough.apply(t, identity), (x,))
    # with a non-differentiable fn the forward is fn, the backward still the identity
    rounded = _StraightThrough.apply(x, lambda t: (t * 3).round() / 3)
    assert torch.equal(rounded, (x.detach() * 3).round() / 3)
    (grad,) = torch.autograd.grad((rounded * x.detach()).sum(), x)
    assert torch.equal(grad, x.detach())
