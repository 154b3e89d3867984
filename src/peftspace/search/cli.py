"""`peftspace search`, `peftspace trials` and `peftspace report`, registered by the main CLI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SEARCH_HELP = """\
Progressive refinement of a PEFT design space (Chen et al. 2023) for your model, task and budget.

Stages (default: grouping -> allocation -> tunable groups -> strategy assignment, from S0):
for each candidate constraint, N designs are sampled (same N and same seeds for every candidate), trained
at low fidelity and scored on dev; candidates are compared by mean, median, the paired bootstrap 95%% CI
of the difference to the best, and the EDF; the best mean is fixed and the next stage starts. Then the
discovered design (the best trial of the final space) is trained at full fidelity beside the baselines
at the same budget, and a report is written.

Every trial lives in a SQLite store (--store). Kill the search at any moment (kill -9 included) and run
the same command again: finished trials are reused, none runs twice, none is lost.

Defaults (a bare `peftspace search`, < 20 min on 2 CPU cores): minilm on vader-movie, budget 0.5%%, from
S0; stages grouping (5 candidates), allocation (3), tunable groups (5), strategy assignment (5: A, P, B
or L in every group, or the paper's T5 assignment; `--stages paper` for the group-by-group lists);
N=2 designs per candidate; trials: 40 steps, batch 16, lr 5e-3, max_length 48, scored on the first 200
dev examples; final comparison: the discovered design, lora, mam and bitfit at 60 steps, batch 32,
lr 5e-3, 1 seed, full dev and test sets. On a machine shared with other jobs, give each trial one
thread (--cpus-per-trial 1) or set OMP_WAIT_POLICY=PASSIVE: busy-waiting OpenMP threads that lose
their core make a step up to 10x slower.
"""

EPILOG = """\
examples:
  peftspace search                                   # the default small search (minilm + vader-movie)
  peftspace search --model minilm --task vader-movie --budget 0.5% --samples 3 --steps 40
  peftspace search --config my-search.yaml --set trial.lr=5e-4 --set final.methods=lora,pa
  peftspace search --workers 2                       # two processes, each claims trials from the store
  peftspace search --backend ray [--address auto]    # one Ray task per trial
  peftspace search --print-config > my-search.yaml   # the resolved search file, to edit
  peftspace trials runs/search-minilm-vader-movie/trials.sqlite
  peftspace report runs/search-minilm-vader-movie/trials.sqlite --out report/
"""


def add_search_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("search", help="progressive design-space search (Chen et al. 2023) over a resumable store",
                       description=SEARCH_HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML search file (keys: model, task, task_args, budget, space, "
                   "samples, seed, stages, trial, final); see docs/search.md")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. trial.steps=40, final.methods=lora,pa, stages=paper (repeatable)")
    p.add_argument("--model", help="model name (default minilm)")
    p.add_argument("--task", help="task (default vader-movie); csv:PATH etc. with --text-column/--label-column")
    p.add_argument("--text-column")
    p.add_argument("--text-pair-column")
    p.add_argument("--label-column")
    p.add_argument("--budget", help="trainable-parameter budget: '0.5%%' (default) or a count")
    p.add_argument("--space", help="start space (default S0): a name, inline constraints or a file")
    p.add_argument("--stages", help="comma-separated library stage names, or 'paper' (all of Chen et al.'s, "
                   "stage 4 with all 15 subsets per group)")
    p.add_argument("--samples", type=int, help="N designs per candidate (default 2)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="trial training steps (default 40)")
    g.add_argument("--epochs", type=float, help="trial training epochs instead of steps")
    p.add_argument("--batch-size", type=int, help="trial batch size (default 16)")
    p.add_argument("--lr", type=float, help="trial learning rate (default 5e-3; a nuisance variable, recorded)")
    p.add_argument("--dev-examples", type=int, help="score trials on the first N dev examples (default 200; 0 = all)")
    p.add_argument("--seed", type=int, help="search seed (design sampling and trial seeds; default 0)")
    p.add_argument("--final-methods", help="baselines of the final comparison (default lora,mam,bitfit)")
    p.add_argument("--final-steps", type=int, help="final comparison steps (default 60)")
    p.add_argument("--no-final", action="store_true", help="stop after the refinement (no full-fidelity comparison)")
    p.add_argument("--store", help="trial store (default runs/search-MODEL-TASK/trials.sqlite)")
    p.add_argument("--out", help="report directory (default: report/ next to the store)")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="local (default) or ray")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (spawned); torch threads per "
                   "worker = cores // workers (default 1: sequential, in this process)")
    p.add_argument("--address", help="Ray cluster address (default: start a local instance)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs (= torch threads) per trial (ray; local: threads)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (ray)")
    p.add_argument("--print-config", action="store_true", help="print the resolved search as YAML and exit")
    p.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    p.set_defaults(func=cmd_search)
    return p


def spec_from_args(args):
    from .spec import build_spec

    flags = {"model": args.model, "task": args.task, "budget": args.budget, "space": args.space,
             "samples": args.samples, "seed": args.seed,
             "trial.steps": args.steps, "trial.batch_size": args.batch_size, "trial.lr": args.lr,
             "final.steps": args.final_steps}
    if args.epochs is not None:
        flags.update({"trial.epochs": args.epochs, "trial.steps": 0})
    if args.dev_examples is not None:
        flags["trial.dev_examples"] = args.dev_examples or None
    for k in ("text_column", "text_pair_column", "label_column"):
        if getattr(args, k):
            flags[f"task_args.{k}"] = getattr(args, k)
    if args.stages:
        flags["stages"] = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.final_methods is not None:
        flags["final.methods"] = [m.strip() for m in args.final_methods.split(",") if m.strip()]
    if args.no_final:
        flags["final.enabled"] = False
    return build_spec(args.config, args.overrides, **flags)


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def cmd_search(args) -> int:
    import yaml

    from ..train_cli import _quiet_transformers, comparison_table
    from .runner import run_search

    spec = spec_from_args(args)
    if args.print_config:
        d = spec.to_dict()
        if not d.get("name"):
            del d["name"]
        print(yaml.safe_dump(d, sort_keys=False), end="")
        return 0
    _quiet_transformers()
    c = _console()
    res = run_search(spec, args.store, backend=args.backend, workers=args.workers, address=args.address,
                     cpus=args.cpus_per_trial, gpus=args.gpus_per_trial, report_dir=args.out, console=c)
    if args.json:
        print(json.dumps(summary_json(res), indent=2, default=str))
        return 0
    c.print()
    c.rule("stages")
    for o in res["outcomes"]:
        d = o.decision
        if d.get("skipped"):
            c.print(f"{o.stage.name}: skipped ({d['skipped']})")
            continue
        row = next((r for r in d["rows"] if r.get("chosen")), None)
        second = next((r for r in d["rows"] if not r.get("chosen") and r["n"]), None)
        ci = (f"; next best {second['name']} Δ {second['diff_to_best']:+.4f} "
              f"[{second['ci_low']:+.4f}, {second['ci_high']:+.4f}]") if second else ""
        c.print(f"{o.stage.name}: [bold]{d.get('winner')}[/] (mean {row['mean']:.4f}, n={row['n']}{ci})"
                if row else f"{o.stage.name}: no winner (no candidate finished a trial)", highlight=False)
    t = res["discovered"]
    if t is not None:
        c.rule("discovered design")
        c.print(f"{t.design.get('key')}", highlight=False)
        c.print(f"{t.trainable_params or t.design.get('trainable_params'):,} trainable parameters "
                f"({t.design.get('percent', 0):.3f}%), low-fidelity dev {t.score:.4f} (trial {t.id})", highlight=False)
        from ..plan import Plan
        from ..spaces.cli import layer_table

        c.print(layer_table(Plan.from_dict(t.plan), title="discovered design, per layer"))
    if res["final"]:
        c.print(comparison_table(res["final"]["rows"], res["final"]["title"]))
    if res["report"]:
        c.print(f"report: {res['report']['html']} and {res['report']['md']}")
    c.print(f"store: {res['store']}   (peftspace trials {res['store']})   wall time {res['seconds'] / 60:.1f} min")
    return 0


def summary_json(res: dict) -> dict:
    t = res["discovered"]
    return {"search": res["search"], "store": res["store"], "seconds": res["seconds"],
            "stages": [o.decision for o in res["outcomes"]],
            "discovered": None if t is None else {"trial": t.id, "design": t.design, "score": t.score, "plan": t.plan},
            "final": res["final"], "report": {k: str(v) for k, v in (res["report"] or {}).items() if k != "images"}}


# ---- trials ---------------------------------------------------------------------------------------
def add_trials_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("trials", help="list the trials of a search store",
                       description="List the trials in a search store: id, stage, candidate, sample index, seed, "
                       "learning rate, status, dev score (and the error of failed trials).")
    p.add_argument("store", metavar="STORE", help="the trial store (a .sqlite file written by peftspace search)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--stage", help="only this stage")
    p.add_argument("--status", choices=["pending", "running", "done", "failed"], help="only this status")
    p.add_argument("--search", help="only this search id")
    p.set_defaults(func=cmd_trials)
    return p


def trial_summary(t) -> dict:
    train = (t.config or {}).get("train") or {}
    return {"id": t.id, "search": t.search, "stage": t.stage, "candidate": t.candidate, "index": t.index,
            "seed": t.seed, "lr": train.get("lr"), "status": t.status, "score": t.score,
            "metric": (t.metrics or {}).get("metric"), "trainable_params": t.trainable_params,
            "design": (t.design or {}).get("key"), "seconds": (t.timings or {}).get("total_seconds"),
            "attempts": t.attempts, "error": t.error}


def cmd_trials(args) -> int:
    from .store import TrialStore

    if not Path(args.store).is_file():
        raise FileNotFoundError(f"no trial store at {args.store}")
    with TrialStore(args.store) as store:
        trials = store.trials(search=args.search, stage=args.stage, status=args.status)
    rows = [trial_summary(t) for t in trials]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    t = Table(title=f"{len(rows)} trial(s) in {args.store}")
    for col in ("id", "stage", "candidate", "#", "seed", "lr", "status", "score", "params", "s", "design / error"):
        t.add_column(col, justify="right" if col in ("#", "seed", "lr", "score", "params", "s") else "left")
    for r in rows:
        note = (r["error"] or "").splitlines()[0][:80] if r["status"] == "failed" else (r["design"] or "")
        t.add_row(r["id"], r["stage"], r["candidate"], str(r["index"]), str(r["seed"]),
                  f"{r['lr']:g}" if r["lr"] is not None else "-", r["status"],
                  f"{r['score']:.4f}" if r["score"] is not None else "-",
                  f"{r['trainable_params']:,}" if r["trainable_params"] else "-",
                  f"{r['seconds']:.1f}" if r["seconds"] else "-", note)
    _console().print(t)
    return 0


# ---- report ---------------------------------------------------------------------------------------
def add_report_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write the HTML and Markdown report of a search store",
                       description="Write report.html (self-contained) and report.md with, per stage, the EDF of each "
                       "candidate (legend n|min|mean), the candidates' table with CIs and the chosen constraint; the "
                       "discovered design's per-layer allocation; the final comparison. Works on unfinished stores.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--out", help="output directory (default: report/ next to the store)")
    p.add_argument("--search", help="only this search id (default: every search in the store)")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args) -> int:
    from ..report.search_report import write_report

    paths = write_report(args.store, args.out, search=args.search)
    print(f"wrote {paths['html']}, {paths['md']} and {len(paths['images'])} PNG(s) in {paths['dir']}")
    return 0
