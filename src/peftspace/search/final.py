"""The end of a search: the discovered design at full fidelity beside baselines at the same budget.

Baselines go through `train_cli.compare` (the code of `peftspace compare`: same run directories, same
reuse of finished runs); the discovered design's Plan is trained by the same `train()` with the same
configuration and seeds, its runs cached the same way, and the rows come from `train_cli.summarize`.
Baselines use their presets' learning rates (as `peftspace compare` does) unless `final.lr` is set; the
design uses `final.design_lr`, by default the learning rate its trials were selected with.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

from .spec import SearchSpec
from .store import Trial
from .trial import available_cores

DESIGN_LABEL = "discovered"


def final_config(spec: SearchSpec, lr: float | None, threads: int | None = None):
    from ..train import TrainConfig

    f = spec.final
    kw: dict[str, Any] = dict(batch_size=f.batch_size, max_length=f.max_length, lr=lr,
                              threads=threads or available_cores())
    if f.steps:
        kw["steps"] = int(f.steps)
    else:
        kw["epochs"] = float(f.epochs or 1.0)
    return TrainConfig(**kw)


def _load_task(spec: SearchSpec):
    from ..data import load_task

    return load_task(spec.task, **dict(spec.task_args))


def _design_runs(spec: SearchSpec, trial: Trial, task_obj, seeds: list[int], out: Path,
                 log: Callable[[str], None], threads: int | None) -> list[dict]:
    from ..plan import Plan
    from ..train import train
    from ..train_cli import run_cached

    plan = Plan.from_dict(trial.plan, where=f"trial {trial.id}")
    lr = spec.final.design_lr if spec.final.design_lr is not None else float(trial.config["train"]["lr"])
    runs = []
    for seed in seeds:
        cfg = final_config(spec, lr, threads).replace(seed=seed)
        body = json.dumps({"model": spec.model, "task": spec.task_dict, "plan": plan.hash, "budget": spec.budget,
                           "config": {k: v for k, v in cfg.__dict__.items() if k != "threads"}},
                          sort_keys=True, default=str)
        key = hashlib.sha256(body.encode()).hexdigest()[:12]
        run_dir = out / "runs" / f"{DESIGN_LABEL}-{plan.hash[:8]}-seed{seed}-{key}"
        runs.append(run_cached(run_dir, f"{DESIGN_LABEL} design ({trial.design.get('key', '')})", seed, log,
                               lambda: train(spec.model, task_obj, plan, budget=spec.budget, config=cfg,
                                             out=run_dir, progress=sys.stderr.isatty())))
        runs[-1]["method_key"] = DESIGN_LABEL
    return runs


def run_final(spec: SearchSpec, trial: Trial, out: Path, log: Callable[[str], None] = print,
              threads: int | None = None) -> dict[str, Any]:
    """Train the design of `trial` and the baselines of `spec.final`; return rows (train_cli.summarize) and more."""
    from ..train_cli import compare, comparison_markdown, summarize

    out = Path(out)
    task_obj = _load_task(spec)
    seeds = list(range(spec.final.seeds))
    runs = _design_runs(spec, trial, task_obj, seeds, out, log, threads)
    methods = [m for m in spec.final.methods if m]
    if methods:
        runs += compare(spec.model, spec.task, spec.budget, methods, seeds, final_config(spec, spec.final.lr, threads), out,
                        log=log, task_obj=task_obj)
    rows = summarize(runs)
    metric = rows[0]["metric"] if rows else ""
    title = (f"{spec.model} on {task_obj.name}: {metric}, median over {len(seeds)} seed(s), budget {spec.budget}, "
             f"{final_config(spec, None).steps or final_config(spec, None).epochs} "
             f"{'steps' if spec.final.steps else 'epochs'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (out / "comparison.md").write_text(f"# {title}\n\n{comparison_markdown(rows)}\n", encoding="utf-8")
    lrs = {r["method_key"]: r["lr"] for r in runs}
    return {"rows": rows, "title": title, "out": str(out), "design_trial": trial.id,
            "design_key": trial.design.get("key"), "design_lr": lrs.get(DESIGN_LABEL), "lrs": lrs,
            "methods": [DESIGN_LABEL] + methods, "seeds": seeds,
            "config": {k: v for k, v in final_config(spec, spec.final.lr).__dict__.items() if k != "threads"}}
