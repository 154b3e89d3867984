"""Exact parameter accounting: He et al. Appendix B (Tables 9–12) on full-size meta-device configs."""

from __future__ import annotations

import json
import math

import pytest

import peftspace as ps
from peftspace.cli import main
from peftspace.models import load_model

L, D = 12, 1024  # BART-large: 12 encoder + 12 decoder layers, d = 1024 (Table 9: N_attn = 3, N_ffn = 2)

# (method string, He et al. Table 12 "#params (%)", Table 10/11 formula)
TABLE12 = [
    ("prefix:l=200", 3.6, 2 * 200 * D * 3 * L),
    ("prefix:l=512", 9.2, 2 * 512 * D * 3 * L),
    ("lora:r=200", 7.2, 4 * 200 * D * 3 * L),
    ("lora_ffn:r=102", 6.1, 10 * 102 * D * 2 * L),
    ("pa:r=200,bias=false", 2.4, 2 * 200 * D * 2 * L),
    ("pa:r=512,bias=false", 6.1, 2 * 512 * D * 2 * L),
    ("pa:r=1024,bias=false", 12.3, 2 * 1024 * D * 2 * L),
    ("mam:l=30,r=512,bias=false", 6.7, 2 * 30 * D * 3 * L + 2 * 512 * D * 2 * L),
]


def _plan_json(capsys, *args) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("method,percent,formula", TABLE12)
def test_table12_row_via_cli(capsys, method, percent, formula):
    d = _plan_json(capsys, "--model", "shape:bart-large", "--method", method)
    assert d["trainable_params"] == formula  # Tables 10–11, exactly
    assert d["backbone_params"] == 406_291_456  # BART-large, embeddings counted once
    assert math.floor(d["percent"] * 10) / 10 == percent  # the paper truncates to one decimal
    assert len(d["layers"]) == 2 * L and all("specs" in r and "params" in r for r in d["layers"])


def test_table12_pa_attention(capsys, tmp_path):
    spec = tmp_path / "pa_attn.yaml"
    spec.write_text("name: pa_attn\nform: bottleneck\nsites: [attn]\ninsertion: parallel\nsize: 200\nbias: false\n")
    d = _plan_json(capsys, "--model", "shape:bart-large", "--method", str(spec))
    assert d["trainable_params"] == 2 * 200 * D * 3 * L
    assert math.floor(d["percent"] * 10) / 10 == 3.6


def test_adapter_biases_are_counted():
    m = load_model("shape:bart-large")
    with_bias = ps.plan(m, "pa:r=200").trainable_params
    assert with_bias == 2 * 200 * D * 2 * L + (200 + D) * 2 * L


@pytest.mark.parametrize("shape,backbone", [
    ("shape:roberta-base", 124_645_632), ("shape:t5-base", 222_903_552), ("shape:gpt2", 124_439_808),
    ("shape:llama-2-7b", 6_607_343_616)])
def test_shape_models_count_without_weights(shape, backbone):
    m = load_model(shape)
    plan = ps.plan(m, "lora:r=8")
    assert plan.backbone_params == backbone
    assert all(p.device.type == "meta" for p in m.parameters())


def test_untied_lm_head_counts_as_backbone_when_loaded_as_lm():
    # LLaMA-2-7B: 6.74B with its (untied, pretrained) LM head; the base model alone is 6.61B.
    assert ps.plan(load_model("shape:llama-2-7b", task="causal-lm"), "lora").backbone_params == 6_738_415_616


def test_t5_3b_inner_dim_differs_from_d_model():
    """t5-3b: d_kv·heads = 128·32 = 4096 ≠ d_model = 1024 (adapters #485); counts use the inner width."""
    m = load_model("shape:t5-3b")
    plan = ps.plan(m, "prefix:l=10")
    n_layers = 24 + 24
    n_attn = 24 + 2 * 24  # encoder self + decoder self + cross
    assert plan.trainable_params == 2 * 10 * 4096 * n_attn
    lora = ps.plan(m, "lora:r=4")  # q: 1024→4096, v: 1024→4096
    assert lora.trainable_params == 2 * 4 * (1024 + 4096) * n_attn
    assert n_layers == sum(plan.dims.stacks.values())


def test_gqa_prefix_counts_kv_heads():
    m = load_model("shape:smollm2")  # 9 heads, 3 kv heads, head dim 64
    plan = ps.plan(m, "prefix:l=10")
    assert plan.trainable_params == 30 * 2 * 10 * 3 * 64


def test_budget_plan_is_nearest_integer_size():
    m = load_model("shape:roberta-base")
    plan = ps.plan(m, "lora", budget="0.5%")
    target = round(0.005 * plan.backbone_params)
    r = plan.entries[0].spec.size
    cost = lambda r: 12 * 2 * r * (768 + 768)
    assert abs(plan.trainable_params - target) <= min(abs(cost(r + 1) - target), abs(cost(r - 1) - target))


def test_multi_spec_budget_shares_equally():
    m = load_model("shape:roberta-base")
    plan = ps.plan(m, "mam", budget="0.5%")
    assert abs(plan.trainable_params / (0.005 * plan.backbone_params) - 1) < 0.01
    share = {}
    for e in plan.entries:
        share[e.spec.name] = share.get(e.spec.name, 0) + plan.entry_params(e)
    assert abs(share["prefix"] / share["spa"] - 1) < 0.1  # He et al.'s GLUE MAM: l=16, r=16 at ≈0.5%


def test_bitfit_adds_biases_on_t5():
    m = load_model("shape:t5-base")
    plan = ps.plan(m, "bitfit")
    d, ff, L = 768, 3072, 12
    per_self = 4 * d
    assert plan.trainable_params == L * (per_self + ff + d) + L * (2 * per_self + ff + d)
