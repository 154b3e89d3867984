"""Shared test utilities: tiny models are built once per process and cloned per test."""

from __future__ import annotations

import copy
import functools

import torch

from peftspace.models import load_model

FAMILIES = ["tiny-bert", "tiny-roberta", "tiny-t5", "tiny-t5-gated", "tiny-bart", "tiny-mbart", "tiny-gpt2",
            "tiny-llama", "tiny-qwen2"]


@functools.lru_cache(maxsize=None)
def _cached(name: str, task: str):
    return load_model(name, task=task, seed=0)


def tiny(name: str, task: str = "auto"):
    """A fresh, eval-mode copy of a tiny model (same weights every time)."""
    m = copy.deepcopy(_cached(name, task))
    m.eval()
    return m


def batch(model, seed: int = 0, T: int = 7, B: int = 2, pad: bool = True) -> dict:
    """Inputs with a padded second row; decoder inputs for encoder-decoders."""
    g = torch.Generator().manual_seed(seed)
    vocab = min(model.config.vocab_size, 200)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[1, T - 2:] = 0
    eos = model.config.eos_token_id
    if model.config.is_encoder_decoder and eos is not None:  # seq2seq classification heads pool at <eos>
        ids[ids == eos] = 5
        ids[0, -1] = eos
        ids[1, T - 3 if pad else -1] = eos
    kw = {"input_ids": ids, "attention_mask": mask}
    if model.config.is_encoder_decoder and "ForSequenceClassification" not in type(model).__name__:
        kw["decoder_input_ids"] = torch.randint(5, vocab, (B, 4), generator=g)
    return kw


def logits(model, kw) -> torch.Tensor:
    with torch.no_grad():
        return model(**kw).logits


def perturb(model, std: float = 0.05) -> None:
    """Move every trainable tensor off its initialisation (so Δh is non-zero and heads differ)."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * std)


def graph_nodes(root) -> list:
    """Every node of an autograd graph below `root` (a grad_fn), each once."""
    seen, stack, out = set(), [root], []
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        stack.extend(f for f, _ in n.next_functions)
    return out
