"""Specs as data (validation rules, method strings, YAML/JSON), plans as JSON, adapter files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import peftspace as ps
from peftspace.attach import PlanMismatch
from peftspace.plan import Plan, parse_budget
from peftspace.spec import DeltaSpec, SpecError

from helpers import batch, logits, perturb, tiny


@pytest.mark.parametrize("kwargs,rule", [
    (dict(form="lora", sites=("attn.q",), insertion="sequential", size=4), "lora-parallel"),
    (dict(form="lora", sites=("ffn",), size=4), "lora-sites"),
    (dict(form="prefix", sites=("attn.q",), size=4), "prefix-sites"),
    (dict(form="bottleneck", sites=("attn.heads",), insertion="sequential", size=4), "heads-parallel"),
    (dict(form="bottleneck", sites=("ffn",), size=0), "size"),
    (dict(form="bias", sites=("attn.q",), size=3), "size"),
    (dict(form="bottleneck", sites=("ffn",), size=4, composition="add", s=2.0), "scale"),
    (dict(form="bottleneck", sites=("ffn",), size=4, act="swish"), "act"),
    (dict(form="bottleneck", sites=("nowhere",), size=4), "sites"),
    (dict(form="lora", sites=("attn.q",), size=4, reparam=8), "reparam"),
    (dict(form="prompt", sites=("embed",), size=4, composition="gate"), "prompt-composition"),
    (dict(form="magic", sites=("ffn",), size=4), "form"),
])
def test_invalid_specs_name_the_rule(kwargs, rule):
    with pytest.raises(SpecError, match=f"rule '{rule}'"):
        DeltaSpec("x", **kwargs)


def test_method_strings():
    specs, _ = ps.parse_method("mam:l=30,r=512")
    assert [(s.form, s.size) for s in specs] == [("prefix", 30), ("bottleneck", 512)]
    specs, _ = ps.parse_method("lora:r=16,s=4")
    assert specs[0].size == 16 and specs[0].s == 4.0
    specs, _ = ps.parse_method("lora+pa:r=4")
    assert [s.name for s in specs] == ["lora", "pa"] and {s.size for s in specs} == {4}
    with pytest.raises(SpecError, match="unknown method 'lorax'"):
        ps.parse_method("lorax")
    with pytest.raises(SpecError, match="no spec of 'bitfit' has field"):
        ps.parse_method("bitfit:r=4")


def test_spec_dict_round_trip_and_unknown_field():
    for specs in ps.PRESETS.values():
        for s in specs:
            assert DeltaSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(SpecError, match="unknown field"):
        DeltaSpec.from_dict({"name": "x", "form": "lora", "sites": ["attn.q"], "size": 2, "rank": 3})


def test_plan_json_round_trip_and_hash():
    model = tiny("tiny-t5")
    plan = ps.plan(model, "mam", budget="3%")
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.hash == plan.hash and again.to_json() == plan.to_json()
    assert ps.plan(model, "mam", budget="3%").hash == plan.hash
    assert ps.plan(model, "mam", budget="2%").hash != plan.hash
    assert "trainable" in str(plan.table().caption)


def test_budget_parsing():
    assert parse_budget("0.5%") == ("fraction", 0.005)
    assert parse_budget(0.005) == ("fraction", 0.005)
    assert parse_budget("120000") == ("count", 120000.0)
    with pytest.raises(SpecError, match="budget"):
        parse_budget("lots")


@pytest.mark.parametrize("family,method", [("tiny-bert", "mam"), ("tiny-t5", "adapter"), ("tiny-llama", "prompt"),
                                           ("tiny-gpt2", "bitfit"), ("tiny-bart", "mh_pa")])
def test_save_load_reproduces_outputs_exactly(tmp_path, family, method):
    model = tiny(family, "classification")
    ps.attach(model, ps.plan(model, method))
    perturb(model)
    kw = batch(model)
    ref = logits(model, kw)
    ps.save_adapter(model, tmp_path / "a")
    saved = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    assert set(saved) == {n for n, _ in ps.delta_named_parameters(model)}  # only Δh weights
    fresh = tiny(family, "classification")
    ps.load_adapter(fresh, tmp_path / "a")
    assert torch.equal(logits(fresh, kw), ref)
    ps.save_adapter(model, tmp_path / "a")  # overwriting an adapter directory works


def test_load_refuses_other_architecture(tmp_path):
    model = tiny("tiny-bert")
    ps.attach(model, ps.plan(model, "lora"))
    ps.save_adapter(model, tmp_path / "a")
    with pytest.raises(PlanMismatch, match="another architecture"):
        ps.load_adapter(tiny("tiny-llama"), tmp_path / "a")


def test_load_never_unpickles(tmp_path):
    model = tiny("tiny-bert")
    ps.attach(model, ps.plan(model, "lora"))
    ps.save_adapter(model, tmp_path / "a")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["adapter.json", "adapter.safetensors", "head.safetensors", "plan.json"]


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-llama", "tiny-t5"])
def test_peft_export_loads_in_peft_with_equal_outputs(tmp_path, family):
    from peft import PeftModel

    model = tiny(family)
    ps.attach(model, ps.plan(model, "lora:r=4"))
    perturb(model)
    kw = batch(model)
    ref = logits(model, kw)
    ps.export_peft(model, tmp_path / "peft")
    pm = PeftModel.from_pretrained(tiny(family), str(tmp_path / "peft"))
    pm.eval()
    with torch.no_grad():
        out = pm(**kw).logits
    # peftspace runs x·(W + s·B·A)ᵀ (forms._LoRALinear), peft x·Wᵀ + s·(x·Aᵀ)·Bᵀ: fp32 rounding apart
    torch.testing.assert_close(out, ref, atol=1e-5 * max(1.0, ref.abs().max().item()), rtol=1e-4)


def test_peft_export_refuses_non_lora(tmp_path):
    model = tiny("tiny-bert")
    ps.attach(model, ps.plan(model, "pa"))
    with pytest.raises(SpecError, match="only plans made purely of LoRA"):
        ps.export_peft(model, tmp_path / "x")


def test_unknown_architecture_names_families_and_table():
    from transformers import DistilBertConfig, DistilBertModel

    model = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    with pytest.raises(ValueError, match=r"not in peftspace's architecture table.*BERT family.*ARCHS in .*arch\.py"):
        ps.plan(model, "lora")


def test_export_cli_round_trip(tmp_path):
    from peft import PeftModel

    from peftspace.cli import main

    model = tiny("tiny-bert", "classification")
    ps.attach(model, ps.plan(model, "lora:r=4"))
    perturb(model)
    kw = batch(model)
    ref = logits(model, kw)
    ps.save_adapter(model, tmp_path / "a")
    assert main(["export", "--to", "peft", str(tmp_path / "a"), str(tmp_path / "p")]) == 0
    pm = PeftModel.from_pretrained(tiny("tiny-bert", "classification"), str(tmp_path / "p"))
    pm.eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(**kw).logits, ref, atol=1e-6, rtol=1e-6)
