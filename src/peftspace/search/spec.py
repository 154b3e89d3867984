"""What a search is: model, task, budget, start space, stages, low-fidelity trial settings, final comparison.

A `SearchSpec` is frozen data. It comes from the packaged default (`default_search.py`, what a bare
`peftspace search` runs), updated by a YAML search file, then by dotted overrides
(`--set trial.steps=40`), then by explicit command-line flags. Its `search_id` hashes only what
determines the trials (model, task, budget, start space, N, seed, trial settings), so changing the
final comparison or appending a stage keeps every finished trial.

Stages are Chen et al.'s (`peftspace.spaces.STAGES`) by name, optionally with their candidates
replaced, or new ones: `{name, component, candidates: [inline constraints]}`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TASK_ARGS = ("text_column", "text_pair_column", "label_column", "target_column", "train", "dev", "test",
             "max_examples")


class SearchSpecError(ValueError):
    """A search file, override or flag is malformed; the message names the key and what is valid."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    component: str
    candidates: tuple[str, ...]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "component": self.component, "candidates": list(self.candidates),
                "description": self.description}


@dataclass(frozen=True)
class TrialSettings:
    """Low-fidelity training of one sampled design (the scientific variable is the design; these are fixed)."""
    steps: int | None = 40  # optimizer steps (None: use epochs)
    epochs: float | None = None
    batch_size: int = 16
    lr: float = 5e-3  # a nuisance variable, recorded per trial
    lr_range: tuple[float, float] | None = None  # if set: lr drawn log-uniformly per sample index
    max_length: int = 48
    warmup: float = 0.06
    weight_decay: float = 0.1
    dev_examples: int | None = 200  # trials are scored on the first N dev examples (None: all)
    test_examples: int | None = 32  # train() always evaluates test; trials keep it small (never used to decide)
    eval_batch_size: int = 64


@dataclass(frozen=True)
class FinalSettings:
    """Full-fidelity training of the discovered design beside baselines (as `peftspace compare`)."""
    enabled: bool = True
    methods: tuple[str, ...] = ("lora", "mam", "bitfit")
    steps: int | None = 60
    epochs: float | None = None
    batch_size: int = 32
    max_length: int = 48
    seeds: int = 1
    lr: float | None = 5e-3  # every baseline; None = each preset's default (presets.DEFAULT_LR)
    design_lr: float | None = None  # the discovered design: None = the trials' lr


@dataclass(frozen=True)
class SearchSpec:
    model: str = "minilm"
    task: str = "vader-movie"
    task_args: tuple[tuple[str, Any], ...] = ()
    budget: str = "0.5%"
    space: str = "S0"
    samples: int = 2
    seed: int = 0
    stages: tuple[StageSpec, ...] = ()
    trial: TrialSettings = field(default_factory=TrialSettings)
    final: FinalSettings = field(default_factory=FinalSettings)
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 1:
            raise SearchSpecError(f"samples={self.samples!r}: need an integer ≥ 1 (designs per candidate)")
        if not self.stages:
            raise SearchSpecError("a search needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise SearchSpecError(f"stage names must be unique, got {names}")
        if self.trial.steps is None and self.trial.epochs is None:
            raise SearchSpecError("trial: give steps or epochs")
        for k, _ in self.task_args:
            if k not in TASK_ARGS:
                raise SearchSpecError(f"task_args: unknown key {k!r}; valid: {', '.join(TASK_ARGS)}")

    # ---- identity -------------------------------------------------------------------------------
    @property
    def task_dict(self) -> dict[str, Any]:
        return {"spec": self.task, **dict(self.task_args)}

    def identity(self) -> dict[str, Any]:
        """What the trials depend on (stages add their own part to each trial's config)."""
        return {"model": self.model, "task": self.task_dict, "budget": str(self.budget), "space": self.space,
                "samples": self.samples, "seed": self.seed, "trial": dataclasses.asdict(self.trial)}

    @property
    def search_id(self) -> str:
        body = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        h = hashlib.sha256(body.encode()).hexdigest()[:10]
        task = Path(self.task.split(":", 1)[-1]).stem if ":" in self.task else self.task
        return f"{self.name or self.model}:{task}:{h}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["task_args"] = dict(self.task_args)
        d["stages"] = [s.to_dict() for s in self.stages]
        return d

    # ---- per-index nuisance variables -----------------------------------------------------------
    def trial_seed(self, index: int) -> int:
        """Training seed of sample `index`: the same for every candidate of every stage (paired)."""
        return self.seed + index

    def trial_lr(self, index: int) -> float:
        if self.trial.lr_range is None:
            return float(self.trial.lr)
        lo, hi = self.trial.lr_range
        u = random.Random(f"lr:{self.seed}:{index}").random()
        return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))

    def sample_seed(self, stage_position: int) -> int:
        """Design-sampling seed of a stage: the same for every candidate of that stage."""
        return 1000 * self.seed + stage_position


# ---- building ---------------------------------------------------------------------------------------
def _library_stages() -> dict[str, StageSpec]:
    from ..spaces import STAGES

    return {s.name: StageSpec(s.name, s.component, tuple(s.candidates), s.description) for s in STAGES}


def _stage(item: Any) -> list[StageSpec]:
    lib = _library_stages()
    if isinstance(item, str):
        if item == "paper":
            return list(lib.values())
        if item not in lib:
            raise SearchSpecError(f"unknown stage {item!r}; library stages: {', '.join(lib)} (or 'paper' for all), "
                                  f"or a mapping {{name, component, candidates}}")
        return [lib[item]]
    if not isinstance(item, dict) or "name" not in item:
        raise SearchSpecError(f"stage {item!r}: expected a library stage name or a mapping with name, component, candidates")
    base = lib.get(item["name"])
    unknown = set(item) - {"name", "component", "candidates", "description"}
    if unknown:
        raise SearchSpecError(f"stage {item['name']!r}: unknown key(s) {sorted(unknown)}")
    comp = item.get("component", base.component if base else None)
    cands = item.get("candidates", list(base.candidates) if base else None)
    if not comp or not cands:
        raise SearchSpecError(f"stage {item['name']!r} is not a library stage: give component and candidates")
    if isinstance(cands, str):
        cands = [c.strip() for c in cands.split(";") if c.strip()]
    return [StageSpec(str(item["name"]), str(comp), tuple(str(c) for c in cands),
                      str(item.get("description", base.description if base else "")))]


def _settings(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise SearchSpecError(f"{where}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise SearchSpecError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    kw = dict(data)
    for k in ("methods", "lr_range"):
        if k in kw and kw[k] is not None:
            v = kw[k]
            kw[k] = tuple(x.strip() for x in v.split(",") if x.strip()) if isinstance(v, str) else tuple(v)
    if "lr_range" in kw and kw["lr_range"] is not None:
        kw["lr_range"] = tuple(float(x) for x in kw["lr_range"])
    for k in ("lr", "design_lr", "epochs", "warmup", "weight_decay"):
        if kw.get(k) is not None:
            kw[k] = float(kw[k])
    return cls(**kw)


SPEC_KEYS = ("name", "model", "task", "task_args", "budget", "space", "samples", "seed", "stages", "trial", "final")


def spec_from_dict(data: dict[str, Any]) -> SearchSpec:
    unknown = set(data) - set(SPEC_KEYS)
    if unknown:
        raise SearchSpecError(f"search file: unknown key(s) {sorted(unknown)}; valid: {', '.join(SPEC_KEYS)}")
    stages_raw = data.get("stages", "paper")
    stages_raw = [stages_raw] if isinstance(stages_raw, str) else list(stages_raw or [])
    stages = tuple(s for item in stages_raw for s in _stage(item))
    task_args = data.get("task_args") or {}
    if not isinstance(task_args, dict):
        raise SearchSpecError("task_args: expected a mapping (text_column: ..., label_column: ...)")
    return SearchSpec(
        model=str(data.get("model", "minilm")), task=str(data.get("task", "vader-movie")),
        task_args=tuple(sorted((str(k), v) for k, v in task_args.items() if v is not None)),
        budget=str(data.get("budget", "0.5%")), space=str(data.get("space", "S0")),
        samples=int(data.get("samples", 2)), seed=int(data.get("seed", 0)), stages=stages,
        trial=_settings(TrialSettings, data.get("trial"), "trial"),
        final=_settings(FinalSettings, data.get("final"), "final"), name=str(data.get("name") or ""))


def read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SearchSpecError(f"search file {str(path)!r} does not exist")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise SearchSpecError(f"{path}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    return data


def default_dict() -> dict[str, Any]:
    from .default_search import DEFAULT_SEARCH

    return yaml.safe_load(DEFAULT_SEARCH)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`; nested mappings (trial, final, task_args) merge key by key."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_override(data: dict[str, Any], text: str) -> dict[str, Any]:
    """One dotted override `trial.steps=40` (values parsed as YAML: 40, 1e-3, [a, b], null)."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise SearchSpecError(f"override {text!r}: expected key=value, e.g. trial.steps=40 or final.methods=lora,pa")
    parts = key.strip().split(".")
    if parts[0] not in SPEC_KEYS:
        raise SearchSpecError(f"override {text!r}: unknown key {parts[0]!r}; valid: {', '.join(SPEC_KEYS)}")
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str) and value.lower() == "none":
        value = None
    nested: Any = value
    for p in reversed(parts[1:]):
        nested = {p: nested}
    return merge(data, {parts[0]: nested})


def build_spec(file: str | Path | None = None, overrides: list[str] = (), **flags: Any) -> SearchSpec:
    """Default ← search file ← dotted overrides ← flags (flags of None are not given)."""
    data = default_dict()
    if file:
        user = read_file(file)
        if "stages" in user:  # a file's stage list replaces the default's, it does not merge
            data.pop("stages", None)
        data = merge(data, user)
    for o in overrides or ():
        data = apply_override(data, o)
    for k, v in flags.items():
        if v is None:
            continue
        parts = k.split(".")
        nested: Any = v
        for p in reversed(parts[1:]):
            nested = {p: nested}
        data = merge(data, {parts[0]: nested})
    return spec_from_dict(data)
