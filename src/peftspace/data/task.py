"""`Example` and `Task`, and the deterministic train/dev/test split every loader shares."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable

from .errors import DataError

KINDS = ("classification", "regression", "generation")
SPLITS = ("train", "dev", "test")
PRIMARY_METRIC = {"classification": "accuracy", "regression": "pearson", "generation": "bleu"}


@dataclass(frozen=True)
class Example:
    """One input. `label` is the class id (classification) or a float (regression); `target` the
    reference output text (generation)."""

    text: str
    text_pair: str | None = None
    label: int | float | None = None
    target: str | None = None

    def to_json(self) -> dict:
        return {"text": self.text, "text_pair": self.text_pair, "label": self.label, "target": self.target}

    @classmethod
    def from_json(cls, d: dict) -> "Example":
        return cls(text=d["text"], text_pair=d.get("text_pair"), label=d.get("label"), target=d.get("target"))


@dataclass(frozen=True)
class Task:
    """A prepared, validated task: three non-empty splits plus what a trainer needs to know."""

    name: str
    kind: str  # "classification" | "regression" | "generation"
    splits: dict[str, list[Example]]  # "train", "dev", "test"
    labels: list[str] | None  # class names (classification), index = label id
    metric: str  # primary metric key for model selection
    source: dict = field(default_factory=dict)  # provenance: files, checksums, split seed, counts

    @property
    def num_labels(self) -> int:
        """Classes for classification, 1 for regression, 0 for generation."""
        if self.kind == "classification":
            return len(self.labels or ())
        return 1 if self.kind == "regression" else 0

    def __repr__(self) -> str:  # the default repr would print every example
        counts = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"Task(name={self.name!r}, kind={self.kind!r}, {counts}, labels={self.labels!r}, metric={self.metric!r})"


def split_examples(
    examples: list[Example], kind: str, seed: int, fractions=(0.8, 0.1, 0.1)
) -> dict[str, list[Example]]:
    """Deterministic split (a function of `seed` and the input order only).

    Classification is stratified: examples are shuffled, grouped by label, and dealt to
    train/dev/test by position in a repeating pattern of 10 (8 train, 1 dev, 1 test for 80/10/10), so
    every class has about the same share in each split; a class that would be missing from train
    gets one of its examples moved there. Other kinds: shuffle, then cut by counts (dev and test get
    round(n·fraction) each, train the rest).
    """
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    n = len(order)
    ftrain, fdev, ftest = fractions
    if kind == "classification":
        by_label: dict = {}
        for i in order:
            by_label.setdefault(examples[i].label, []).append(i)
        dealt = [i for lab in sorted(by_label, key=repr) for i in by_label[lab]]
        n_dev, n_test = round(10 * fdev), round(10 * ftest)
        pattern = ["train"] * (10 - n_dev - n_test) + ["dev"] * n_dev + ["test"] * n_test
        buckets: dict[str, list[int]] = {s: [] for s in SPLITS}
        for pos, i in enumerate(dealt):
            buckets[pattern[pos % 10]].append(i)
        in_train = {examples[i].label for i in buckets["train"]}
        for s in ("dev", "test"):
            for i in list(buckets[s]):
                if examples[i].label not in in_train:
                    buckets[s].remove(i)
                    buckets["train"].append(i)
                    in_train.add(examples[i].label)
        for s in SPLITS:
            rng.shuffle(buckets[s])
        return {s: [examples[i] for i in buckets[s]] for s in SPLITS}
    n_dev, n_test = round(n * fdev), round(n * ftest)
    n_train = n - n_dev - n_test
    return {
        "train": [examples[i] for i in order[:n_train]],
        "dev": [examples[i] for i in order[n_train : n_train + n_dev]],
        "test": [examples[i] for i in order[n_train + n_dev :]],
    }


def cap(splits: dict[str, list[Example]], max_examples: int | None) -> dict[str, list[Example]]:
    """Keep at most `max_examples` of each split (the first ones of its deterministic order)."""
    if max_examples is None:
        return splits
    if int(max_examples) < 1:
        raise DataError(f"max_examples must be a positive integer, got {max_examples!r}")
    return {k: v[: int(max_examples)] for k, v in splits.items()}


def check_nonempty(splits: dict[str, list[Example]], where_: dict[str, str]) -> None:
    for s in SPLITS:
        if not splits.get(s):
            raise DataError(
                f"{where_.get(s, s)}: split {s!r} is empty; every task needs at least one example in "
                f"each of train, dev and test (give more rows, or separate train=/dev=/test= files)"
            )


def counts(splits: dict[str, Iterable]) -> dict[str, int]:
    return {k: len(list(v)) for k, v in splits.items()}
