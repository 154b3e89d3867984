"""Still a normal model: generate() with prefixes/prompts and the KV cache; HF Trainer trains it."""

from __future__ import annotations

import pytest
import torch

import peftspace as ps

from helpers import tiny


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gpt2", "tiny-t5", "tiny-bart"])
@pytest.mark.parametrize("method", ["prefix", "prompt", "mam", "lora"])
def test_generate_with_cache_equals_without(family, method):
    model = tiny(family)
    ps.attach(model, ps.plan(model, method))
    with torch.no_grad():
        for _, p in ps.delta_named_parameters(model):
            p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(5, 200, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if not model.config.is_encoder_decoder:
        mask[1, :2] = 0  # left padding for decoder-only generation
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
              pad_token_id=model.config.pad_token_id or 0)
    with torch.no_grad():
        cached = model.generate(**kw, use_cache=True)
        uncached = model.generate(**kw, use_cache=False)
    assert cached.shape[1] > ids.shape[1] or model.config.is_encoder_decoder
    assert torch.equal(cached, uncached)


def test_prompt_strips_its_positions():
    model = tiny("tiny-bert", "base")
    ids = torch.randint(5, 200, (2, 7))
    with torch.no_grad():
        before = model(input_ids=ids).last_hidden_state
    ps.attach(model, ps.plan(model, "prompt:l=3"))
    with torch.no_grad():
        after = model(input_ids=ids).last_hidden_state
    assert after.shape == before.shape


def test_hf_trainer_trains_an_attached_model(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny("tiny-bert", "classification")
    ps.attach(model, ps.plan(model, "mam:l=4,r=8"))
    init = {n: p.detach().clone() for n, p in ps.delta_named_parameters(model)}
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(5, 200, (8,), generator=g), "labels": torch.tensor(i % 2)} for i in range(16)]

    def collate(rows):
        return {"input_ids": torch.stack([r["input_ids"] for r in rows]), "labels": torch.stack([r["labels"] for r in rows])}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in ps.delta_named_parameters(model) if not torch.equal(p, init[n])]
    assert changed
