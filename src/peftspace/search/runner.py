"""A whole search: refinement over the store, the discovered design, the final comparison, the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .execute import make_backend
from .final import run_final
from .progress import SearchProgress
from .refine import Refinement, discovered_trial, final_key, search_key
from .spec import SearchSpec
from .store import TrialStore


def default_store(spec: SearchSpec) -> Path:
    task = spec.task.split(":", 1)[-1] if ":" in spec.task else spec.task
    name = "-".join(x for x in (spec.name or spec.model, Path(task).stem) if x)
    return Path("runs") / f"search-{name.replace('/', '_').replace(':', '_')}" / "trials.sqlite"


def run_search(spec: SearchSpec, store_path: str | Path | None = None, *, backend: str = "local", workers: int = 1,
               address: str | None = None, cpus: float | None = None, gpus: float = 0.0,
               report_dir: str | Path | None = None, console=None, live: bool | None = None,
               report: bool = True) -> dict[str, Any]:
    """Run (or resume) `spec` on the store at `store_path`; return a summary (decisions, discovered trial, final)."""
    from rich.console import Console

    console = console or Console()
    t0 = time.perf_counter()
    store_path = Path(store_path) if store_path else default_store(spec)
    store = TrialStore(store_path)
    search = spec.search_id
    be = make_backend(backend, str(store_path), search, workers=workers, address=address, cpus=cpus, gpus=gpus)
    total = sum(len(s.candidates) for s in spec.stages) * spec.samples
    progress = SearchProgress(console, total, be.parallel, live=live)
    progress.log(f"search [bold]{search}[/]: {spec.model} on {spec.task}, budget {spec.budget}, from {spec.space}; "
                 f"{len(spec.stages)} stage(s), N={spec.samples} design(s) per candidate; store {store_path}; "
                 f"backend {be.name} ×{be.parallel}")
    try:
        outcomes = Refinement(spec, store, be, progress=progress, log=progress.log).run()
    finally:
        progress.stop()
        be.close()
    search_seconds = time.perf_counter() - t0
    trial = discovered_trial(store, [o.decision for o in outcomes])
    rec = store.get_meta(search_key(search)) or {}
    rec.update(discovered=trial.id if trial else None, search_seconds=search_seconds)
    store.set_meta(search_key(search), rec)
    final = None
    if trial is None:
        console.print("[red]no trial finished: there is no discovered design[/]")
    elif spec.final.enabled:
        console.print(f"final comparison at full fidelity: discovered design + {', '.join(spec.final.methods)}")
        out = store_path.parent / f"final-{search.rsplit(':', 1)[-1]}"
        final = run_final(spec, trial, out, log=lambda s: console.print(s, highlight=False),
                          threads=int(cpus) if cpus else None)
        store.set_meta(final_key(search), final)
    rec.update(status="finished", seconds=time.perf_counter() - t0)
    store.set_meta(search_key(search), rec)
    paths = None
    if report:
        from ..report.search_report import write_report

        paths = write_report(store_path, report_dir, search=search)
    store.close()
    return {"search": search, "store": str(store_path), "outcomes": outcomes, "discovered": trial, "final": final,
            "report": paths, "seconds": time.perf_counter() - t0, "search_seconds": search_seconds}
