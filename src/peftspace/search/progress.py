"""Live progress of a search: stage, candidate, trial i/n, best so far, ETA.

On a terminal a rich progress bar redraws in place (its elapsed time keeps moving while a trial
trains); otherwise (CI logs, pipes) one line per finished trial. The ETA is the mean duration of the
trials finished so far (reused ones included) times the trials left, divided by the backend's
parallelism; the final comparison is not in it.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .store import Trial


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class SearchProgress:
    def __init__(self, console, total_trials: int, parallel: int = 1, live: bool | None = None):
        self.console = console
        self.total = max(1, total_trials)
        self.parallel = max(1, parallel)
        self.live = console.is_terminal if live is None else live
        self.stage_label = ""
        self.n_per_candidate = 1
        self.candidates: list[str] = []
        self.seen_final: dict[str, Trial] = {}  # this stage's final trials, by id
        self.done_before = 0  # trials of earlier stages (run or reused)
        self.durations: list[float] = []
        self.best: tuple[float, str] | None = None
        self.higher = True
        self.current = ""
        self._stage_closed = False
        self._progress = None
        self._task = None
        self.started = time.time()
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("search", total=self.total)

    # ---- events ---------------------------------------------------------------------------------
    def begin_stage(self, stage, position: int, n_stages: int, samples: int) -> None:
        self.stage_label = f"stage {position + 1}/{n_stages} {stage.name}"
        self.candidates = list(stage.candidates)
        self.n_per_candidate = samples
        self.seen_final = {}
        self.best = None
        self.current = ""
        self._stage_closed = False
        self._redraw()

    def on_update(self, rows: list[Trial], started: Trial | None) -> None:
        new = [t for t in rows if t.status in ("done", "failed") and t.id not in self.seen_final]
        for t in new:
            self.seen_final[t.id] = t
            if t.timings and t.status == "done":
                self.durations.append(float(t.timings.get("total_seconds") or 0.0))
            if t.metrics and "higher_is_better" in t.metrics:
                self.higher = bool(t.metrics["higher_is_better"])
            if t.status == "done" and t.score is not None and math.isfinite(t.score):
                better = self.best is None or (t.score > self.best[0] if self.higher else t.score < self.best[0])
                if better:
                    self.best = (t.score, t.candidate)
            if not self.live:
                self._line(t, len(rows))
        if started is not None:
            self.current = f"{started.candidate} #{started.index + 1}/{self.n_per_candidate} (seed {started.seed})"
        else:  # trials run by workers, Ray or another process: name what is running now
            running = [t for t in rows if t.status == "running"]
            if running:
                first = running[0]
                self.current = (f"{first.candidate} #{first.index + 1}/{self.n_per_candidate}"
                                + (f" +{len(running) - 1} running" if len(running) > 1 else ""))
        self._redraw()

    def end_stage(self, stage, decision: dict[str, Any], reused: bool) -> None:
        n = len(decision.get("trial_ids") or [])
        if reused:
            self.done_before += n
        else:
            self.done_before += len(self.seen_final) if self.seen_final else n
        self.seen_final = {}
        self.current = f"decided: {decision.get('winner')}" if decision.get("winner") else "no winner"
        self._stage_closed = True
        if decision.get("skipped"):
            self.total = max(1, self.total - len(self.candidates) * self.n_per_candidate)
            if self._progress is not None:
                self._progress.update(self._task, total=self.total)
            msg = f"{self.stage_label}: skipped ({decision['skipped']})"
        else:
            w = decision.get("winner")
            row = next((r for r in decision.get("rows", []) if r.get("chosen")), None)
            how = "reused stored decision" if reused else "decided"
            msg = (f"{self.stage_label}: {how}: [bold]{w}[/] mean {row['mean']:.4f} over {row['n']} trial(s)"
                   if row else f"{self.stage_label}: no candidate finished a trial; the space is kept")
        self.console.print(msg)
        self._redraw()

    def log(self, msg: str) -> None:
        self.console.print(msg)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # ---- display --------------------------------------------------------------------------------
    def eta(self) -> float | None:
        if not self.durations:
            return None
        left = max(0, self.total - self.done_before - len(self.seen_final))
        return sum(self.durations) / len(self.durations) * left / self.parallel

    def _best_text(self) -> str:
        return f"best {self.best[0]:.4f} ({self.best[1]})" if self.best else "best -"

    def _redraw(self) -> None:
        if self._progress is None:
            return
        done = self.done_before + len(self.seen_final)
        stage_total = len(self.candidates) * self.n_per_candidate
        finished = stage_total if self._stage_closed else len(self.seen_final)
        desc = (f"{self.stage_label} · {self.current or 'waiting'} · trial {finished}/{stage_total}"
                f" · {self._best_text()} · ETA {_fmt_eta(self.eta())}")
        self._progress.update(self._task, completed=min(done, self.total), description=desc)

    def _line(self, t: Trial, stage_total: int) -> None:
        score = f"{t.score:.4f}" if t.score is not None else "-"
        secs = (t.timings or {}).get("total_seconds")
        what = f"score {score}" if t.status == "done" else f"FAILED: {(t.error or '').splitlines()[0][:120]}"
        self.console.print(f"{self.stage_label} · {t.candidate} #{t.index + 1} seed {t.seed}: {what}"
                           + (f" ({secs:.1f} s)" if secs else "")
                           + f" · trial {len(self.seen_final)}/{stage_total} · {self._best_text()}"
                           + f" · ETA {_fmt_eta(self.eta())}", highlight=False)
