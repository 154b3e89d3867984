"""Tasks, data loading and validation, batching, and metrics.

``load_task(spec, ...)`` returns a validated :class:`Task` with non-empty train/dev/test splits;
bad data fails here, before any training, with a :class:`DataError` that names the file, the row
(1-based, as a person counts lines, CSV/TSV header included), the column, and what would be valid.

Specs:

* a packaged task from :data:`TASK_NAMES` — ``vader-movie`` (the default), ``vader-tweets``,
  ``vader-nyt``, ``vader-amazon``, ``vader-movie-rating`` (regression), ``ding-de-en``
  (German→English generation); fetched from PyPI/Debian once by peftspace itself and cached
  (see :mod:`peftspace.data.packaged`, :mod:`peftspace.data.cache`);
* ``csv:PATH``, ``tsv:PATH``, ``jsonl:PATH`` or a bare path ending in .csv/.tsv/.jsonl, with
  ``text_column=`` and ``label_column=`` or ``target_column=``; one file is split 80/10/10 with
  ``seed``, or give ``train=``, ``dev=``, ``test=`` paths (then the spec may be just ``csv``,
  ``tsv``, ``jsonl`` or ``files``) — see :mod:`peftspace.data.files`;
* ``hf:NAME[:CONFIG]`` — Hugging Face ``datasets`` (optional, online) — :mod:`peftspace.data.hub`.

``max_examples`` keeps at most that many examples of *each* split (the first ones of the
deterministic order), for quick runs.
"""

from __future__ import annotations

from pathlib import Path

from .collate import (Collator, decode_generated, ensure_pad_token, make_collator, make_generation_inputs,
                      model_structure)
from .errors import DataError
from .files import FORMATS, load_files
from .metrics import compute_metrics
from .packaged import TASKS as _PACKAGED
from .task import KINDS, PRIMARY_METRIC, Example, Task

DEFAULT_TASK = "vader-movie"
TASK_NAMES: dict[str, str] = dict(_PACKAGED)
TASK_NAMES.update({
    "csv:PATH": "your CSV file (text_column=, label_column= or target_column=), split 80/10/10",
    "tsv:PATH": "your TSV file (unquoted tab-separated), as csv:",
    "jsonl:PATH": "your JSON Lines file, as csv:",
    "hf:NAME[:CONFIG]": "a Hugging Face dataset (needs the optional 'datasets' package and the hub)",
})

__all__ = [
    "Example", "Task", "DataError", "load_task", "compute_metrics", "make_collator", "make_generation_inputs",
    "decode_generated", "ensure_pad_token", "model_structure", "Collator", "TASK_NAMES", "DEFAULT_TASK",
    "KINDS", "PRIMARY_METRIC",
]


def load_task(spec: str = DEFAULT_TASK, *, text_column=None, text_pair_column=None, label_column=None,
              target_column=None, train=None, dev=None, test=None, kind=None, seed=0, max_examples=None) -> Task:
    """A validated task from `spec` (see the module docstring)."""
    spec = str(spec).strip()
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}")
    if spec in _PACKAGED:
        given = {k: v for k, v in dict(text_column=text_column, text_pair_column=text_pair_column,
                                        label_column=label_column, target_column=target_column,
                                        train=train, dev=dev, test=test).items() if v is not None}
        if given:
            raise DataError(f"{spec} is a packaged task; {', '.join(given)} apply to csv:/tsv:/jsonl:/hf: data only")
        if kind is not None and kind != _packaged_kind(spec):
            raise DataError(f"{spec} is a {_packaged_kind(spec)} task, not {kind}")
        from .packaged import load_packaged

        return load_packaged(spec, seed=seed, max_examples=max_examples)
    if spec.startswith("hf:"):
        rest = spec[3:]
        name, _, config = rest.partition(":")
        if not name:
            raise DataError("hf: needs a dataset name, e.g. hf:glue:sst2")
        if train or dev or test:
            raise DataError("train=/dev=/test= apply to files; hf: datasets bring their own splits")
        from .hub import load_hub

        return load_hub(name, config or None, text_column=text_column, text_pair_column=text_pair_column,
                        label_column=label_column, target_column=target_column, kind=kind, seed=seed,
                        max_examples=max_examples)
    fmt, _, path = spec.partition(":")
    cols = dict(text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                target_column=target_column, kind=kind, seed=seed, max_examples=max_examples)
    if fmt in FORMATS or fmt == "files":
        declared = fmt if fmt in FORMATS else None
        if path:
            return load_files(path, declared, **cols)
        if train is None:
            raise DataError(f"{spec!r}: give a path ({fmt}:PATH) or train= (plus optional dev=, test=)")
        return load_files(None, declared, train=train, dev=dev, test=test, **cols)
    if Path(spec).suffix.lower() in (".csv", ".tsv", ".tab", ".jsonl", ".ndjson"):
        return load_files(spec, None, **cols)
    if not spec and train is not None:
        return load_files(None, None, train=train, dev=dev, test=test, **cols)
    raise DataError(f"unknown task spec {spec!r}; valid: {', '.join(TASK_NAMES)} (or a path ending in "
                    f".csv, .tsv or .jsonl)")


def _packaged_kind(name: str) -> str:
    return _PACKAGED[name].split(":", 1)[0]
