"""``hf:NAME[:CONFIG]`` tasks through the optional Hugging Face ``datasets`` package (online).

Splits: ``train``; ``validation`` (or ``dev``/``valid``) → dev; ``test`` → test. A test split
without labels (GLUE's test labels are -1) or a missing one is replaced by half of dev (seeded), a
missing dev by 10% of train. Columns: ``text_column`` etc. as for files; when not given, the usual
names are tried (sentence/text/premise/question…, label). Class names come from a ``ClassLabel``
feature when there is one.
"""

from __future__ import annotations

import math
import random

from .errors import DataError
from .files import infer_kind, sort_label_names
from .task import KINDS, PRIMARY_METRIC, Example, Task, cap, check_nonempty, counts, split_examples

_TEXT_GUESSES = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
                 ("question1", "question2"), ("question", "passage"), ("sentence", None), ("text", None),
                 ("document", None), ("article", None), ("content", None), ("review", None))
_TARGET_GUESSES = ("summary", "highlights", "target", "response", "answer", "output")
_DEV_NAMES = ("validation", "dev", "valid", "val")


def load_hub(name: str, config: str | None, *, text_column=None, text_pair_column=None, label_column=None,
             target_column=None, kind=None, seed=0, max_examples=None) -> Task:
    try:
        import datasets  # optional dependency
    except ImportError:
        raise DataError("hf: tasks need the optional 'datasets' package (pip install 'peftspace[hub]') and a "
                        "connection to the Hugging Face hub; offline, export the data to CSV/JSONL and use csv:/jsonl:") from None
    spec = f"hf:{name}" + (f":{config}" if config else "")
    try:
        dd = datasets.load_dataset(name, config) if config else datasets.load_dataset(name)
    except Exception as e:  # the hub library raises many kinds
        raise DataError(f"{spec}: could not load ({type(e).__name__}: {e})") from None
    if kind is not None and kind not in KINDS:
        raise DataError(f"kind={kind!r} is not valid; valid: {', '.join(KINDS)}")
    available = list(dd.keys())
    if "train" not in dd:
        raise DataError(f"{spec}: no 'train' split; splits present: {', '.join(available)}")
    train_ds = dd["train"]
    columns = list(train_ds.column_names)

    if text_column is None:
        for a, b in _TEXT_GUESSES:
            if a in columns and (b is None or b in columns):
                text_column, text_pair_column = a, (text_pair_column or b)
                break
        else:
            raise DataError(f"{spec}: give text_column=; columns present: {', '.join(columns)}")
    if label_column is None and target_column is None and kind != "generation":
        if "label" in columns:
            label_column = "label"
        else:
            target_column = next((c for c in _TARGET_GUESSES if c in columns), None)
    if label_column is None and target_column is None:
        raise DataError(f"{spec}: give label_column= or target_column=; columns present: {', '.join(columns)}")
    for arg, col in (("text_column", text_column), ("text_pair_column", text_pair_column),
                     ("label_column", label_column), ("target_column", target_column)):
        if col is not None and col not in columns:
            raise DataError(f"{spec}: no column {col!r} (given as {arg}=); columns present: {', '.join(columns)}")

    names = None
    feat = train_ds.features.get(label_column) if label_column else None
    if feat is not None and getattr(feat, "names", None):
        names = list(feat.names)
        kind = kind or "classification"
    if kind is None:
        kind, _ = infer_kind([str(v) for v in train_ds[label_column]], target_column) if label_column else ("generation", "")

    def convert(ds, split_name) -> list[Example] | None:
        out = []
        index = None
        if kind == "classification" and names is None:
            index = {n: i for i, n in enumerate(labels)}
        for row, rec in enumerate(ds, start=1):
            loc = f"{spec}, split {split_name!r}, row {row}"
            text = str(rec[text_column] or "").strip()
            if not text:
                raise DataError(f"{loc}, column {text_column!r}: empty text")
            pair = str(rec[text_pair_column]).strip() if text_pair_column else None
            y, target = None, None
            if kind == "classification":
                v = rec[label_column]
                if names is not None:
                    if v is None or int(v) < 0:
                        return None  # unlabeled split (GLUE test)
                    y = int(v)
                else:
                    if str(v) not in index:
                        raise DataError(f"{loc}, column {label_column!r}: label {v!r} does not occur in train; "
                                        f"valid labels: {', '.join(map(repr, labels[:50]))}")
                    y = index[str(v)]
            elif kind == "regression":
                try:
                    y = float(rec[label_column])
                except (TypeError, ValueError):
                    raise DataError(f"{loc}, column {label_column!r}: {rec[label_column]!r} is not a number") from None
                if not math.isfinite(y):
                    return None
            else:
                target = str(rec[target_column] or "").strip()
                if not target:
                    raise DataError(f"{loc}, column {target_column!r}: empty target")
            out.append(Example(text=text, text_pair=pair, label=y, target=target))
        return out

    labels = names
    if kind == "classification" and names is None:
        labels = sort_label_names(str(v) for v in train_ds[label_column])
    splits = {"train": convert(train_ds, "train")}
    dev_name = next((n for n in _DEV_NAMES if n in dd), None)
    dev = convert(dd[dev_name], dev_name) if dev_name else None
    test = convert(dd["test"], "test") if "test" in dd else None
    how = {"train": "train"}
    rng = random.Random(seed)
    if dev is None:
        carved = split_examples(splits["train"], kind, seed, fractions=(0.9, 0.1, 0.0))
        splits["train"], dev = carved["train"], carved["dev"]
        how["dev"] = "10% of train"
    else:
        how["dev"] = dev_name
    if test is None:
        dev = list(dev)
        rng.shuffle(dev)
        half = len(dev) // 2
        dev, test = dev[:half], dev[half:]
        how["dev"] += " (half)"
        how["test"] = f"other half of {how['dev'].split(' ')[0]} (test split missing or unlabeled)"
    else:
        how["test"] = "test"
    splits["dev"], splits["test"] = dev, test
    check_nonempty(splits, {s: f"{spec} ({how.get(s, s)})" for s in ("train", "dev", "test")})
    splits = cap(splits, max_examples)
    source = {"type": "hf", "dataset": name, "config": config, "splits_from": how,
              "columns": {k: v for k, v in dict(text_column=text_column, text_pair_column=text_pair_column,
                                               label_column=label_column, target_column=target_column).items() if v},
              "seed": seed, "max_examples": max_examples, "counts": counts(splits),
              "fingerprint": getattr(train_ds, "_fingerprint", None)}
    task_name = name.split("/")[-1] + (f"-{config}" if config else "")
    return Task(name=task_name, kind=kind, splits=splits, labels=labels if kind == "classification" else None,
                metric=PRIMARY_METRIC[kind], source=source)
