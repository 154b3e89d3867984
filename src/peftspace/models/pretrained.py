"""Pretrained model folders: packaged, local or a hub id, with an offline-friendly error."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

import torch
import transformers
from huggingface_hub import constants as hub_constants
from transformers import PretrainedConfig

from transformers import AutoConfig

from .families import _AUTO_CLASSES, _resolve_task, _task_config_updates, model_family
from .names import _REAL_NAMES, _TINY_NAMES, MODEL_NAMES, SHAPE_PREFIX

# --------------------------------------------------------------------------------------------
# Pretrained folders (packaged, local, hub)
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for weight init without disturbing the caller's global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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
