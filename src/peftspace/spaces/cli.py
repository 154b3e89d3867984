"""`peftspace sample` and `peftspace show`: the design-space commands, registered by the main CLI.

    peftspace sample --model shape:t5-base --space chen2023-t5 --budget 0.5% --n 2 --seed 0 [--json]
    peftspace show PLAN.json [--png PATH]

`sample` prints each design (grouping per stack, allocation weights, strategies per group) and its
per-layer sizes and counts, with the total and percent; `--json` prints a list of records (grouping,
strategies, trainable_params, target_params, percent, within_tolerance, plan, …). `show` reads a Plan
(or a sample record, or a list of them) and prints its per-layer table and a PNG of the per-layer
parameters stacked by strategy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..plan import STACK_LEVEL, Plan
from ..spec import SpecError
from .solve import design_record
from .strategies import strategy_of_spec


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample", help="sample designs from a design space, sized to a parameter budget",
        description="Sample N distinct designs from a design space (Chen et al. 2023) and solve each to a Plan "
                    "within 1% of the budget. The same seed gives the same designs.")
    p.add_argument("--model", required=True, help="model name for peftspace.load_model (e.g. shape:t5-base, tiny-t5)")
    p.add_argument("--space", default="S0",
                   help="named space (S0, S1, S2, S3, chen2023-t5), inline constraints "
                        "(grouping=spindle,allocation=uniform,tunable=all,strategies=G1:A+L/G2:A+P), "
                        "NAME,key=value,… or a YAML/JSON file (default: S0)")
    p.add_argument("--budget", default="0.5%", help="percent of the backbone (0.5%%) or a count (120000); default 0.5%%")
    p.add_argument("--n", type=int, default=1, help="number of distinct designs (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--json", action="store_true", help="print a JSON list of design records instead of tables")
    p.set_defaults(func=run_sample)
    return p


def add_show_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "show", help="print a plan's per-layer table and plot its per-layer parameters",
        description="Print the per-layer table of a Plan JSON file (a plan, a `sample --json` record, or a list of "
                    "records) and write a PNG of the per-layer parameters stacked by strategy.")
    p.add_argument("plan", metavar="PLAN.json", help="plan or sample record(s) in JSON")
    p.add_argument("--png", help="where to write the plot (default: PLAN.png next to the file)")
    p.add_argument("--index", type=int, default=0, help="which record, when the file holds a list (default 0)")
    p.set_defaults(func=run_show)
    return p


# ---- sample ---------------------------------------------------------------------------------------
def run_sample(args) -> int:
    from ..models import load_model
    from ..plan import model_arch
    from .space import parse_space

    try:
        space = parse_space(args.space)
        arch = model_arch(load_model(args.model))
        pairs = space.sample_plans(arch, n=args.n, seed=args.seed, budget=args.budget)
    except (SpecError, ValueError) as e:  # SpaceError, BudgetError, unknown model: one clear line
        print(f"peftspace sample: error: {e}", file=sys.stderr)
        return 2
    records = [design_record(d, p) for d, p in pairs]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    console = _console()
    console.print(f"[bold]{len(records)} design(s)[/bold] on {args.model}, budget {args.budget}, seed {args.seed}; "
                  f"space [bold]{space.name}[/bold]:")
    console.print(f"  {space.to_text()}", soft_wrap=True)
    for i, ((design, plan), rec) in enumerate(zip(pairs, records), start=1):
        console.print()
        console.print(f"[bold]design {i}/{len(records)}[/bold]  {rec['design_hash']}")
        console.print("  grouping    " + "  ".join(f"{st} {'+'.join(map(str, sz))}" for st, sz in rec["grouping"].items()))
        console.print(f"  allocation  weights {':'.join(map(str, rec['weights']))} per group; tuned {' '.join(rec['tunable'])}")
        console.print("  strategies  " + "  ".join(f"{g}: {'+'.join(v)}" for g, v in rec["strategies"].items()))
        console.print(layer_table(plan))
    return 0


# ---- show -----------------------------------------------------------------------------------------
def run_show(args) -> int:
    try:
        plan = _read_plan(args.plan, args.index)
    except (OSError, ValueError, KeyError, IndexError, SpecError) as e:
        print(f"peftspace show: error: {e}", file=sys.stderr)
        return 2
    _console().print(layer_table(plan))
    png = Path(args.png) if args.png else Path(args.plan).with_suffix(".png")
    plot_layers(plan, png)
    print(f"wrote {png}")
    return 0


def _read_plan(path: str, index: int) -> Plan:
    data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, list):
        if not data:
            raise ValueError(f"{path}: empty list")
        if not -len(data) <= index < len(data):
            raise IndexError(f"{path}: --index {index} out of range (the file holds {len(data)} records)")
        data = data[index]
    if isinstance(data, dict) and data.get("format") != "peftspace.plan/1" and "plan" in data:
        data = data["plan"]
    return Plan.from_dict(data, where=path)


# ---- shared views ---------------------------------------------------------------------------------
def _console():
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=120)


def layer_rows(plan: Plan) -> tuple[list[str], list[dict[str, Any]]]:
    """Per layer: stack, layer, group (if the plan came from a design), and per strategy its sizes and
    parameters. Strategies come from the plan's meta (`strategy_of`), else each spec is its own."""
    of = plan.meta.get("strategy_of") or {}
    design = plan.meta.get("design") or {}
    groups = {}
    for st, sizes in (design.get("grouping") or {}).items():
        layer = 0
        for g, n in enumerate(sizes, start=1):
            for _ in range(n):
                groups[(st, layer)] = g
                layer += 1
    names: list[str] = []
    rows = []
    for row in plan.layers():
        if not row["specs"]:
            continue
        per: dict[str, dict[str, Any]] = {}
        for s in row["specs"]:
            k = of.get(s["name"]) or strategy_of_spec(s["name"], list(set(of.values())))
            if k not in names:
                names.append(k)
            cell = per.setdefault(k, {"sizes": [], "params": 0, "symbol": None})
            if s["form"] != "bias":
                cell["sizes"].append(s["size"])
                cell["symbol"] = "l" if s["form"] in ("prefix", "prompt") else "r"
            cell["params"] += s["params"]
        rows.append({"stack": row["stack"], "layer": row["layer"], "group": groups.get((row["stack"], row["layer"])),
                     "strategies": per, "params": row["params"]})
    order = {k: i for i, k in enumerate(("A", "P", "B", "L"))}
    names.sort(key=lambda n: (order.get(n, len(order)), n))
    return names, rows


def layer_table(plan: Plan, title: str | None = None):
    from rich.table import Table

    names, rows = layer_rows(plan)
    has_group = any(r["group"] for r in rows)
    t = Table(title=title or f"plan {plan.hash} ({plan.arch['model_type']})", show_edge=False, pad_edge=False)
    t.add_column("stack")
    t.add_column("layer", justify="right")
    if has_group:
        t.add_column("group", justify="right")
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("params", justify="right")
    for r in rows:
        cells = [r["stack"], "input" if r["layer"] == STACK_LEVEL else str(r["layer"])]
        if has_group:
            cells.append(f"G{r['group']}" if r["group"] else "")
        for n in names:
            c = r["strategies"].get(n)
            if c is None:
                cells.append("")
                continue
            sizes = sorted(set(c["sizes"]))
            size = f"{c['symbol']}={'/'.join(map(str, sizes))} " if sizes else ""
            cells.append(f"{size}{c['params']:,}")
        cells.append(f"{r['params']:,}")
        t.add_row(*cells)
    meta = plan.meta
    cap = f"total {plan.trainable_params:,} = {plan.percent:.4f}% of {plan.backbone_params:,} backbone"
    if meta.get("target_params"):
        ok = "yes" if meta.get("within_tolerance") else "NO (closest count reached)"
        cap += (f"; target {meta['target_params']:,} ({meta.get('budget')}), ratio {meta.get('ratio', 0):.5f}, "
                f"within {meta.get('tolerance', 0.01):.0%}: {ok}")
    elif meta.get("budget_params"):
        cap += f"; target {meta['budget_params']:,} ({meta.get('budget')})"
    t.caption = cap
    return t


def plot_layers(plan: Plan, path: Path) -> Path:
    """A PNG of the parameters of every layer, stacked by strategy (`report.plots.plot_allocation`)."""
    from ..report.plots import plot_allocation

    names, rows = layer_rows(plan)
    short = {"encoder": "enc", "decoder": "dec"}
    layers = [{"label": f"{short.get(r['stack'], r['stack'])} {'in' if r['layer'] == STACK_LEVEL else r['layer']}",
               "counts": {n: r["strategies"].get(n, {}).get("params", 0) for n in names}} for r in rows]
    title = f"plan {plan.hash} ({plan.arch['model_type']}): {plan.trainable_params:,} = {plan.percent:.3f}%"
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_allocation(layers, path, title=title)
