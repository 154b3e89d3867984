"""Tests for peftspace.models: loading by name, task heads, determinism, meta shapes, accounting.

Everything runs offline on CPU. Tests that touch the real packaged models are marked ``slow``
(a label, not a skip); SmolLM2 is converted once into the real user cache and reused.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from peftspace.models import packaged as models
from peftspace.models import (
    MODEL_NAMES,
    backbone_params,
    load_model,
    load_tokenizer,
    model_family,
)

TINY_FAMILIES = {
    "tiny-bert": "encoder",
    "tiny-roberta": "encoder",
    "tiny-t5": "encoder-decoder",
    "tiny-t5-gated": "encoder-decoder",
    "tiny-bart": "encoder-decoder",
    "tiny-mbart": "encoder-decoder",
    "tiny-gpt2": "decoder",
    "tiny-llama": "decoder",
    "tiny-qwen2": "decoder",
}
FAMILY_TASKS = {
    "encoder": ["base", "classification", "regression"],
    "decoder": ["base", "classification", "regression", "causal-lm"],
    "encoder-decoder": ["base", "classification", "regression", "seq2seq-lm"],
}
SENTENCES = ["the film is a charming and often moving journey .", "dull , lifeless and far too long ."]

# Published parameter counts of the bare backbones (AutoModel), checked exactly.
SHAPE_COUNTS = {
    "shape:roberta-base": 124_645_632,
    "shape:bert-base": 109_482_240,
    "shape:minilm": 22_713_216,
    "shape:bart-base": 139_420_416,
    "shape:bart-large": 406_291_456,
    "shape:mbart-large-cc25": 610_851_840,
    "shape:t5-base": 222_903_552,
    "shape:t5-large": 737_668_096,
    "shape:t5-3b": 2_851_598_336,
    "shape:gpt2": 124_439_808,
    "shape:llama-2-7b": 6_607_343_616,  # embeddings included, lm_head excluded
    "shape:smollm2": 134_515_008,
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the network, even when the suite is run without HF_HUB_OFFLINE=1."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _tiny_tasks() -> list[tuple[str, str]]:
    return [(name, task) for name, family in TINY_FAMILIES.items() for task in FAMILY_TASKS[family]]


def _forward(model: torch.nn.Module, tokenizer, task: str) -> object:
    """One forward pass with the inputs and labels the task needs; returns the output."""
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    if task == "classification":
        batch["labels"] = torch.tensor([1, 0])
    elif task == "regression":
        batch["labels"] = torch.tensor([0.8, -0.5])
    elif task == "causal-lm":
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    elif task == "seq2seq-lm":
        batch["labels"] = tokenizer(["a b c", "d e"], padding=True, return_tensors="pt")["input_ids"]
    elif model_family(model) == "encoder-decoder":  # bare encoder-decoder needs decoder inputs
        batch["decoder_input_ids"] = batch["input_ids"][:, :3]
    with torch.no_grad():
        return model(**batch)


# ------------------------------------------------------------------------------ tiny models

def test_model_names_cover_everything() -> None:
    assert set(TINY_FAMILIES) | {"minilm", "smollm2"} | set(SHAPE_COUNTS) == set(MODEL_NAMES)
    assert all(isinstance(text, str) and text for text in MODEL_NAMES.values())


@pytest.mark.parametrize(("name", "task"), _tiny_tasks())
def test_tiny_model_loads_and_runs(name: str, task: str) -> None:
    model = load_model(name, task=task, num_labels=3 if task == "classification" else 2)
    tokenizer = load_tokenizer(name)
    assert model.config.peftspace_name == name
    assert model_family(model) == TINY_FAMILIES[name]
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"  # transformers' default, left unchanged
    out = _forward(model, tokenizer, task)
    if task == "classification":
        assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
        assert model.config.problem_type == "single_label_classification"
    elif task == "regression":
        assert out.logits.shape == (2, 1) and torch.isfinite(out.loss)
        assert model.config.problem_type == "regression"
    elif task in ("causal-lm", "seq2seq-lm"):
        assert out.logits.shape[-1] == len(tokenizer)
        # untrained: about log(vocab); T5 v1.1's unscaled untied head starts with larger logits
        assert 0.5 * math.log(len(tokenizer)) < out.loss.item() < 3 * math.log(len(tokenizer))
    else:
        assert out.last_hidden_state.shape[-1] == model.config.hidden_size


@pytest.mark.parametrize("name", list(TINY_FAMILIES))
def test_tiny_auto_task_and_generation(name: str) -> None:
    model = load_model(name)
    expected = {"encoder": "ForSequenceClassification", "decoder": "ForCausalLM",
                "encoder-decoder": "ForConditionalGeneration"}[TINY_FAMILIES[name]]
    if name == "tiny-gpt2":
        expected = "LMHeadModel"
    assert type(model).__name__.endswith(expected)
    if TINY_FAMILIES[name] == "encoder":
        return
    tokenizer = load_tokenizer(name)
    inputs = tokenizer(["the film is"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    new_tokens = out.shape[1] - (inputs["input_ids"].shape[1] if TINY_FAMILIES[name] == "decoder" else 0)
    assert new_tokens >= 3


@pytest.mark.parametrize("name", list(TINY_FAMILIES))
def test_tiny_models_are_deterministic_in_seed(name: str) -> None:
    first = load_model(name, seed=7).state_dict()
    again = load_model(name, seed=7).state_dict()
    other = load_model(name, seed=8).state_dict()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first)


def test_loading_does_not_disturb_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny-llama", seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", list(TINY_FAMILIES))
def test_tiny_vocab_matches_tokenizer_and_pad_exists(name: str) -> None:
    model = load_model(name, task="base")
    tokenizer = load_tokenizer(name)
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.pad_token_id is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id
    hidden = model.get_input_embeddings().weight.shape[1]
    assert 32 <= hidden <= 64
    if TINY_FAMILIES[name] == "encoder-decoder":
        # labels are padded with pad and masked by it, so pad must not be eos; eos ends each text
        assert tokenizer.pad_token_id != tokenizer.eos_token_id
        assert tokenizer("hello world")["input_ids"][-1] == tokenizer.eos_token_id


def test_tiny_t5_is_the_t5_3b_case_with_relative_bias() -> None:
    model = load_model("tiny-t5")
    config = model.config
    assert config.d_kv * config.num_heads != config.d_model
    attention = model.encoder.block[0].layer[0].SelfAttention
    assert attention.q.out_features == config.d_kv * config.num_heads
    assert attention.has_relative_attention_bias
    assert model.decoder.block[0].layer[0].SelfAttention.has_relative_attention_bias
    assert not config.is_gated_act
    assert type(model.encoder.block[0].layer[-1].DenseReluDense).__name__ == "T5DenseActDense"
    gated = load_model("tiny-t5-gated")
    assert gated.config.is_gated_act and gated.config.feed_forward_proj == "gated-gelu"
    assert type(gated.encoder.block[0].layer[-1].DenseReluDense).__name__ == "T5DenseGatedActDense"
    assert gated.config.d_kv * gated.config.num_heads != gated.config.d_model


def test_tiny_llama_and_qwen2_use_grouped_query_attention_and_gated_ffn() -> None:
    for name in ("tiny-llama", "tiny-qwen2"):
        model = load_model(name)
        config = model.config
        assert config.num_key_value_heads < config.num_attention_heads
        layer = model.model.layers[0]
        head_dim = config.hidden_size // config.num_attention_heads
        assert layer.self_attn.k_proj.out_features == config.num_key_value_heads * head_dim
        assert hasattr(layer.mlp, "gate_proj")


def test_dtype_is_applied() -> None:
    model = load_model("tiny-llama", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


# ------------------------------------------------------------------------------ shapes

def _rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(("name", "expected"), list(SHAPE_COUNTS.items()))
def test_shape_param_counts_match_published(name: str, expected: int) -> None:
    before = _rss_bytes()
    model = load_model(name)
    assert all(param.is_meta for param in model.parameters())
    assert all(buffer.is_meta for buffer in model.buffers())
    if before is not None:
        assert _rss_bytes() - before < 256 * 2**20  # real weights would take GBs
    assert backbone_params(model) == expected
    assert model.config.peftspace_name == name


@pytest.mark.parametrize(
    ("name", "task", "expected"),
    [
        ("shape:llama-2-7b", "causal-lm", 6_738_415_616),  # untied lm_head is pretrained: counted
        ("shape:gpt2", "causal-lm", 124_439_808),  # tied head counted once
        ("shape:t5-base", "seq2seq-lm", 222_903_552),
        ("shape:t5-3b", "seq2seq-lm", 2_851_598_336),
        ("shape:bart-large", "seq2seq-lm", 406_291_456),
        ("shape:roberta-base", "classification", 124_055_040),  # no pooler; new head excluded
        ("shape:llama-2-7b", "classification", 6_607_343_616),
    ],
)
def test_shape_heads_are_accounted(name: str, task: str, expected: int) -> None:
    model = load_model(name, task=task)
    assert backbone_params(model) == expected


def test_shape_counts_agree_with_rounded_published_numbers() -> None:
    published = {"shape:roberta-base": 124.6e6, "shape:t5-base": 222.9e6, "shape:t5-3b": 2.85e9,
                 "shape:gpt2": 124.4e6, "shape:smollm2": 134.5e6, "shape:minilm": 22.7e6}
    for name, count in published.items():
        assert abs(SHAPE_COUNTS[name] - count) / count < 0.005
    # LLaMA-2-7B: 6.74B with lm_head; 6.48B without both embedding matrices
    vocab_by_hidden = 32000 * 4096
    assert abs(6_738_415_616 - 6.74e9) / 6.74e9 < 0.005
    assert abs(SHAPE_COUNTS["shape:llama-2-7b"] - vocab_by_hidden - 6.48e9) / 6.48e9 < 0.005


def test_shape_embeddings_counted_once_when_tied() -> None:
    model = load_model("shape:bart-large")
    embedding = model.shared.weight
    assert model.encoder.embed_tokens.weight is embedding
    naive = sum(param.numel() for _, param in model.named_parameters(remove_duplicate=False))
    assert naive > backbone_params(model) == 406_291_456


# ------------------------------------------------------------------------------ accounting

def test_backbone_params_excludes_new_heads_and_counts_untied_lm_head() -> None:
    base = backbone_params(load_model("tiny-llama", task="base"))
    classifier = load_model("tiny-llama", task="classification")
    lm = load_model("tiny-llama", task="causal-lm")
    assert backbone_params(classifier) == base
    assert sum(p.numel() for p in classifier.parameters()) > base
    assert backbone_params(lm) == base + lm.lm_head.weight.numel()  # untied: pretrained head
    tied = load_model("tiny-gpt2", task="causal-lm")
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert backbone_params(tied) == backbone_params(load_model("tiny-gpt2", task="base"))
    untied_t5 = load_model("tiny-t5-gated", task="seq2seq-lm")
    assert backbone_params(untied_t5) == sum(p.numel() for p in untied_t5.parameters())


def test_model_family_from_config() -> None:
    assert model_family(load_model("shape:t5-base").config) == "encoder-decoder"
    assert model_family(load_model("shape:gpt2")) == "decoder"
    assert model_family(load_model("shape:bert-base")) == "encoder"


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("name", ["nonsense-model!", "tiny-nope", "shape:nope", "./no/such/folder", ""])
def test_unknown_name_lists_valid_names(name: str) -> None:
    with pytest.raises(ValueError) as info:
        load_model(name)
    message = str(info.value)
    assert repr(name) in message
    for valid in ("minilm", "smollm2", "tiny-bert", "shape:t5-3b"):
        assert valid in message


def test_hub_id_offline_names_packaged_models() -> None:
    with pytest.raises(ValueError) as info:
        load_model("some-org/some-model")
    message = str(info.value)
    assert "some-org/some-model" in message and "minilm" in message and "smollm2" in message
    with pytest.raises(ValueError, match="minilm"):
        load_tokenizer("some-org/some-model")


@pytest.mark.parametrize(
    ("name", "task", "valid"),
    [("tiny-bert", "causal-lm", "classification"), ("tiny-gpt2", "seq2seq-lm", "causal-lm"),
     ("tiny-t5", "causal-lm", "seq2seq-lm"), ("shape:bert-base", "seq2seq-lm", "regression")],
)
def test_wrong_task_names_valid_tasks(name: str, task: str, valid: str) -> None:
    with pytest.raises(ValueError, match=valid) as info:
        load_model(name, task=task)
    assert repr(task) in str(info.value)


def test_unknown_task_is_rejected() -> None:
    with pytest.raises(ValueError, match="valid tasks"):
        load_model("tiny-bert", task="translation")


def test_shape_without_tokenizer_says_so() -> None:
    with pytest.raises(ValueError, match="no tokenizer"):
        load_tokenizer("shape:t5-3b")


# ------------------------------------------------------------------------------ local folders

def test_local_folder_round_trip(tmp_path: Path) -> None:
    model = load_model("tiny-gpt2", task="causal-lm", seed=3)
    tokenizer = load_tokenizer("tiny-gpt2")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.config.peftspace_name == str(tmp_path)
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    reference = model.state_dict()
    assert all(torch.equal(reference[key], value) for key, value in loaded.state_dict().items())
    assert load_tokenizer(str(tmp_path)).pad_token_id == tokenizer.pad_token_id
    classifier = load_model(str(tmp_path), task="classification", num_labels=4)
    assert classifier.config.num_labels == 4 and classifier.config.pad_token_id is not None


# ------------------------------------------------------------------------------ cache

def test_cache_entry_is_atomic_and_keyed_by_source(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"version one")
    target = tmp_path / "cache" / "entry"
    calls: list[str] = []

    def write(dest: Path) -> None:
        calls.append(source.read_text())
        (dest / "payload.txt").write_text(source.read_text())

    models._build_cache_entry(target, source, write)
    models._build_cache_entry(target, source, write)
    assert calls == ["version one"]  # second call hits the cache
    source.write_bytes(b"version two!")
    models._build_cache_entry(target, source, write)
    assert (target / "payload.txt").read_text() == "version two!"
    record = json.loads((target / models._SOURCE_RECORD).read_text())
    assert record["size"] == len(b"version two!") and len(record["sha256"]) == 64

    def crash(dest: Path) -> None:
        (dest / "half.txt").write_text("partial")
        raise RuntimeError("simulated crash")

    source.write_bytes(b"version three")
    with pytest.raises(RuntimeError):
        models._build_cache_entry(target, source, crash)
    assert not (target / "half.txt").exists()
    assert [p.name for p in target.parent.iterdir()] == ["entry"]  # no temp dirs left behind


def test_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PEFTSPACE_CACHE", str(tmp_path / "pc"))
    assert models.cache_dir() == tmp_path / "pc"
    monkeypatch.delenv("PEFTSPACE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "peftspace"


# ------------------------------------------------------------------------------ real models

@pytest.mark.slow
def test_minilm_gives_sensible_embeddings() -> None:
    model = load_model("minilm", task="base")
    tokenizer = load_tokenizer("minilm")
    assert backbone_params(model) == SHAPE_COUNTS["shape:minilm"]
    sentences = ["A man is eating food.", "A man is eating a piece of bread.",
                 "The stock market fell sharply today."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2] + 0.3
    classifier = load_model("minilm", num_labels=3)
    assert type(classifier).__name__ == "BertForSequenceClassification"
    assert backbone_params(classifier) == SHAPE_COUNTS["shape:minilm"]


@pytest.mark.slow
def test_smollm2_generates_and_predicts_text() -> None:
    model = load_model("smollm2")  # first use on a machine converts the GGUF (~25 s) into the cache
    tokenizer = load_tokenizer("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.peftspace_name == "smollm2"
    assert backbone_params(model) == SHAPE_COUNTS["shape:smollm2"]
    assert not hasattr(model.config, "quantization_config")
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()
    assert "Paris" in text
    sentence = tokenizer("The quick brown fox jumps over the lazy dog. It was a sunny day in the park.",
                         return_tensors="pt")
    with torch.no_grad():
        loss = model(**sentence, labels=sentence["input_ids"]).loss.item()
    assert loss < 0.5 * math.log(len(tokenizer))


@pytest.mark.slow
def test_smollm2_cache_is_recorded_and_fast() -> None:
    import time

    load_model("smollm2")  # ensure converted
    entry = models.cache_dir() / "models" / "smollm2-fp32"
    record = json.loads((entry / models._SOURCE_RECORD).read_text())
    gguf = models._smollm2_gguf()
    assert record["file"] == gguf.name and record["size"] == gguf.stat().st_size
    assert len(record["sha256"]) == 64
    start = time.perf_counter()
    model = load_model("smollm2", task="classification", num_labels=2, seed=1)
    assert time.perf_counter() - start < 10
    assert backbone_params(model) == SHAPE_COUNTS["shape:smollm2"]
