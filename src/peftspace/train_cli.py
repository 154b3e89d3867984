"""`peftspace train` and `peftspace compare`: a Plan on real data, and He et al. Table 2 for your task."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
from pathlib import Path

from .spec import SpecError
from .train import TrainConfig

COMPARE_METHODS = ["full", "bitfit", "prompt", "prefix", "lora", "adapter", "pa", "mam"]


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="vader-movie",
                   help="vader-movie (default), vader-tweets/-nyt/-amazon, vader-movie-rating, ding-de-en (generation), "
                        "csv:PATH, tsv:PATH, jsonl:PATH or hf:NAME[:CONFIG]")
    p.add_argument("--text-column")
    p.add_argument("--text-pair-column")
    p.add_argument("--label-column")
    p.add_argument("--target-column", help="target text column (generation tasks)")
    p.add_argument("--train-file", help="separate train/dev/test files instead of one file split 80/10/10")
    p.add_argument("--dev-file")
    p.add_argument("--test-file")
    p.add_argument("--max-examples", type=int, help="keep at most this many examples per split (quick runs)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, help="training epochs (default 3)")
    g.add_argument("--steps", type=int, help="optimizer steps (overrides epochs)")
    p.add_argument("--lr", type=float, help="learning rate (default: a preset's own, see presets.DEFAULT_LR; a "
                   "design or mixed plan: each Δh at its form's rate, presets.FORM_LR)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64, help="max input tokens")
    p.add_argument("--eval-every", type=int, help="evaluate on dev every N steps (default: each epoch)")
    p.add_argument("--max-eval", type=int, help="evaluate on at most N dev/test examples")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--warmup", type=float, default=0.06, help="fraction of steps with linear warm-up")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--num-beams", type=int, default=4, help="beams for generation tasks")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def config_from_args(args, seed: int | None = None) -> TrainConfig:
    kw = dict(batch_size=args.batch_size, max_length=args.max_length, eval_every=args.eval_every,
              max_eval_examples=args.max_eval, label_smoothing=args.label_smoothing, warmup=args.warmup,
              weight_decay=args.weight_decay, num_beams=args.num_beams, threads=args.threads, lr=args.lr,
              seed=args.seed if seed is None else seed)
    if args.steps:
        kw["steps"] = args.steps
    if args.epochs:
        kw["epochs"] = args.epochs
    return TrainConfig(**kw)


def task_from_args(args):
    from .data import load_task

    return load_task(args.task, text_column=args.text_column, text_pair_column=args.text_pair_column,
                     label_column=args.label_column, target_column=args.target_column, train=args.train_file,
                     dev=args.dev_file, test=args.test_file, max_examples=args.max_examples)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the CLI reports what matters; HF's load reports are noise here
    hf_logging.disable_progress_bar()


def _fmt_metrics(d: dict | None) -> str:
    return "-" if not d else ", ".join(f"{k} {v:.4f}" for k, v in d.items())


def cmd_train(args) -> int:
    from rich.console import Console

    from .plan import Plan
    from .train import train

    _quiet_transformers()
    method = args.method
    if args.plan:
        method = Plan.from_json(Path(args.plan).read_text(encoding="utf-8"), where=args.plan)
    elif method and os.path.isfile(method):
        from .presets import load_method_file

        method = list(load_method_file(method)[0])
    task = task_from_args(args)
    rec = train(args.model, task, method, budget=args.budget, config=config_from_args(args), out=args.out,
                progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps({k: v for k, v in rec.items() if k != "history"}, indent=2))
        return 0
    c = Console(width=None if sys.stdout.isatty() else 160)
    c.print(f"[bold]{rec['method']}[/] on {rec['task']} with {rec['model']}")
    c.print(f"  dev:  {_fmt_metrics(rec['dev'])}   (best at step {rec['best_step']} of {rec['steps']})")
    c.print(f"  test: {_fmt_metrics(rec['test'])}")
    c.print(f"  trainable {rec['trainable_params']:,} = {rec['percent']:.3f}% of {rec['backbone_params']:,}; "
            f"{rec['seconds_per_step']:.3f} s/step; peak memory {rec['peak_memory_mb']:.0f} MB")
    if args.out:
        c.print(f"  saved: {args.out}/record.json, metrics.jsonl" + (", adapter/" if rec["plan"] else ""))
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train and evaluate a method or plan on a task",
                       description="Train a PEFT method (or a plan, or full fine-tuning with --method full) and "
                       "evaluate on dev and test. Defaults: minilm on vader-movie, He et al. Table 8 hyperparameters.",
                       formatter_class=_Help)
    p.add_argument("--model", default="minilm", help="packaged name (minilm, smollm2), a local path or a hub id")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--method", default="lora", help="preset[:k=v,...], 'full', or a YAML/JSON spec file")
    src.add_argument("--plan", help="a plan JSON file (peftspace plan --out / sample --json / search)")
    p.add_argument("--budget", help="size the method to this budget: '0.5%%' or a parameter count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for record.json, metrics.jsonl and the adapter")
    p.add_argument("--json", action="store_true", help="print the run record as JSON")
    _add_data_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train)


# ---- compare --------------------------------------------------------------------------------------
def _run_key(model: str, task: str, method: str, budget, config: TrainConfig) -> str:
    body = json.dumps({"model": model, "task": task, "method": method, "budget": budget,
                       "config": config.__dict__}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:12]


def compare(model: str, task: str, budget, methods: list[str], seeds: list[int], config: TrainConfig,
            out: str | os.PathLike, log=print, task_obj=None) -> list[dict]:
    """Train every method at the same budget over seeds; finished runs (same key) are reused."""
    from .train import train

    out = Path(out)
    runs: list[dict] = []
    for method in methods:
        label, run_method, b = method, method, None if method in ("full", "bitfit") else budget  # BitFit: natural size
        if method.endswith(".json"):  # a saved plan, e.g. the design a search discovered (its adapter/plan.json)
            run_method = _load_plan_file(method)
            label, b = f"design-{run_method.hash[:8]}", None  # sized already
        for seed in seeds:
            cfg = config.replace(seed=seed)
            key = _run_key(model, task, label, b, cfg)
            run_dir = out / "runs" / f"{label.replace(':', '_').replace('/', '_')}-seed{seed}-{key}"
            runs.append(run_cached(run_dir, label, seed, log, lambda: train(
                model, task_obj if task_obj is not None else task, run_method, budget=b, config=cfg, out=run_dir,
                progress=sys.stderr.isatty())))
    return runs


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help text does not state it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _load_plan_file(path: str):
    from .plan import Plan

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{path}: no such plan file (pass a plan JSON, e.g. a search's "
                        "final-*/runs/discovered-*/adapter/plan.json, or design:SPACE)")
    return Plan.from_json(p.read_text(encoding="utf-8"), where=path)


def run_cached(run_dir: Path, label: str, seed: int, log, run) -> dict:
    """The record of `run_dir` if that run finished before (never retrained), else `run()`'s."""
    rec_file = run_dir / "record.json"
    if rec_file.is_file():
        rec = json.loads(rec_file.read_text(encoding="utf-8"))
        log(f"reused {label} seed {seed}: dev {rec['dev']}")
    else:
        log(f"training {label} seed {seed} ...")
        rec = run()
    rec["method_key"] = label
    return rec


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["method_key"], []).append(r)
    for method, rs in by.items():
        metric = rs[0]["metric"]
        dev = [r["dev"][metric] for r in rs]
        test = [r["test"][metric] for r in rs]
        rows.append({"method": method, "metric": metric, "n": len(rs), "percent": rs[0]["percent"],
                     "trainable_params": rs[0]["trainable_params"],
                     "median": statistics.median(dev), "min": min(dev), "max": max(dev),
                     "test_median": statistics.median(test), "test_min": min(test), "test_max": max(test),
                     "seconds_per_step": statistics.median(r["seconds_per_step"] for r in rs)})
    return rows


def comparison_table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("method (# params)", "dev median", "spread", "test median", "s/step"):
        t.add_column(col, justify="left" if col.startswith("method") else "right")
    for r in rows:
        pct = f"{r['percent']:.2f}%" if r["percent"] < 100 else "100%"
        t.add_row(f"{r['method']} ({pct})", f"{r['median']:.4f}", f"±{(r['max'] - r['min']) / 2:.4f}",
                  f"{r['test_median']:.4f}", f"{r['seconds_per_step']:.3f}")
    return t


def comparison_markdown(rows: list[dict]) -> str:
    lines = ["| method (# params) | dev median | spread (±½ range) | test median | s/step |", "|---|---|---|---|---|"]
    for r in rows:
        pct = f"{r['percent']:.2f}%" if r["percent"] < 100 else "100%"
        lines.append(f"| {r['method']} ({pct}) | {r['median']:.4f} | ±{(r['max'] - r['min']) / 2:.4f} | "
                     f"{r['test_median']:.4f} | {r['seconds_per_step']:.3f} |")
    return "\n".join(lines)


def cmd_compare(args) -> int:
    import time

    from rich.console import Console

    _quiet_transformers()
    c = Console(width=None if sys.stdout.isatty() else 160, stderr=args.json)
    t0 = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(COMPARE_METHODS)
    if args.design:
        methods.append(args.design)
    seeds = list(range(args.seeds))
    task_obj = task_from_args(args)
    out = Path(args.out or f"runs/compare-{args.model.replace(':', '_').replace('/', '_')}-{task_obj.name}")
    runs = compare(args.model, args.task, args.budget, methods, seeds, config_from_args(args, seed=0), out,
                   log=lambda s: c.print(s), task_obj=task_obj)
    rows = summarize(runs)
    title = (f"{args.model} on {task_obj.name}: {rows[0]['metric'] if rows else ''}, median over {len(seeds)} seed(s), "
             f"budget {args.budget}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (out / "comparison.md").write_text(f"# {title}\n\n{comparison_markdown(rows)}\n", encoding="utf-8")
    png = None
    try:
        from .report.plots import plot_comparison

        png = plot_comparison(rows, out / "comparison.png", title=title)
    except ImportError:
        pass
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"rows": rows, "seconds": elapsed, "out": str(out)}, indent=2))
    else:
        c.print(comparison_table(rows, title))
        c.print(f"wrote {out}/comparison.md, comparison.json" + (f", {png}" if png else "") + f"  ({elapsed:.0f} s)")
    return 0


def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="train full fine-tuning and every baseline at one budget (He et al. Table 2)",
                       description="Train full fine-tuning, BitFit (natural size) and every baseline sized to the same "
                       "budget over several seeds; print the median and spread per method in the shape of He et al. "
                       "Table 2 and write a plot. Finished runs are reused when the command is repeated.",
                       formatter_class=_Help)
    p.add_argument("--model", default="minilm", help="packaged name (minilm, smollm2), a local path or a hub id")
    p.add_argument("--budget", default="0.5%", help="trainable parameters of every method but full and bitfit: "
                   "'0.5%%' of the backbone or a count")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--methods", help=f"comma-separated (default: {','.join(COMPARE_METHODS)})")
    p.add_argument("--design", help="also a design-space design: design:SPACE samples one per seed (e.g. "
                   "design:chen2023-t5, see peftspace sample), or a plan JSON such as the design a search discovered "
                   "(RUN/final-*/runs/discovered-*/adapter/plan.json)")
    p.add_argument("--out", help="directory for runs and the table (default runs/compare-MODEL-TASK)")
    p.add_argument("--json", action="store_true", help="print the comparison rows as JSON")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    _add_data_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_compare)
