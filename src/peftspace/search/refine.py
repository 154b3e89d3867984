"""Progressive refinement of a design space (Chen et al. 2023, §3): idempotent stages over a trial store.

Each stage is sample → run → collect → analyze:
  sample   refine the current space by each candidate constraint and draw N designs from every
           candidate space with the *same* sampling seed; sample i of every candidate is trained with
           the same seed (and lr), so candidates are compared pairwise. A space holding fewer than N
           designs repeats its designs under the remaining seeds; one holding none (e.g. a budget its
           strategies cannot meet) gets N failed trials carrying the reason.
  run      the trials go into the store (deterministic ids: `add` is idempotent) and a backend runs
           whatever is not final; finished trials are never run again.
  collect  the stage's stored trials, once every one is final (done or failed).
  analyze  `stats.compare_candidates` over the dev scores: mean, median, paired bootstrap 95% CI of
           each candidate's difference to the best; the best mean wins and is fixed for the next stage.
The decision is a function of the stored trials only, and is stored (meta) the first time it is made,
so an interrupted and resumed search decides exactly as an uninterrupted one.

Discovered design (the rule): after the last stage, the best-scoring done trial of the winning
candidate of the last stage that ran (ties: lowest sample index), i.e. the best sampled design of
the final space.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from .execute import FINAL, Backend
from .spec import SearchSpec, StageSpec
from .stats import compare_candidates
from .store import Trial, TrialStore, canonical_json

N_BOOT = 2000
BOOT_SEED = 0


def search_key(search: str) -> str:
    return f"search:{search}"


def final_key(search: str) -> str:
    return f"final:{search}"


def space_identity(space) -> dict[str, Any]:
    """What a space admits (its constraints and custom strategies), without its provenance name."""
    d = {"constraints": space.constraints()}
    if space.custom:
        d["custom"] = {n: [s.to_dict() for s in specs] for n, specs in space.custom}
    return d


def decision_key(search: str, stage: StageSpec, base) -> str:
    body = canonical_json({"component": stage.component, "candidates": list(stage.candidates),
                           "base": space_identity(base)})
    return f"decision:{search}:{stage.name}:{hashlib.sha256(body.encode()).hexdigest()[:10]}"


def _train_fields(spec: SearchSpec, index: int) -> dict[str, Any]:
    from ..train import TrainConfig

    t = spec.trial
    kw = dict(lr=spec.trial_lr(index), batch_size=t.batch_size, max_length=t.max_length, warmup=t.warmup,
              weight_decay=t.weight_decay, eval_batch_size=t.eval_batch_size)
    if t.steps:
        kw["steps"] = int(t.steps)
    else:
        kw["epochs"] = float(t.epochs)
    d = dataclasses.asdict(TrainConfig(**kw))
    d.pop("seed"), d.pop("threads")  # the seed is the trial's own column; threads are the backend's
    return d


def trial_config(spec: SearchSpec, space, index: int, sample_seed: int) -> dict[str, Any]:
    return {"model": spec.model, "task": spec.task_dict, "budget": str(spec.budget),
            "space": space_identity(space), "sample_seed": sample_seed, "train": _train_fields(spec, index),
            "dev_examples": spec.trial.dev_examples, "test_examples": spec.trial.test_examples}


def sample_candidate(space, arch: dict, n: int, seed: int, budget) -> tuple[list[tuple[Any, Any]], str | None]:
    """Up to `n` (design, plan) pairs of `space` and, when there are fewer than n, why."""
    from ..spec import SpecError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pairs = space.sample_plans(arch, n=n, seed=seed, budget=budget, allow_fewer=True)
        except (SpecError, ValueError) as e:
            return [], f"{type(e).__name__}: {e}"
    note = "; ".join(str(w.message) for w in caught) or None
    return pairs, note


def plan_stage(spec: SearchSpec, search: str, stage: StageSpec, position: int, base, arch: dict) -> list[Trial]:
    """The stage's trials (pending; failed ones for candidates that admit no design), N per candidate."""
    from ..spaces import design_record

    seed = spec.sample_seed(position)
    trials: list[Trial] = []
    for cand in stage.candidates:
        try:
            space = base.refine(cand)
        except ValueError as e:
            space, pairs, note = base, [], f"{type(e).__name__}: {e}"
        else:
            pairs, note = sample_candidate(space, arch, spec.samples, seed, spec.budget)
        for i in range(spec.samples):
            config = trial_config(spec, space, i, seed)
            if pairs:
                design, plan = pairs[i % len(pairs)]
                rec = design_record(design, plan)
                rec.pop("plan")
                rec["replicate"] = i >= len(pairs)  # the space had fewer designs than N
                t = Trial.new(search, stage.name, cand, i, spec.trial_seed(i), config, design=rec,
                              plan=plan.to_dict())
            else:
                t = Trial.new(search, stage.name, cand, i, spec.trial_seed(i), config)
                t.status, t.error = "failed", f"no design could be sampled: {note}"
            trials.append(t)
    return trials


def skip_reason(stage: StageSpec, base) -> str | None:
    """A strategy stage is skipped when, in every candidate space, every group whose strategies the
    candidate fixes is untuned (all its candidates would then sample the same designs)."""
    if stage.component != "strategies":
        return None
    groups: set[int] = set()
    for cand in stage.candidates:
        try:
            sp = base.refine(cand)
        except ValueError:
            return None
        changed = {k for k, v in sp.strategies if dict(base.strategies).get(k) != v}
        if isinstance(sp.tunable, str) or changed & set(sp.tunable):
            return None
        groups |= changed
    if not groups:
        return None
    names = "+".join(f"G{k}" for k in sorted(groups))
    return f"{names} not tuned in the current space (tunable={base.constraints()['tunable']})"


def decide(stage: StageSpec, base, trials: list[Trial], n: int) -> dict[str, Any]:
    """Compare the candidates by their trials' dev scores; the best mean wins."""
    by: dict[str, list[float | None]] = {c: [None] * n for c in stage.candidates}
    higher = True
    for t in trials:
        if t.candidate in by and 0 <= t.index < n and t.status == "done":
            by[t.candidate][t.index] = t.score
            if t.metrics and "higher_is_better" in t.metrics:
                higher = bool(t.metrics["higher_is_better"])
    rows = compare_candidates(by, paired=True, n_boot=N_BOOT, seed=BOOT_SEED, higher_is_better=higher)
    winner = rows[0]["name"] if rows and rows[0]["n"] else None
    for r in rows:
        r["chosen"] = r["name"] == winner
    metric = next((t.metrics.get("metric") for t in trials if t.metrics), None)
    return {"rows": rows, "winner": winner, "scores": by, "higher_is_better": higher, "metric": metric,
            "winner_space": space_identity(base.refine(winner)) if winner else space_identity(base)}


@dataclass
class StageOutcome:
    stage: StageSpec
    decision: dict[str, Any]
    space: Any  # the space after this stage
    reused: bool


class Refinement:
    """Walks the stages of `spec` over `store` with `backend`; `run()` returns the stage outcomes."""

    def __init__(self, spec: SearchSpec, store: TrialStore, backend: Backend, *, arch: dict | None = None,
                 progress: Any = None, log: Callable[[str], None] = print):
        self.spec, self.store, self.backend = spec, store, backend
        self.search = spec.search_id
        self.progress, self.log = progress, log
        self._arch = arch

    @property
    def arch(self) -> dict:
        if self._arch is None:
            from ..spaces import as_arch

            self._arch = as_arch(self.spec.model)
        return self._arch

    def _record(self, **update: Any) -> None:
        key = search_key(self.search)
        cur = self.store.get_meta(key) or {}
        cur.update({"search": self.search, "spec": self.spec.to_dict(), "updated": time.time()}, **update)
        self.store.set_meta(key, cur)

    def run(self) -> list[StageOutcome]:
        from ..spaces import parse_space

        space = parse_space(self.spec.space)
        outcomes: list[StageOutcome] = []
        self._record(stages=[], status="running")
        keys: list[str] = []
        for pos, stage in enumerate(self.spec.stages):
            key = decision_key(self.search, stage, space)
            stored = self.store.get_meta(key)
            if self.progress:
                self.progress.begin_stage(stage, pos, len(self.spec.stages), self.spec.samples)
            if stored is None:
                stored = self._run_stage(stage, pos, space)
                stored["key"] = key
                self.store.set_meta(key, stored)
                reused = False
            else:
                reused = True
            if stored.get("winner"):
                space = space.refine(stored["winner"])
            keys.append(key)
            self._record(stages=keys)
            outcomes.append(StageOutcome(stage, stored, space, reused))
            if self.progress:
                self.progress.end_stage(stage, stored, reused)
        self._record(stages=keys, space=space_identity(space), space_text=space.to_text(), status="searched")
        return outcomes

    def _run_stage(self, stage: StageSpec, pos: int, base) -> dict[str, Any]:
        common = {"stage": stage.name, "component": stage.component, "description": stage.description,
                  "position": pos, "candidates": list(stage.candidates), "base": space_identity(base),
                  "base_text": base.to_text(), "samples": self.spec.samples, "sample_seed": self.spec.sample_seed(pos)}
        reason = skip_reason(stage, base)
        if reason:
            return {**common, "skipped": reason, "rows": [], "winner": None, "trial_ids": [],
                    "winner_space": space_identity(base)}
        planned = plan_stage(self.spec, self.search, stage, pos, base, self.arch)
        stored = self.store.add_many(planned)
        ids = [t.id for t in stored]
        self.backend.run(self.store, ids, self.progress.on_update if self.progress else None)
        trials = [self.store.get(i) for i in ids]
        if any(t.status not in FINAL for t in trials):  # run() returns only when all are final
            raise RuntimeError(f"stage {stage.name}: trials still open after the backend returned")
        return {**common, **decide(stage, base, trials, self.spec.samples), "skipped": None, "trial_ids": ids}


def discovered_trial(store: TrialStore, decisions: list[dict[str, Any]]) -> Trial | None:
    """The best done trial of the winning candidate of the last stage that ran (ties: lowest index)."""
    for d in reversed([d for d in decisions if d]):
        if d.get("skipped") or not d.get("winner"):
            continue
        ts = [store.get(i) for i in d["trial_ids"]]
        ts = [t for t in ts if t and t.candidate == d["winner"] and t.status == "done" and t.score is not None
              and math.isfinite(t.score)]
        if not ts:
            continue
        sign = -1 if d.get("higher_is_better", True) else 1
        return min(ts, key=lambda t: (sign * t.score, t.index))
    return None


def discovered_trial_from_meta(store: TrialStore, record: dict[str, Any] | None) -> Trial | None:
    """The discovered design's trial of a stored search record (derived from its stage decisions)."""
    keys = (record or {}).get("stages") or []
    return discovered_trial(store, [store.get_meta(k) for k in keys])


def stage_scores(decision: dict[str, Any]) -> dict[str, list[float | None]]:
    """Scores per candidate in rank order (for EDF plots)."""
    scores = decision.get("scores") or {}
    return {r["name"]: scores.get(r["name"], []) for r in decision.get("rows", [])}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
