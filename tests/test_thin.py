"""Narrow products x·Wᵀ with W (r, k) run as (W·xᵀ)ᵀ for the ranks where CPU BLAS is faster that way
(forms._thin): the same numbers and gradients as F.linear, a column-major result, and the same model
outputs and Δh gradients as with the plain orientation, for every Δh that takes the path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import peftspace as ps
import peftspace.forms as forms
from tests.helpers import FAMILIES, batch, perturb, tiny


def test_the_rule_names_the_measured_ranks():
    x = torch.zeros(4, 8)
    measured = [5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26, 27, 29, 30, 31]
    assert [r for r in range(1, 65) if forms._thin_transposed(r, x)] == (measured if forms._MKL else [])
    assert not forms._thin_transposed(8, torch.zeros(4, 8, device="meta"))  # other devices: their BLAS decides


@pytest.mark.parametrize("r", [4, 5, 8, 15, 16, 30])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("turned", [False, True])
def test_thin_equals_linear_with_its_gradients(r, bias, turned, monkeypatch):
    monkeypatch.setattr(forms, "_thin_transposed", lambda r, x: turned)  # both orientations, on any BLAS
    g = torch.Generator().manual_seed(r)
    x = torch.randn(3, 11, 40, generator=g, requires_grad=True)
    w = torch.randn(r, 40, generator=g, requires_grad=True)
    b = torch.randn(r, generator=g, requires_grad=True) if bias else None
    up = torch.randn(r, 24, generator=g)  # a following up-projection, as in an adapter or LoRA
    out = forms._thin(x, w, b)
    ref = F.linear(x, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.shape == ref.shape
    assert (out.stride(-1) != 1) == turned  # transposed: column-major (N, r)
    seed = torch.randn(3, 11, 24, generator=g)
    grads = torch.autograd.grad((torch.relu(out) @ up * seed).sum(), [t for t in (x, w, b) if t is not None])
    grads_ref = torch.autograd.grad((torch.relu(ref) @ up * seed).sum(), [t for t in (x, w, b) if t is not None])
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs).logits
    out.float().square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["adapter:r=15", "lora:r=15", "lora_ffn:r=6", "pa:r=10"])
def test_models_train_the_same_with_either_orientation(family, method, monkeypatch):
    model = tiny(family)
    ps.attach(model, ps.plan(model, method))
    perturb(model)  # non-zero up-projections: every gradient is non-trivial
    inputs = batch(model, B=4, T=24)
    calls = []
    monkeypatch.setattr(forms, "_thin_transposed", lambda r, x: calls.append(r) or True)  # on any BLAS
    out, grads = _grads(model, inputs)
    assert calls  # the products went through _thin, turned
    monkeypatch.setattr(forms, "_thin_transposed", lambda r, x: False)
    out_ref, grads_ref = _grads(model, inputs)
    scale = max(1.0, out_ref.abs().max().item())
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5 * scale)
    assert grads.keys() == grads_ref.keys() and any(".peftspace." in n or "lora" in n for n in grads)
    for n in grads:
        g_scale = max(1.0, grads_ref[n].abs().max().item())
        torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-4, atol=1e-5 * g_scale, msg=n)
