"""The method × family matrix (issue 2, point 5): the equivalences that everything else stands on."""

from __future__ import annotations

import pytest
import torch

import peftspace as ps
from peftspace.presets import PRESETS
from peftspace.spec import DeltaSpec, SpecError

from helpers import FAMILIES, batch, logits, tiny

METHODS = list(PRESETS)
# Presets whose Δh is zero at initialisation (LoRA init: zero up-projection; BitFit: zero bias).
# prefix/prompt/mam change outputs at attach by construction (λ(x) > 0 for any prefix).
ZERO_INIT = [m for m in METHODS if m not in ("prefix", "prompt", "mam")]
MERGEABLE = ["lora", "lora_ffn", "bitfit"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_attach_count_detach(family, method):
    model = tiny(family)
    kw = batch(model)
    base = logits(model, kw)
    plan = ps.plan(model, method)
    ps.attach(model, plan)
    # analytic count == numel of what is attached
    assert sum(p.numel() for _, p in ps.delta_named_parameters(model)) == plan.trainable_params
    out = logits(model, kw)
    assert torch.isfinite(out).all()
    if method in ZERO_INIT:
        assert torch.equal(out, base), "a zero-initialised Δh must leave outputs bit-identical"
    else:
        assert not torch.equal(out, base), "prefix/prompt change outputs at attach"
    ps.detach(model)
    assert torch.equal(logits(model, kw), base), "detach must restore bit-identical outputs"
    assert not any(".peftspace." in n for n, _ in model.named_parameters())
    assert ps.attached_plan(model) is None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_equals_unmerged(family, method):
    model = tiny(family)
    kw = batch(model)
    base = logits(model, kw)
    ps.attach(model, ps.plan(model, method))
    with torch.no_grad():
        for _, p in ps.delta_named_parameters(model):
            p.normal_(0.0, 0.05)
    unmerged = logits(model, kw)
    assert not torch.equal(unmerged, base)
    assert ps.merge(model) > 0
    merged = logits(model, kw)
    # fp32: 1e-5 relative to the logits' scale (float rounding of W + s·B·A grows with |logits|).
    scale = max(1.0, unmerged.abs().max().item())
    assert (merged - unmerged).abs().max().item() <= 1e-5 * scale
    ps.unmerge(model)
    assert torch.equal(logits(model, kw), unmerged), "unmerge restores the weights bit-exactly"
    ps.merge(model)
    ps.detach(model)  # detaching a merged model unmerges first
    assert torch.equal(logits(model, kw), base)


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-t5", "tiny-bart", "tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prompt", "bitfit", "mh_pa", "mam"])
def test_only_delta_and_head_change(family, method):
    task = "classification"
    model = tiny(family, task)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ps.attach(model, ps.plan(model, method))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    deltas = {n for n, _ in ps.delta_named_parameters(model)}
    head = trainable - deltas
    assert deltas and deltas <= trainable
    assert all(not (n.startswith(("bert.", "transformer.", "model.")) and ".peftspace." not in n) for n in head), head
    init = {n: p.detach().clone() for n, p in ps.delta_named_parameters(model)}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    kw = batch(model)
    kw.pop("decoder_input_ids", None)
    for _ in range(3):
        out = model(**kw, labels=torch.tensor([0, 1]))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in before and n not in trainable:
            assert torch.equal(p, before[n]), f"backbone parameter {n} changed"
            assert not p.requires_grad
    assert any(not torch.equal(p, init[n]) for n, p in ps.delta_named_parameters(model)), "Δh did not train"


def test_cross_attention_on_encoder_is_rejected():
    model = tiny("tiny-bert")
    spec = DeltaSpec("x", "lora", ("attn.q",), "parallel", "scale", size=4, s=2.0, attn_kinds=("cross",))
    with pytest.raises(SpecError, match="cross"):
        ps.plan(model, spec)


def test_cross_attention_only_on_decoder_layers():
    model = tiny("tiny-bart")
    spec = DeltaSpec("x", "lora", ("attn.q",), "parallel", "scale", size=4, s=2.0, attn_kinds=("cross",))
    plan = ps.plan(model, spec)
    assert {e.stack for e in plan.entries} == {"decoder"}
    ps.attach(model, plan)
    assert all(".peftspace.x.cross_attn_q_0." in n for n, _ in ps.delta_named_parameters(model))


def test_plan_for_other_architecture_is_refused():
    plan = ps.plan(tiny("tiny-bert"), "lora")
    with pytest.raises(ps.SpecError, match="another architecture"):
        ps.attach(tiny("tiny-llama"), plan)


def test_attach_twice_is_refused():
    model = tiny("tiny-bert")
    ps.attach(model, ps.plan(model, "lora"))
    with pytest.raises(SpecError, match="already attached"):
        ps.attach(model, ps.plan(model, "pa"))


def test_gated_and_learned_compositions_run_and_count():
    model = tiny("tiny-llama")
    specs = [DeltaSpec("g", "bottleneck", ("ffn",), "parallel", "gate", size=4, act="gelu"),
             DeltaSpec("s", "lora", ("attn.o",), "parallel", "learned", size=3, s=2.0),
             DeltaSpec("q", "bottleneck", ("attn.q",), "sequential", "add", size=2, act="tanh")]
    plan = ps.plan(model, specs)
    ps.attach(model, plan)
    assert sum(p.numel() for _, p in ps.delta_named_parameters(model)) == plan.trainable_params
    assert torch.isfinite(logits(model, batch(model))).all()


def test_mixed_per_layer_plan_attaches():
    """Different layers carry different specs and sizes (the design-space case)."""
    model = tiny("tiny-t5")
    from peftspace.plan import Plan, PlanEntry

    lora = PRESETS["lora"][0]
    pfx = PRESETS["prefix"][0]
    entries = (PlanEntry("encoder", 0, lora.with_size(2)), PlanEntry("encoder", 1, pfx.with_size(3)),
               PlanEntry("decoder", 1, pfx.with_size(5)), PlanEntry("decoder", 0, lora.with_size(7)))
    base = ps.plan(model, "lora")
    plan = Plan(base.arch, entries)
    ps.attach(model, plan)  # prefixes on only some T5 layers: position bias shapes must still agree (adapters #669)
    assert sum(p.numel() for _, p in ps.delta_named_parameters(model)) == plan.trainable_params
    assert torch.isfinite(logits(model, batch(model))).all()


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-bert", "tiny-t5"])
def test_merge_in_bf16_within_stated_tolerance(family):
    """bf16 (peft #2502, #1388): merging rounds W + s·B·A to 8 mantissa bits, so merged outputs differ.
    The tolerance that holds: 2% of the logits' scale (fp32 holds 1e-5, see above)."""
    model = tiny(family).to(torch.bfloat16)
    ps.attach(model, ps.plan(model, "lora"))
    with torch.no_grad():
        for _, p in ps.delta_named_parameters(model):
            p.normal_(0.0, 0.05)
    kw = batch(model)
    unmerged = logits(model, kw).float()
    ps.merge(model)
    merged = logits(model, kw).float()
    assert (merged - unmerged).abs().max().item() <= 0.02 * max(1.0, unmerged.abs().max().item())
    ps.unmerge(model)
    assert torch.equal(logits(model, kw).float(), unmerged)
