"""The packaged real models, as users run them: offline loading, attach, generate with the KV cache."""

from __future__ import annotations

import pytest
import torch

import peftspace as ps

pytestmark = pytest.mark.slow


def test_minilm_attach_detach_and_counts():
    model = ps.load_model("minilm")
    model.eval()
    tok = ps.load_tokenizer("minilm")
    batch = tok(["a gripping, beautifully acted film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        base = model(**batch).logits
    plan = ps.plan(model, "mam", budget="0.5%")
    assert abs(plan.trainable_params / (0.005 * plan.backbone_params) - 1) < 0.02
    assert plan.backbone_params == 22_713_216
    ps.attach(model, plan)
    assert sum(p.numel() for _, p in ps.delta_named_parameters(model)) == plan.trainable_params
    ps.detach(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)


def test_smollm2_mam_generates_with_kv_cache():
    model = ps.load_model("smollm2")
    model.eval()
    tok = ps.load_tokenizer("smollm2")
    assert model.config.model_type == "llama" and model.config.num_key_value_heads == 3
    plan = ps.plan(model, "mam")
    ps.attach(model, plan)
    with torch.no_grad():  # a small random prefix: the model must still speak
        for m in model.modules():
            if isinstance(m, ps.forms.Prefix):
                m.prefix_k.mul_(0.1)
                m.prefix_v.mul_(0.1)
    inputs = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True,
                                pad_token_id=tok.pad_token_id)
        uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False,
                                  pad_token_id=tok.pad_token_id)
    assert torch.equal(cached, uncached)
    text = tok.decode(cached[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip(), "generated nothing"
