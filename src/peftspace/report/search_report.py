"""`peftspace report STORE`: a search's evidence as report.md and a self-contained report.html.

Everything comes from the trial store (trials and the stage decisions in its meta), so a report can be
written at any time, also while a search runs or after it was killed. Per search:
  * per stage: the EDF of each candidate's dev scores (legend n|min|mean), the table of candidates
    with mean, median and the bootstrap 95% CI of the difference to the best, and the chosen constraint;
  * the discovered design: its components, its per-layer allocation picture (parameters per layer,
    stacked by strategy) and table;
  * the final comparison (discovered design beside the baselines at the same budget), table and plot.
PNGs are written next to the reports; the HTML embeds them (base64), so it can be moved alone.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from pathlib import Path
from typing import Any

from ..search.refine import discovered_trial_from_meta, final_key, search_key, stage_scores
from ..search.store import Trial, TrialStore
from .plots import plot_allocation, plot_comparison, plot_edf


def _f(x: Any, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "x"


def searches_in(store: TrialStore) -> list[str]:
    """Search ids with trials or a search record, most recently updated first."""
    ids = {t.search for t in store.trials()}
    recs = {s: (store.get_meta(search_key(s)) or {}) for s in ids}
    return sorted(ids, key=lambda s: -float(recs[s].get("updated", 0)))


def allocation_layers(plan) -> list[dict]:
    """Per layer of a Plan (untuned layers included, as zeros): label and parameters per strategy."""
    from ..plan import STACK_LEVEL
    from ..spaces.strategies import strategy_of_spec

    of = plan.meta.get("strategy_of") or {}
    groups: dict[tuple[str, int], int] = {}
    for st, sizes in ((plan.meta.get("design") or {}).get("grouping") or {}).items():
        layer = 0
        for g, n in enumerate(sizes, start=1):
            for _ in range(n):
                groups[(st, layer)] = g
                layer += 1
    short = {"encoder": "enc", "decoder": "dec"}
    out = []
    for row in plan.layers():
        counts: dict[str, int] = {}
        for s in row["specs"]:
            k = of.get(s["name"]) or strategy_of_spec(s["name"], sorted(set(of.values())))
            counts[k] = counts.get(k, 0) + int(s["params"])
        layer = "in" if row["layer"] == STACK_LEVEL else str(row["layer"])
        g = groups.get((row["stack"], row["layer"]))
        out.append({"label": f"{short.get(row['stack'], row['stack'])} {layer}" + (f" G{g}" if g else ""),
                    "counts": counts, "params": row["params"]})
    return out


# ---- collecting ---------------------------------------------------------------------------------------
def collect(store: TrialStore, search: str) -> dict[str, Any]:
    rec = store.get_meta(search_key(search)) or {}
    stages = [store.get_meta(k) for k in rec.get("stages", [])]
    trials = store.trials(search=search)
    return {"search": search, "record": rec, "spec": rec.get("spec", {}), "stages": [s for s in stages if s],
            "trials": trials, "final": store.get_meta(final_key(search)),
            "discovered": discovered_trial_from_meta(store, rec)}


def stage_table_rows(decision: dict[str, Any]) -> list[list[str]]:
    rows = []
    for rank, r in enumerate(decision.get("rows", []), start=1):
        lo, hi = r.get("ci_low"), r.get("ci_high")
        undefined = r.get("is_best") or any(x is None or not math.isfinite(x) for x in (lo, hi))
        ci = "–" if undefined else f"[{_f(lo)}, {_f(hi)}]"
        rows.append([str(rank), r["name"], str(r["n"]), str(r.get("failed", 0)), _f(r.get("mean")),
                     _f(r.get("median")), _f(r.get("min")), _f(r.get("max")),
                     "0 (best)" if r.get("is_best") else _f(r.get("diff_to_best")), ci,
                     "✓" if r.get("chosen") else ""])
    return rows


STAGE_COLUMNS = ["rank", "candidate", "n", "failed", "mean", "median", "min", "max", "Δ mean to best",
                 "95% CI of Δ (paired bootstrap)", "chosen"]


# ---- writing ------------------------------------------------------------------------------------------
def write_report(store_path: str | Path, out: str | Path | None = None, search: str | None = None) -> dict[str, Path]:
    """Write report.md, report.html and the PNGs for every search in the store (or one); return the paths."""
    store_path = Path(store_path)
    if not store_path.is_file():
        raise FileNotFoundError(f"no trial store at {store_path}")
    out = Path(out) if out else store_path.parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    with TrialStore(store_path) as store:
        ids = [search] if search else searches_in(store)
        data = [collect(store, s) for s in ids]
    md: list[str] = ["# peftspace search report\n", f"Store: `{store_path}` · written {time.strftime('%Y-%m-%d %H:%M:%S')}\n"]
    body: list[str] = []
    images: list[Path] = []
    for d in data:
        m, h, imgs = _search_section(d, out)
        md += m
        body += h
        images += imgs
    if not data:
        md.append("The store holds no trials yet.\n")
        body.append("<p>The store holds no trials yet.</p>")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    page = _HTML.format(title="peftspace search report", store=html.escape(str(store_path)),
                        when=time.strftime("%Y-%m-%d %H:%M:%S"), body="\n".join(body))
    (out / "report.html").write_text(page, encoding="utf-8")
    return {"html": out / "report.html", "md": out / "report.md", "dir": out, "images": images}


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _md_table(cols: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(cols: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    trs = []
    for r in rows:
        chosen = ' class="chosen"' if r and r[-1] == "✓" else ""
        trs.append(f"<tr{chosen}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(trs)}</tbody></table>'


def _spec_lines(spec: dict) -> list[tuple[str, str]]:
    t = spec.get("trial", {})
    f = spec.get("final", {})
    train = (f"{t.get('steps')} steps" if t.get("steps") else f"{t.get('epochs')} epochs") + \
        f", batch {t.get('batch_size')}, lr {t.get('lr')}" + (f" (log-uniform in {t.get('lr_range')})" if t.get("lr_range") else "") + \
        f", max_length {t.get('max_length')}, scored on {t.get('dev_examples') or 'all'} dev examples"
    final = ("off" if not f.get("enabled", True) else
             f"{', '.join(f.get('methods', []))} + discovered design; "
             + (f"{f.get('steps')} steps" if f.get("steps") else f"{f.get('epochs')} epochs")
             + f", batch {f.get('batch_size')}, {f.get('seeds')} seed(s)")
    return [("model", str(spec.get("model"))), ("task", str(spec.get("task"))), ("budget", str(spec.get("budget"))),
            ("start space", str(spec.get("space"))), ("designs per candidate (N)", str(spec.get("samples"))),
            ("seed", str(spec.get("seed"))), ("trial training (low fidelity)", train), ("final comparison", final)]


def _search_section(d: dict[str, Any], out: Path) -> tuple[list[str], list[str], list[Path]]:
    search, spec, trials = d["search"], d["spec"], d["trials"]
    slug = _slug(search)
    md = [f"## Search `{search}`\n"]
    h = [f'<h2>Search <code>{html.escape(search)}</code></h2>']
    images: list[Path] = []
    counts = {s: sum(1 for t in trials if t.status == s) for s in ("done", "failed", "running", "pending")}
    secs = sum(float((t.timings or {}).get("total_seconds") or 0) for t in trials)
    info = _spec_lines(spec) + [("trials", ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none"),
                                ("trial compute", f"{secs / 60:.1f} min"),
                                ("status", str(d["record"].get("status", "?")))]
    if d["record"].get("space_text"):
        info.append(("final space", d["record"]["space_text"]))
    md.append(_md_table(["", ""], [[k, v] for k, v in info]) + "\n")
    h.append(_html_table(["", ""], [[k, v] for k, v in info], "info"))

    for dec in d["stages"]:
        name = dec["stage"]
        md.append(f"### {name} ({dec.get('component')})\n")
        h.append(f"<h3>{html.escape(name)} <small>({html.escape(str(dec.get('component')))})</small></h3>")
        desc = dec.get("description") or ""
        base = f"Current space: `{dec.get('base_text', '')}`. {desc}"
        md.append(base + "\n")
        h.append(f"<p>Current space: <code>{html.escape(dec.get('base_text', ''))}</code>. {html.escape(desc)}</p>")
        if dec.get("skipped"):
            md.append(f"Skipped: {dec['skipped']}.\n")
            h.append(f"<p class='skip'>Skipped: {html.escape(dec['skipped'])}.</p>")
            continue
        scores = stage_scores(dec)
        png = plot_edf(scores, out / f"{slug}-{_slug(name)}-edf.png",
                       title=f"{name}: dev {dec.get('metric') or 'score'}, N={dec.get('samples')} per candidate",
                       xlabel=f"dev {dec.get('metric') or 'score'}")
        images.append(png)
        rows = stage_table_rows(dec)
        chosen = dec.get("winner") or "none (no candidate finished a trial; the space is kept)"
        md += [f"![EDF of {name}]({png.name})\n", _md_table(STAGE_COLUMNS, rows) + "\n", f"**Chosen: `{chosen}`**\n"]
        h += [_img_tag(png, f"EDF of {name}"), _html_table(STAGE_COLUMNS, rows, "stage"),
              f"<p class='chosen-line'>Chosen: <code>{html.escape(chosen)}</code></p>"]
        failed = [t for t in trials if t.id in set(dec.get("trial_ids", [])) and t.status == "failed"]
        if failed:
            errs = [[t.candidate, str(t.index), (t.error or "").splitlines()[0][:500]] for t in failed]
            md.append("Failed trials:\n\n" + _md_table(["candidate", "index", "error"], errs) + "\n")
            h.append("<p>Failed trials:</p>" + _html_table(["candidate", "index", "error"], errs, "errors"))

    disc: Trial | None = d["discovered"]
    if disc is not None:
        from ..plan import Plan

        plan = Plan.from_dict(disc.plan)
        des = disc.design
        finished = d["record"].get("status") in ("searched", "finished")
        heading = "Discovered design" if finished else "Best design so far (the search has not finished)"
        md.append(f"### {heading}\n")
        h.append(f"<h3>{heading}</h3>")
        info = [("design", des.get("key", "")), ("from", f"trial {disc.id} ({disc.stage}, {disc.candidate}, "
                                                          f"sample {disc.index}, seed {disc.seed})"),
                ("trainable parameters", f"{plan.trainable_params:,} = {plan.percent:.4f}% of {plan.backbone_params:,}"),
                ("low-fidelity dev score", _f(disc.score)), ("plan hash", plan.hash)]
        md.append(_md_table(["", ""], [[k, v] for k, v in info]) + "\n")
        h.append(_html_table(["", ""], [[k, v] for k, v in info], "info"))
        layers = allocation_layers(plan)
        png = plot_allocation(layers, out / f"{slug}-allocation.png",
                              title=f"discovered design: parameters per layer ({plan.trainable_params:,})")
        images.append(png)
        strategies = sorted({k for layer in layers for k in layer["counts"]})
        lrows = [[layer["label"]] + [f"{layer['counts'].get(s, 0):,}" for s in strategies] + [f"{layer['params']:,}"]
                 for layer in layers]
        md += [f"![allocation]({png.name})\n", _md_table(["layer"] + strategies + ["params"], lrows) + "\n"]
        h += [_img_tag(png, "per-layer allocation"), _html_table(["layer"] + strategies + ["params"], lrows, "layers")]

    fin = d["final"]
    if fin:
        from ..train_cli import comparison_markdown

        rows = fin["rows"]
        md.append(f"### Final comparison\n\n{fin.get('title', '')}\n")
        md.append(comparison_markdown(rows) + "\n")
        h.append(f"<h3>Final comparison</h3><p>{html.escape(fin.get('title', ''))}</p>")
        cols = ["method (# params)", "dev median", "spread (±½ range)", "test median", "s/step", "lr"]
        lrs = fin.get("lrs", {})
        hrows = [[f"{r['method']} ({r['percent']:.2f}%)" if r["percent"] < 100 else f"{r['method']} (100%)",
                  _f(r["median"]), f"±{(r['max'] - r['min']) / 2:.4f}", _f(r["test_median"]),
                  f"{r['seconds_per_step']:.3f}", _f(lrs.get(r["method"]), 5)] for r in rows]
        h.append(_html_table(cols, hrows, "final"))
        png = plot_comparison(rows, out / f"{slug}-comparison.png", title=fin.get("title", "")[:90])
        images.append(png)
        md.append(f"![comparison]({png.name})\n")
        h.append(_img_tag(png, "final comparison"))
        md.append(f"Learning rates: {', '.join(f'{k} {v:g}' for k, v in lrs.items() if v is not None)}. "
                  f"Runs: `{fin.get('out')}`.\n")
        h.append(f"<p>Learning rates: {html.escape(', '.join(f'{k} {v:g}' for k, v in lrs.items() if v is not None))}. "
                 f"Runs: <code>{html.escape(str(fin.get('out')))}</code>.</p>")
    return md, h, images


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }}
h2 {{ border-bottom: 2px solid #444; padding-bottom: .2em; margin-top: 2em; }}
h3 {{ margin-top: 1.8em; }}
table {{ border-collapse: collapse; margin: .6em 0 1em; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f0f0f0; }}
td:first-child, th:first-child, table.stage td:nth-child(2) {{ text-align: left; }}
table.info td, table.errors td {{ text-align: left; }}
tr.chosen td {{ background: #e5f5e0; font-weight: 600; }}
img {{ max-width: min(100%, 820px); display: block; margin: .5em 0; }}
code {{ background: #f4f4f4; padding: 1px 4px; }}
.skip {{ color: #777; font-style: italic; }}
.chosen-line {{ font-weight: 600; }}
</style></head><body>
<h1>{title}</h1>
<p>Store: <code>{store}</code> · written {when}</p>
{body}
</body></html>
"""
