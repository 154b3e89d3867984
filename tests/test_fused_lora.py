"""LoRA on a plain nn.Linear runs as one autograd node with its projection (forms._LoRALinear), merged or
unmerged with in-place accumulation: outputs and gradients equal autograd's unmerged path's, in training
and evaluation, either way; detach restores the Linear."""

from __future__ import annotations

import pytest
import torch

import peftspace as ps
from peftspace.forms import LowRank
from tests.helpers import FAMILIES, batch, graph_nodes as _nodes, perturb, tiny


def _close(a: torch.Tensor, b: torch.Tensor, msg: str = "") -> None:
    # fp32 rounding of W + s·B·A against x·Wᵀ + s·(x·Aᵀ)·Bᵀ grows with the values' scale (as merge's does)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()), msg=msg or None)


def _fused(root) -> list:
    """The graph's fused LoRA nodes (`n.merge` says which form each ran)."""
    return [n for n in _nodes(root) if type(n).__name__ == "_LoRALinearBackward"]


def _run(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs).logits
    loss = out.float().square().mean()
    fused = len(_fused(loss.grad_fn))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, fused


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["lora:r=4", "lora_ffn:r=4", "lora:r=4,s=4 + bitfit"])
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_fused_lora_equals_the_unmerged_path(family, method, merge, monkeypatch):
    monkeypatch.setattr(LowRank, "merges", lambda self, linear, x: merge)
    model = tiny(family)
    specs = sum((ps.parse_method(m)[0] for m in method.split(" + ")), ())  # "+" with sizes: specs by hand
    ps.attach(model, ps.plan(model, list(specs)))
    perturb(model)  # non-zero up-projections: every gradient is non-trivial
    # eval mode (the helper's): no dropout draws (T5 also drops inside attention); gradients still flow, and
    # with a dropout-free LoRA the fused path is the same in train mode
    inputs = batch(model, B=4, T=24)  # N = 96 tokens: tiny projections merge here (merges)
    out, grads, n_fused = _run(model, inputs)
    unmerged = any(not n.merge for n in _fused(model(**inputs).logits.grad_fn))
    assert unmerged == (not merge and family != "tiny-gpt2")
    with monkeypatch.context() as mp:
        mp.setattr(LowRank, "fuses_with", lambda self, linear: False)
        ref_out, ref_grads, n_ref = _run(model, inputs)
    assert n_ref == 0
    # GPT-2's projections are Conv1D (x·W, not nn.Linear): they keep the unmerged hook
    assert (n_fused > 0) == (family != "tiny-gpt2"), n_fused
    _close(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    # one absolute scale for all: some gradients are zero in exact arithmetic (a key bias: softmax is
    # shift-invariant) and only rounding noise in either path. 3e-5: T5's unscaled attention scores carry
    # the merged weight's rounding further (tiny-t5-gated, merged, 300 perturbations: 5 exceeded 1e-5·scale,
    # by up to 1.22x — the CI run of c9819f4 drew one of them)
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=3e-5 * scale, msg=k)


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_fused_lora_gives_a_trainable_bias_its_gradient(merge, monkeypatch):
    monkeypatch.setattr(LowRank, "merges", lambda self, linear, x: merge)
    model = tiny("tiny-bert")
    ps.attach(model, ps.plan(model, "lora:r=4"))
    perturb(model)
    q = model.bert.encoder.layer[0].attention.self.query
    q.bias.requires_grad_(True)  # a user unfreezing a bias the Δh's projection also reads
    inputs = batch(model, B=4, T=24)  # N = 96 tokens: tiny projections merge here (merges)
    _, grads, n_fused = _run(model, inputs)
    with monkeypatch.context() as mp:
        mp.setattr(LowRank, "fuses_with", lambda self, linear: False)
        _, ref_grads, _ = _run(model, inputs)
    assert n_fused > 0
    name = next(n for n, p in model.named_parameters() if p is q.bias)
    torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-llama", "tiny-t5"])
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_fused_lora_in_evaluation_and_after_merge(family, merge, monkeypatch):
    monkeypatch.setattr(LowRank, "merges", lambda self, linear, x: merge)
    model = tiny(family)
    ps.attach(model, ps.plan(model, "lora:r=4"))
    perturb(model)
    inputs = batch(model, B=4, T=24)  # N = 96 tokens: tiny projections merge here (merges)
    with torch.no_grad():
        fused = model(**inputs).logits
        with monkeypatch.context() as mp:
            mp.setattr(LowRank, "fuses_with", lambda self, linear: False)
            plain = model(**inputs).logits
        ps.merge(model)
        merged = model(**inputs).logits
        ps.unmerge(model)
    _close(fused, plain)
    _close(merged, plain)


def test_lora_dropout_in_training_takes_the_unmerged_path():
    model = tiny("tiny-bert")
    ps.attach(model, ps.plan(model, "lora:r=4,dropout=0.1"))
    model.train()
    _, _, n_fused = _run(model, batch(model, B=4, T=24))
    assert n_fused == 0  # dropout applies to the Δh branch only: no merged weight expresses it


def test_detach_restores_the_linear_forward():
    model = tiny("tiny-llama")
    before = batch(model)
    ref = model(**before).logits.detach()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ps.attach(model, ps.plan(model, "lora:r=4"))
    assert any("forward" in vars(m) for m in linears)
    ps.detach(model)
    assert not any("forward" in vars(m) for m in linears)
    assert torch.equal(model(**before).logits.detach(), ref)



def test_merging_is_chosen_by_the_bytes_it_moves():
    """merges' traffic model: merge when 4·out·in < N·(in + out) (training), 4·out·in < N·(in + 2·out) (no
    grad). BERT-base's FFN input projection (768 → 3072) breaks even at N ≈ 2458 tokens, ≈ 1366 without grad;
    the LLaMA-shaped gate projection (576 → 1536) at N ≈ 1676."""
    lora = LowRank(ps.parse_method("lora:r=8")[0][0], 768, 3072, torch.Generator().manual_seed(0))
    ffn_in = torch.nn.Linear(768, 3072).requires_grad_(False)
    assert lora.fuses_with(ffn_in)  # one node either way; merged or not is `merges`
    assert not lora.merges(ffn_in, torch.empty(8, 64, 768))  # N = 512: the unmerged form moves less
    assert not lora.merges(ffn_in, torch.empty(38, 64, 768))  # N = 2432
    assert lora.merges(ffn_in, torch.empty(39, 64, 768))  # N = 2496
    with torch.no_grad():
        assert not lora.merges(ffn_in, torch.empty(21, 64, 768))  # N = 1344
        assert lora.merges(ffn_in, torch.empty(22, 64, 768))  # N = 1408
    gate = torch.nn.Linear(576, 1536, bias=False).requires_grad_(False)
    lora = LowRank(ps.parse_method("lora:r=8")[0][0], 576, 1536, torch.Generator().manual_seed(0))
    assert not lora.merges(gate, torch.empty(16, 64, 576))  # N = 1024, the bench's LLaMA batch
    assert lora.merges(gate, torch.empty(32, 64, 576))
    model = tiny("tiny-bert")
    ps.attach(model, ps.plan(model, "lora:r=4"))
    _, _, n_fused = _run(model, batch(model, B=2, T=3))  # 6 tokens: every projection stays unmerged
    merged = [n.merge for n in _fused(model(**batch(model, B=2, T=3)).logits.grad_fn)]
    assert n_fused > 0 and not any(merged)


@pytest.mark.parametrize("family", FAMILIES)
def test_bitfit_inside_the_projection_bias_equals_the_hook(family, monkeypatch):
    """BitFit's Δh as the GEMM's bias (forms.BiasDelta.linear_forward) against h + b after the projection
    (spec rule 'bias-composition': always add): the same outputs and gradients, for projections with a
    bias (BERT) and without (LLaMA, T5)."""
    from peftspace.forms import BiasDelta

    model = tiny(family)
    ps.attach(model, ps.plan(model, "bitfit"))
    perturb(model)
    inputs = batch(model, B=4, T=24)
    replaced = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and "forward" in vars(m)]
    assert bool(replaced) == (family != "tiny-gpt2")  # GPT-2: Conv1D, not nn.Linear: the hook
    out, grads, _ = _run(model, inputs)
    with monkeypatch.context() as mp:
        mp.setattr(BiasDelta, "fuses_with", lambda self, linear: False)
        ref_out, ref_grads, _ = _run(model, inputs)
    _close(out, ref_out)
    assert grads.keys() == ref_grads.keys() and any(".peftspace." in k for k in grads)
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5 * scale, msg=k)
    ps.detach(model)
    assert not any("forward" in vars(m) for m in replaced)
