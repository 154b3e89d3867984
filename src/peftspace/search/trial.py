"""One trial: train a sampled design's Plan at low fidelity and score it on dev.

`run_trial(row)` is a pure function of the stored row (its `config`, `plan` and `seed`): it fixes the
torch threads and every seed itself, loads the model and task by name (cached per process; a cached
model is deep-copied, so a trial never sees another's weights), and returns what the store keeps.
Any backend (in-process, spawned workers, Ray) therefore gives the same scores for the same row.

Caveat: floating-point reductions may be split differently across thread counts, so bit-identical
scores across backends need the same `threads` (the search sets it per worker and records it in the
trial's environment).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import platform
import socket
import sys
import time
from typing import Any

TRIAL_FORMAT = "peftspace.trial/1"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, available_cores() // max(1, workers))


def _row(row: Any) -> dict[str, Any]:
    return row if isinstance(row, dict) else dataclasses.asdict(row)


@functools.lru_cache(maxsize=4)
def _task(task_json: str):
    from ..data import load_task

    d = json.loads(task_json)
    spec = d.pop("spec")
    return load_task(spec, **d)


def load_trial_task(task: dict, dev_examples: int | None, test_examples: int | None):
    """The task with dev cut to its first `dev_examples` (the trial score) and test to `test_examples`."""
    full = _task(json.dumps(task, sort_keys=True))
    splits = dict(full.splits)
    if dev_examples:
        splits["dev"] = splits["dev"][:dev_examples]
    if test_examples:
        splits["test"] = splits["test"][:test_examples]
    return dataclasses.replace(full, splits=splits)


@functools.lru_cache(maxsize=4)
def _pristine(model: str, kind: str, num_labels: int, seed: int):
    from ..models import load_model

    return load_model(model, task=kind, num_labels=num_labels, seed=seed)


def fresh_model(model: str, task, seed: int):
    """`load_model(model, seed=seed)` for `task`'s head, from a per-process cache (deep copy)."""
    kind = {"classification": "classification", "regression": "regression"}.get(task.kind, "auto")
    return copy.deepcopy(_pristine(model, kind, max(task.num_labels, 1), seed))


def environment(threads: int) -> dict[str, Any]:
    import numpy
    import torch
    import transformers

    from .. import __version__

    return {"python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
            "pid": os.getpid(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "peftspace": __version__, "threads": threads,
            "cores": available_cores(), "device": "cuda" if torch.cuda.is_available() else "cpu"}


def train_config(config: dict, seed: int, threads: int):
    from ..train import TrainConfig

    return TrainConfig(**{**config["train"], "seed": seed, "threads": threads})


def run_trial(row: Any, threads: int | None = None) -> dict[str, Any]:
    """Train the row's Plan with the row's config and seed; return metrics, score, timings, environment.

    Raises whatever training raises; the caller records it as the trial's error."""
    import torch

    from ..plan import Plan
    from ..runtime import keep_freed_memory
    from ..train import train

    t0 = time.perf_counter()
    r = _row(row)
    cfg = r["config"]
    threads = int(threads or threads_per_worker(1))
    torch.set_num_threads(threads)
    keep_freed_memory()  # a worker trains step after step: reuse freed memory (peftspace.runtime)
    if not r.get("plan"):
        raise RuntimeError("trial has no plan (its design could not be sampled; see the trial's error)")
    plan = Plan.from_dict(r["plan"], where=f"trial {r.get('id')}")
    task = load_trial_task(cfg["task"], cfg.get("dev_examples"), cfg.get("test_examples"))
    seed = int(r["seed"])
    tc = train_config(cfg, seed, threads)
    t_load = time.perf_counter()
    model = fresh_model(cfg["model"], task, seed)
    rec = train(model, task, plan, budget=cfg.get("budget"), config=tc, progress=False)
    metric = rec["metric"]
    score = rec["dev"][metric] if rec["dev"] else None
    metrics = {"format": TRIAL_FORMAT, "metric": metric, "dev": rec["dev"], "test": rec["test"],
               "dev_examples": len(task.splits["dev"]), "test_examples": len(task.splits["test"]),
               "higher_is_better": metric not in ("loss", "mse"), "lr": rec["lr"], "steps": rec["steps"],
               "best_step": rec["best_step"], "train_loss_first": rec["train_loss_first"],
               "train_loss_last": rec["train_loss_last"], "percent": rec["percent"],
               "backbone_params": rec["backbone_params"], "plan_hash": rec["plan_hash"]}
    timings = {"total_seconds": time.perf_counter() - t0, "setup_seconds": t_load - t0,
               "train_seconds": rec["train_seconds"], "seconds_per_step": rec["seconds_per_step"],
               "peak_memory_mb": rec["peak_memory_mb"]}
    return {"metrics": metrics, "score": score, "trainable_params": rec["trainable_params"], "timings": timings,
            "environment": environment(threads)}
