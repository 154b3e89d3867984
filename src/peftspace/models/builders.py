"""Building tiny random-initialised models and full-size meta-device shapes from configs."""

from __future__ import annotations

import functools
from typing import Any

import torch
import transformers
from transformers import (
    AutoConfig,
    PretrainedConfig,
)
from .families import _AUTO_CLASSES, _resolve_task, _task_config_updates, model_family
from .names import _SHAPE_CONFIGS
from .pretrained import _seeded
from .tokenizers import _TINY_MAX_POSITIONS, _tiny_tokenizer


# --------------------------------------------------------------------------------------------
# Tiny random-initialised models
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tiny_special_ids(name: str) -> dict[str, Any]:
    """Vocab size and special ids a tiny model takes from its tokenizer (memoised: every tiny
    model load needs them, and building the tokenizer costs a copy)."""
    tokenizer = _tiny_tokenizer(name)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": bos if bos is not None else tokenizer.cls_token_id,  # BERT: [CLS]
        "eos_token_id": eos if eos is not None else tokenizer.sep_token_id,  # BERT: [SEP]
    }


def _tiny_config(name: str) -> PretrainedConfig:
    """Config of a tiny model; vocab and special ids come from its tokenizer."""
    ids = dict(_tiny_special_ids(name))
    encoder = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    seq2seq = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                   max_position_embeddings=_TINY_MAX_POSITIONS)
    t5 = dict(d_model=32, num_heads=4, d_kv=12, d_ff=64, num_layers=2, num_decoder_layers=2,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              decoder_start_token_id=ids["pad_token_id"])
    decoder = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, max_position_embeddings=_TINY_MAX_POSITIONS)
    specs: dict[str, tuple[str, dict[str, Any]]] = {
        "tiny-bert": ("bert", dict(**encoder, max_position_embeddings=_TINY_MAX_POSITIONS,
                                   type_vocab_size=2)),
        # RoBERTa positions start after padding_idx (= pad id 0 here), hence +2 like roberta-base's 514.
        "tiny-roberta": ("roberta", dict(**encoder, max_position_embeddings=_TINY_MAX_POSITIONS + 2,
                                         type_vocab_size=1, layer_norm_eps=1e-5)),
        "tiny-t5": ("t5", dict(**t5, feed_forward_proj="relu", tie_word_embeddings=True)),
        "tiny-t5-gated": ("t5", dict(**t5, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
        "tiny-bart": ("bart", dict(**seq2seq, decoder_start_token_id=ids["eos_token_id"],
                                   forced_eos_token_id=ids["eos_token_id"], tie_word_embeddings=True)),
        "tiny-mbart": ("mbart", dict(**seq2seq, scale_embedding=True, tie_word_embeddings=True,
                                     decoder_start_token_id=ids["eos_token_id"])),
        "tiny-gpt2": ("gpt2", dict(n_embd=32, n_layer=2, n_head=4, n_positions=_TINY_MAX_POSITIONS,
                                   tie_word_embeddings=True)),
        "tiny-llama": ("llama", dict(**decoder, tie_word_embeddings=False)),
        "tiny-qwen2": ("qwen2", dict(**decoder, tie_word_embeddings=True)),
    }
    model_type, fields = specs[name]
    return AutoConfig.for_model(model_type, **ids, **fields)


def _build_tiny(name: str, task: str, num_labels: int, seed: int) -> transformers.PreTrainedModel:
    config = _tiny_config(name)
    task = _resolve_task(task, model_family(config), shape=False)
    for key, value in _task_config_updates(task, num_labels).items():
        setattr(config, key, value)
    with _seeded(seed):
        return _AUTO_CLASSES[task].from_config(config, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Full-size shapes on the meta device
# --------------------------------------------------------------------------------------------

def _build_shape(key: str, task: str, num_labels: int) -> transformers.PreTrainedModel:
    """Full-size published architecture with every tensor on the meta device (no memory)."""
    fields = dict(_SHAPE_CONFIGS[key])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    task = _resolve_task(task, model_family(config), shape=True)
    for field, value in _task_config_updates(task, num_labels).items():
        setattr(config, field, value)
    with torch.device("meta"):
        return _AUTO_CLASSES[task].from_config(config)
