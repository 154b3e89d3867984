"""Model families (encoder / decoder / encoder-decoder) and the task heads each can carry."""

from __future__ import annotations

from typing import Any

import transformers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)


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
