"""Tokenizers for every model name (tiny models reuse the packaged ones)."""

from __future__ import annotations

import copy
import functools

import transformers
from transformers import (
    AutoTokenizer,
)
from .names import _REAL_NAMES, _TINY_NAMES, MODEL_NAMES, SHAPE_PREFIX
from .pretrained import _external_source, _offline_hint
from .packaged import _minilm_dir, _smollm2_tokenizer_dir


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
