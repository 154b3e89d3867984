"""lean_attention: the arithmetic of SDPA's math path (scores, softmax, dropout, @V), keeping less for backward."""

import pytest
import torch
import torch.nn.functional as F

from peftspace import lean_attention
from tests.helpers import batch, tiny


def _inputs(B=2, H=4, Hkv=2, T=5, S=7, D=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, S, D, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, S, D, generator=g, dtype=dtype, requires_grad=True)
    return q, k, v


def _reference(q, k, v, mask, p, scale, keep=None):
    rep = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ kk.transpose(-1, -2) * scale
    if mask is not None:
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min) if mask.dtype == torch.bool else s + mask
    pr = s.softmax(-1)
    if keep is not None:
        pr = pr * keep / (1 - p)
    return (pr @ vv).transpose(1, 2)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_without_dropout_equals_sdpa(mask_kind, hkv):
    q, k, v = _inputs(Hkv=hkv)
    T, S = q.shape[2], k.shape[2]
    pad = torch.ones(2, 1, T, S, dtype=torch.bool)
    pad[1, ..., :2] = False  # padding keys of the second example
    mask = {"none": None, "bool": pad, "float": torch.zeros(pad.shape, dtype=q.dtype).masked_fill(~pad, -1e9),
            "causal": None}[mask_kind]
    causal = mask_kind == "causal"
    got = lean_attention.attention(q, k, v, mask, 0.0, 0.3, is_causal=causal)
    rep = q.shape[1] // hkv
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    if causal:  # aligned to the last key, as with a cache: query t sees keys up to S - T + t
        mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    want = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=0.3).transpose(1, 2)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    ga = torch.autograd.grad(got, (q, k, v), g)
    gb = torch.autograd.grad(want, (q, k, v), g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("hkv", [4, 1])
def test_dropout_equals_the_math_with_the_same_mask(hkv):
    """Outputs and gradients equal the reference that multiplies by the same bool mask (same RNG draw)."""
    q, k, v = _inputs(Hkv=hkv)
    mask = torch.ones(2, 1, q.shape[2], k.shape[2], dtype=torch.bool)
    mask[0, ..., -3:] = False
    p = 0.3
    torch.manual_seed(7)
    got = lean_attention.attention(q, k, v, mask, p, 0.25)
    torch.manual_seed(7)
    keep = torch.rand(q.shape[:3] + (k.shape[2],)) >= p  # the draw lean_attention makes
    assert 0 < keep.float().mean() < 1
    want = _reference(q, k, v, mask, p, 0.25, keep)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g)):
        torch.testing.assert_close(a, b)


def test_dropout_function_gradcheck():
    probs = torch.rand(2, 3, 4, 5, dtype=torch.float64).softmax(-1).requires_grad_()
    value = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)

    def f(pr, va):
        torch.manual_seed(3)  # the same mask on every call gradcheck makes
        return lean_attention._DropoutMatmul.apply(pr, va, 0.2)

    assert torch.autograd.gradcheck(f, (probs, value))


def _saved_bytes(fn) -> int:
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().sum().backward()
    return sum(saved.values())


def test_keeps_less_than_the_sdpa_math_path():
    """The reason it exists: SDPA with dropout on CPU keeps three (B, H, T, S) float tensors; this keeps
    the softmax output and a bool mask."""
    B, H, T, S, D = 4, 4, 32, 48, 8
    q = torch.randn(B, H, T, D, requires_grad=True)
    k = torch.randn(B, H, S, D, requires_grad=True)
    v = torch.randn(B, H, S, D, requires_grad=True)
    mask = torch.ones(B, 1, T, S, dtype=torch.bool)
    lean = _saved_bytes(lambda: lean_attention.attention(q, k, v, mask, 0.1))
    sdpa = _saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1))
    probs = B * H * T * S * 4
    assert sdpa - lean >= 1.5 * probs


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_prefix_models_train_through_it(name, monkeypatch):
    """A prefix model in train mode with attention dropout runs lean_attention (the CPU math path's
    replacement); in eval mode, or with dropout 0, the model's own SDPA runs. Gradients reach the prefixes."""
    import peftspace as ps
    model = tiny(name)
    for m in model.modules():  # attention dropout on, whatever the tiny config says
        if hasattr(m, "dropout") and isinstance(getattr(m, "dropout"), float):
            m.dropout = 0.1
        if hasattr(m, "attention_dropout") and isinstance(getattr(m, "attention_dropout"), float):
            m.attention_dropout = 0.1
    model.config.attention_probs_dropout_prob = 0.1
    ps.attach(model, ps.plan(model, "prefix:l=3"))
    inputs = batch(model)
    calls = []
    real = lean_attention.attention

    def spy(*a, **k):
        calls.append(a[4])
        return real(*a, **k)

    monkeypatch.setattr(lean_attention, "attention", spy)
    model.train()
    out = model(**inputs)
    (out.logits.float().square().mean()).backward()
    n_train = len(calls)
    model.eval()
    with torch.no_grad():
        model(**inputs)
    assert n_train == model.config.num_hidden_layers and set(calls) == {0.1} and len(calls) == n_train
    grads = [p.grad for n, p in model.named_parameters() if "peftspace" in n and p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_gqa_prefix_layers_read_kv_heads_in_place(name, monkeypatch):
    """On CPU a grouped-query prefix layer calls SDPA with enable_gqa instead of transformers' repeated K/V:
    logits and gradients equal those of the model's own path."""
    import sys

    import peftspace as ps

    mod = sys.modules["peftspace.attach"]  # the module (ps.attach is the function)
    model = tiny(name)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ps.attach(model, ps.plan(model, "prefix:l=5"))
    inputs = batch(model)
    seen = []
    real = mod._cpu_path
    monkeypatch.setattr(mod, "_cpu_path", lambda *a: seen.append(real(*a)) or seen[-1])

    def run():
        model.zero_grad(set_to_none=True)
        out = model(**inputs).logits
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for n, p in model.named_parameters() if "peftspace" in n]

    got = run()
    assert "sdpa" in seen
    monkeypatch.setattr(mod, "_cpu_path", lambda *a: None)
    want = run()
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
