"""Batches of examples → padded tensors for the three model families.

``make_collator(tokenizer, task, model_family)`` returns a picklable callable
``list[Example] -> dict[str, torch.Tensor]`` that pads to the longest sequence in the batch
(dynamic padding):

* classification / regression, any family: ``tokenizer(text, text_pair, truncation=True,
  max_length=...)`` plus ``labels`` (int64 class ids, or float32 values for regression). This is
  what ``AutoModelForSequenceClassification`` of an encoder (BERT, RoBERTa), an encoder-decoder
  (BART, T5) or a decoder (LLaMA, GPT-2) takes.
* generation, decoder-only: ``prompt + target + eos`` as one sequence, right-padded; ``labels``
  equal ``input_ids`` on the target and eos and are -100 on the prompt and the padding, so the
  loss is on the target alone. The prompt is the example's text (``text + "\\n" + text_pair`` for
  pairs); when it ends in ":" the target follows after a space, when it ends in neither ":" nor
  whitespace a newline is added to the prompt. Long sequences: the target is cut to
  ``max_target_length`` tokens (eos included, and kept only if the whole target fits), then the
  prompt loses tokens from its start (a leading BOS is kept) so the total fits ``max_length``; the
  target keeps at least half of ``max_length``.
* generation, encoder-decoder: the prompt as encoder input, ``labels`` = the tokenized target
  (``max_target_length``), padding → -100; the model shifts labels into decoder inputs itself.

``make_generation_inputs(tokenizer, examples, model_family, max_length)`` gives what ``generate()``
takes: for decoder-only models the prompts exactly as in training, *left*-padded (so every row ends
where generation starts); for encoder-decoder models the plain padded encoder inputs.
``decode_generated`` turns ``generate()``'s output back into strings.

Pad token: decoder tokenizers often have none (GPT-2, LLaMA). ``ensure_pad_token(tokenizer)``
sets ``pad_token = eos_token`` when it is missing — it changes the tokenizer you pass — and both
makers call it for decoder-only models. Padding positions are masked by ``attention_mask``
and -100 labels, so pad == eos is harmless for training; a sequence-classification head finds the
last non-pad token, so give the model ``config.pad_token_id = tokenizer.pad_token_id`` too.
"""

from __future__ import annotations

from typing import Sequence

from .errors import DataError
from .task import Example, Task

ENCODER, DECODER, ENCODER_DECODER = "encoder", "decoder", "encoder-decoder"
FAMILY_ALIASES = {
    ENCODER: ("encoder", "encoder-only", "bert", "roberta", "distilbert", "albert", "electra", "deberta",
              "deberta-v2", "xlm-roberta", "mpnet", "minilm"),
    DECODER: ("decoder", "decoder-only", "causal", "causal-lm", "clm", "llama", "gpt2", "gpt-neox", "gptj",
              "gpt-j", "mistral", "qwen2", "qwen3", "opt", "phi", "gemma", "smollm", "smollm2"),
    ENCODER_DECODER: ("encoder-decoder", "seq2seq", "t5", "mt5", "bart", "mbart", "pegasus", "marian"),
}
_ALIAS = {a: fam for fam, names in FAMILY_ALIASES.items() for a in names}


def model_structure(model_family: str) -> str:
    """'encoder', 'decoder' or 'encoder-decoder' for a family name or a model_type ("llama", "t5")."""
    key = str(model_family).strip().lower().replace("_", "-")
    if key in _ALIAS:
        return _ALIAS[key]
    raise DataError(f"unknown model family {model_family!r}; valid: {', '.join(sorted(_ALIAS))}")


def eos_token_id(tokenizer) -> int:
    """The token that ends a target: eos, else sep (BERT-style tokenizers)."""
    for attr in ("eos_token_id", "sep_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    raise DataError(f"{type(tokenizer).__name__} has neither an eos nor a sep token to end targets with")


def ensure_pad_token(tokenizer) -> int:
    """The pad token id; sets ``tokenizer.pad_token = tokenizer.eos_token`` when there is none."""
    if getattr(tokenizer, "pad_token_id", None) is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise DataError(f"{type(tokenizer).__name__} has no pad token and no eos token to use as one")
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)


def prompt_text(example: Example) -> str:
    return example.text if example.text_pair is None else f"{example.text}\n{example.text_pair}"


def _split_prompt_target(prompt: str, target: str) -> tuple[str, str]:
    if not prompt or prompt[-1].isspace():
        return prompt, target
    if prompt.endswith(":"):
        return prompt, " " + target
    return prompt + "\n", target


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _prompt_ids(tokenizer, prompt: str, eos: int) -> list[int]:
    ids = _ids(tokenizer, prompt, True)
    if len(ids) > 1 and ids[-1] == eos:  # tokenizers that append eos/sep: the prompt must not end the text
        ids = ids[:-1]
    return ids


def _keep_tail(ids: list[int], n: int, bos) -> list[int]:
    """The last n tokens of a prompt, keeping a leading BOS."""
    if len(ids) <= n:
        return ids
    if n <= 0:
        return []
    if bos is not None and ids and ids[0] == bos and n > 1:
        return [ids[0]] + ids[len(ids) - (n - 1) :]
    return ids[len(ids) - n :]


def _pad(rows: list[list[int]], value: int, left: bool) -> list[list[int]]:
    width = max(len(r) for r in rows)
    return [([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows]


def _check_examples(examples: Sequence[Example]) -> None:
    if not examples:
        raise DataError("an empty batch")
    pairs = {e.text_pair is not None for e in examples}
    if len(pairs) > 1:
        raise DataError("a batch mixes examples with and without text_pair")


class Collator:
    """``list[Example] -> dict[str, Tensor]``; see the module docstring. Picklable for DataLoader workers."""

    def __init__(self, tokenizer, task: Task, model_family: str, max_length: int = 64, max_target_length: int = 64):
        self.tokenizer = tokenizer
        self.kind = task.kind
        self.structure = model_structure(model_family)
        self.max_length = int(max_length)
        self.max_target_length = int(max_target_length)
        if self.kind == "generation" and self.structure == ENCODER:
            raise DataError(f"task {task.name!r} is a generation task; an encoder-only model ({model_family}) cannot "
                            f"generate: use a decoder or encoder-decoder model")
        if self.max_length < 2 or self.max_target_length < 1:
            raise DataError(f"max_length must be >= 2 and max_target_length >= 1 (got {max_length}, {max_target_length})")
        if self.structure == DECODER:
            ensure_pad_token(tokenizer)

    def __call__(self, examples: Sequence[Example]) -> dict:
        _check_examples(examples)
        if self.kind in ("classification", "regression"):
            return self._classify(examples)
        if self.structure == DECODER:
            return self._causal(examples)
        return self._seq2seq(examples)

    def _classify(self, examples):
        import torch

        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
        batch = dict(self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                                    return_tensors="pt"))
        if any(e.label is None for e in examples):
            raise DataError("an example without a label in a classification/regression batch")
        dtype = torch.long if self.kind == "classification" else torch.float32
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=dtype)
        return batch

    def _causal(self, examples):
        import torch

        tok = self.tokenizer
        eos, pad = eos_token_id(tok), int(tok.pad_token_id)
        bos = getattr(tok, "bos_token_id", None)
        ids, labels = [], []
        for e in examples:
            if e.target is None:
                raise DataError("an example without a target in a generation batch")
            prompt, target = _split_prompt_target(prompt_text(e), e.target)
            p = _prompt_ids(tok, prompt, eos)
            t = _ids(tok, target, False) + [eos]
            if len(t) > self.max_target_length:
                t = t[: self.max_target_length]  # cut: no eos, the target did not end here
            if len(p) + len(t) > self.max_length:
                t = t[: max(self.max_length - len(p), self.max_length // 2)]
                p = _keep_tail(p, self.max_length - len(t), bos)
            ids.append(p + t)
            labels.append([-100] * len(p) + t)
        mask = [[1] * len(r) for r in ids]
        return {
            "input_ids": torch.tensor(_pad(ids, pad, left=False), dtype=torch.long),
            "attention_mask": torch.tensor(_pad(mask, 0, left=False), dtype=torch.long),
            "labels": torch.tensor(_pad(labels, -100, left=False), dtype=torch.long),
        }

    def _seq2seq(self, examples):
        if any(e.target is None for e in examples):
            raise DataError("an example without a target in a generation batch")
        batch = dict(self.tokenizer([prompt_text(e) for e in examples], truncation=True, max_length=self.max_length,
                                    padding=True, return_tensors="pt"))
        tgt = self.tokenizer(text_target=[e.target for e in examples], truncation=True,
                             max_length=self.max_target_length, padding=True, return_tensors="pt")
        labels = tgt["input_ids"].clone()
        labels[tgt["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return batch


def make_collator(tokenizer, task: Task, model_family: str, max_length: int = 64, max_target_length: int = 64) -> Collator:
    """A dynamic-padding collator for `task` on a model of `model_family` (see the module docstring)."""
    return Collator(tokenizer, task, model_family, max_length=max_length, max_target_length=max_target_length)


def make_generation_inputs(tokenizer, examples: Sequence[Example], model_family: str, max_length: int = 64) -> dict:
    """Inputs for ``model.generate(**inputs)``: left-padded prompts (decoder-only; the same prompt
    tokens as in training) or plain padded encoder inputs (encoder-decoder)."""
    import torch

    _check_examples(examples)
    structure = model_structure(model_family)
    if structure == ENCODER:
        raise DataError(f"an encoder-only model ({model_family}) cannot generate")
    if structure == ENCODER_DECODER:
        return dict(tokenizer([prompt_text(e) for e in examples], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt"))
    pad = ensure_pad_token(tokenizer)
    eos = eos_token_id(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    rows = []
    for e in examples:
        prompt, _ = _split_prompt_target(prompt_text(e), "")
        rows.append(_keep_tail(_prompt_ids(tokenizer, prompt, eos), max_length, bos))
    mask = [[1] * len(r) for r in rows]
    return {
        "input_ids": torch.tensor(_pad(rows, pad, left=True), dtype=torch.long),
        "attention_mask": torch.tensor(_pad(mask, 0, left=True), dtype=torch.long),
    }


def decode_generated(tokenizer, sequences, inputs: dict, model_family: str) -> list[str]:
    """Strings from ``generate()`` output: drops the (left-padded) prompt of decoder-only models,
    skips special tokens, strips whitespace."""
    if model_structure(model_family) == DECODER:
        sequences = sequences[:, inputs["input_ids"].shape[1] :]
    return [s.strip() for s in tokenizer.batch_decode(sequences, skip_special_tokens=True)]
