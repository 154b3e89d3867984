"""Prefix tuning through extended keys/values equals the gated Δh form of He et al. Eq. 7–10.

The reference below never concatenates: it computes standard attention h over the context, the
prefix attention Δh = softmax(x·W_q·P_kᵀ)·P_v on its own, the gate λ(x) of Eq. 8 from the two
log-sum-exps, and returns (1−λ)·h + λ·Δh (Eq. 9). It is swapped in for peftspace's attention
function on the same modules, so the two paths see identical inputs (padding masks, causal masks,
T5's relative position bias, grouped-query heads).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface

import peftspace as ps
from peftspace.attach import ATTN_NAME
from peftspace.forms import Prefix

from helpers import batch, logits, tiny


def _gated_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None, **kw):
    B, H, T, D = query.shape
    rep = H // key.shape[1]
    k, v = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scaling = D ** -0.5 if scaling is None else scaling
    s_c = query @ k.transpose(-1, -2) * scaling  # (B, H, T, S)
    if position_bias is not None:
        s_c = s_c + position_bias
    S = k.shape[2]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            s_c = s_c.masked_fill(~attention_mask, float("-inf"))
        else:
            s_c = s_c + attention_mask
    elif (kw.get("is_causal") if kw.get("is_causal") is not None else getattr(module, "is_causal", False)) and T > 1:
        i, j = torch.arange(T)[:, None], torch.arange(S)[None, :]
        s_c = s_c.masked_fill(~(j <= i + (S - T)), float("-inf"))
    pk, pv = zip(*(d.prefixes() for d in module._peftspace_heads if isinstance(d, Prefix)))
    pk = torch.cat(pk, 1).repeat_interleave(rep, 0)[None]  # (1, H, L, D)
    pv = torch.cat(pv, 1).repeat_interleave(rep, 0)[None]
    s_p = query @ pk.transpose(-1, -2) * scaling  # (B, H, T, L)
    lse_c, lse_p = torch.logsumexp(s_c, -1, keepdim=True), torch.logsumexp(s_p, -1, keepdim=True)
    lam = torch.exp(lse_p - torch.logaddexp(lse_p, lse_c))  # Eq. 8
    h = torch.softmax(s_c, -1).nan_to_num(0.0) @ v  # standard attention over the context
    dh = torch.softmax(s_p, -1) @ pv  # Δh, Eq. 9
    out = (1 - lam) * h + lam * dh  # Eq. 10 with W1 = W_q·P_kᵀ, W2 = P_v, f = softmax
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("peftspace_gated_reference", _gated_reference)


def _use(model, name):
    for m in model.modules():
        if hasattr(m, "_peftspace_heads"):
            m.config.__dict__["_attn_implementation_internal"] = name


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["tiny-bert", "tiny-t5", "tiny-bart", "tiny-gpt2", "tiny-llama", "tiny-qwen2"])
def test_prefix_concat_equals_gated_form(family, impl):
    model = tiny(family)
    model.set_attn_implementation(impl)
    plan = ps.plan(model, "prefix:l=5")
    ps.attach(model, plan)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Prefix):
                m.prefix_k.normal_(0, 1.0)
                m.prefix_v.normal_(0, 1.0)
    kw = batch(model, pad=True)
    concat = logits(model, kw)
    _use(model, "peftspace_gated_reference")
    gated = logits(model, kw)
    _use(model, ATTN_NAME)
    torch.testing.assert_close(concat, gated, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits(model, kw), concat)


def test_prefix_on_some_t5_layers_with_position_bias():
    """adapters #669: T5 crashed when only some layers had prefixes (position-bias shape)."""
    from peftspace.plan import Plan, PlanEntry

    model = tiny("tiny-t5")
    spec = ps.PRESETS["prefix"][0].with_size(4)
    base = ps.plan(model, "prefix")
    plan = Plan(base.arch, (PlanEntry("encoder", 1, spec), PlanEntry("decoder", 0, spec)))
    ps.attach(model, plan)
    kw = batch(model)
    out = logits(model, kw)
    _use(model, "peftspace_gated_reference")
    torch.testing.assert_close(out, logits(model, kw), atol=1e-5, rtol=1e-5)


def test_ungated_prefix_is_attention_plus_delta():
    """composition 'add' (He et al. Table 4 '−gating'): h + softmax(x·W_q·P_kᵀ)·P_v; zero P_v is a no-op."""
    model = tiny("tiny-llama")
    kw = batch(model)
    base = logits(model, kw)
    ps.attach(model, ps.plan(model, "prefix:l=4,composition=add"))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Prefix):
                m.prefix_v.zero_()
    assert torch.equal(logits(model, kw), base)


def test_prefix_reparameterisation_is_training_only():
    model = tiny("tiny-bart")
    plan = ps.plan(model, "prefix:l=6,reparam=16")
    assert plan.training_only_params > 0
    ps.attach(model, plan)
    attached = sum(p.numel() for _, p in ps.delta_named_parameters(model))
    assert attached == plan.training_only_params  # during training only the MLP and E exist
    kw = batch(model)
    before = logits(model, kw)
    ps.merge(model)  # materialise: P = MLP(E); the MLP is dropped
    assert sum(p.numel() for _, p in ps.delta_named_parameters(model)) == plan.trainable_params
    torch.testing.assert_close(logits(model, kw), before, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-llama", "tiny-gpt2"])
def test_evaluation_caches_follow_parameters_and_masks(family):
    """Without autograd the prefix key/value blocks are kept on the attention module and the extended mask
    is made once a forward: every change of a prefix (in place, by `.data`, by load_state_dict) or of the
    input mask must show in the next forward, which equals the computation without the block cache (a
    forward with autograd on). (The models build a new 4D mask from the input mask every forward; the
    mask cache's own identity and version checks are tested on `_extended_mask` below.)"""
    model = tiny(family)
    ps.attach(model, ps.plan(model, "prefix:l=5"))
    prefixes = [m for m in model.modules() if isinstance(m, Prefix)]

    def uncached(kw):
        return model(**kw).logits.detach()

    kw = batch(model, pad=True)
    first = logits(model, kw)
    torch.testing.assert_close(first, uncached(kw), rtol=0, atol=1e-6)
    with torch.no_grad():
        prefixes[0].prefix_k.mul_(3.0)  # in place: the version changes
    second = logits(model, kw)
    assert not torch.allclose(second, first)
    torch.testing.assert_close(second, uncached(kw), rtol=0, atol=1e-6)
    prefixes[-1].prefix_v.data = prefixes[-1].prefix_v.data * -2.0  # a new storage, no version bump
    third = logits(model, kw)
    assert not torch.allclose(third, second)
    torch.testing.assert_close(third, uncached(kw), rtol=0, atol=1e-6)
    model.load_state_dict({n: p + 0.5 for n, p in model.state_dict().items() if "prefix_k" in n}, strict=False)
    torch.testing.assert_close(logits(model, kw), uncached(kw), rtol=0, atol=1e-6)
    other = batch(model, seed=1, pad=True)  # another mask tensor
    other["attention_mask"][0, -3:] = 0
    torch.testing.assert_close(logits(model, other), uncached(other), rtol=0, atol=1e-6)
    before = logits(model, kw)
    kw["attention_mask"][0, -1] = 0  # the same tensor, written in place
    after = logits(model, kw)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, uncached(kw), rtol=0, atol=1e-6)
    ps.detach(model)
    assert not any("_peftspace_prefix_blocks" in vars(m) for m in model.modules())


def test_extended_mask_is_rebuilt_for_another_tensor_or_an_in_place_write():
    """The mask cache keys on the source tensor itself and its version: the same tensor unchanged is a hit,
    a write into it or another tensor with equal contents is a miss; without a source, the key decides."""
    import sys

    mod = sys.modules["peftspace.attach"]
    calls = []

    def build(m):
        return lambda: calls.append(1) or m.clone()

    src = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    first = mod._extended_mask(src, (5, 0), build(src))
    assert mod._extended_mask(src, (5, 0), build(src)) is first and len(calls) == 1
    assert mod._extended_mask(src, (6, 0), build(src)) is not first and len(calls) == 2  # another key
    src[0, 0, 0, 0] = False  # in place: the version changes
    rebuilt = mod._extended_mask(src, (6, 0), build(src))
    assert len(calls) == 3 and not rebuilt[0, 0, 0, 0]
    twin = src.clone()  # equal contents, another tensor
    assert mod._extended_mask(twin, (6, 0), build(twin)) is not rebuilt and len(calls) == 4
    spelled = mod._extended_mask(None, ("T", 3), build(src))
    assert mod._extended_mask(None, ("T", 3), build(src)) is spelled and len(calls) == 5
    assert mod._extended_mask(None, ("T", 4), build(src)) is not spelled and len(calls) == 6
