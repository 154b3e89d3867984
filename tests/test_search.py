"""Design-space search (issue 5): refinement over a resumable store, backends, failures, CLI, reports.

Trials run with one torch thread (cpus=1): tiny models gain nothing from more, and on a loaded
machine two OpenMP threads per trial slow tiny ops down by an order of magnitude.

Every search here runs tiny-bert (2 layers, so spaces have 2 groups) on a small synthetic sentiment
CSV written by the fixture; a trial trains for a few dozen steps in well under a second of compute.
The module-scoped `reference` search is the uninterrupted, sequential, in-process run that the
resumed, multi-process and Ray runs must reproduce trial for trial.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from peftspace.cli import main as cli_main
from peftspace.search import execute
from peftspace.search.refine import decide
from peftspace.search.runner import run_search
from peftspace.search.spec import SearchSpecError, build_spec
from peftspace.search.store import TrialStore

STAGES = [
    {"name": "allocation", "component": "allocation", "candidates": ["allocation=uniform", "allocation=increasing"]},
    {"name": "tunable", "component": "tunable", "candidates": ["tunable=G1", "tunable=all"]},
    # the third candidate cannot meet the budget (BitFit alone has a fixed size): its trials fail
    {"name": "strategies-G1", "component": "strategies",
     "candidates": ["strategies=G1:L", "strategies=G1:A", "strategies=G1:B,tunable=G1"]},
]
N = 2
N_TRIALS = sum(len(s["candidates"]) for s in STAGES) * N


def write_csv(path: Path, n: int = 240) -> Path:
    rng = random.Random(0)
    pos, neg = ["good", "great", "lovely", "fun", "superb"], ["bad", "awful", "dull", "boring", "poor"]
    fill = ["the", "movie", "was", "a", "plot", "and", "very", "story", "acting", "really"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            words = [rng.choice(fill) for _ in range(5)] + [rng.choice(pos if i % 2 else neg) for _ in range(2)]
            rng.shuffle(words)
            w.writerow([" ".join(words), "positive" if i % 2 else "negative"])
    return path


def search_dict(csv_path: Path, **over) -> dict:
    d = {"model": "tiny-bert", "task": f"csv:{csv_path}", "task_args": {"text_column": "text", "label_column": "label"},
         "budget": "3072", "space": "S0,groups=2", "samples": N, "seed": 0, "stages": STAGES,
         "trial": {"steps": 60, "batch_size": 16, "lr": 1e-2, "max_length": 24, "dev_examples": None,
                   "test_examples": 8},
         "final": {"methods": ["lora"], "steps": 10, "batch_size": 16, "max_length": 24}}
    d.update(over)
    return d


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def records(store_path) -> dict[str, dict]:
    """What must agree between runs of the same search: per trial id, everything but claim bookkeeping."""
    with TrialStore(store_path) as s:
        return {t.id: {"stage": t.stage, "candidate": t.candidate, "index": t.index, "seed": t.seed,
                       "status": t.status, "score": t.score, "design": t.design, "plan": t.plan, "config": t.config,
                       "trainable_params": t.trainable_params, "dev": (t.metrics or {}).get("dev"),
                       "loss": (t.metrics or {}).get("train_loss_last"),
                       "error": (t.error or "").splitlines()[0] if t.error else None}
                for t in s.trials()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    csv_path = write_csv(d / "reviews.csv")
    cfg = d / "search.yaml"
    cfg.write_text(yaml.safe_dump(search_dict(csv_path)), encoding="utf-8")
    return d, cfg


@pytest.fixture(scope="module")
def reference(workdir):
    d, cfg = workdir
    spec = build_spec(cfg)
    console = quiet()
    res = run_search(spec, d / "ref" / "trials.sqlite", cpus=1, console=console, live=False)
    res["log"] = console.file.getvalue()
    res["spec"] = spec
    return res


# ---- the refinement ---------------------------------------------------------------------------------
def test_whole_refinement_on_a_tiny_model(reference):
    res, spec = reference, reference["spec"]
    with TrialStore(res["store"]) as s:
        trials = s.trials()
    assert len(trials) == N_TRIALS and len({t.id for t in trials}) == N_TRIALS
    assert all(t.status in ("done", "failed") for t in trials)
    scores = [t.score for t in trials if t.status == "done"]
    assert len(set(scores)) > 1, "trials should not all score the same"
    for o in res["outcomes"]:
        d = o.decision
        assert not d["skipped"] and d["winner"] in o.stage.candidates
        mine = [t for t in trials if t.stage == o.stage.name]
        for cand in o.stage.candidates:  # the same N and the same seeds for every candidate
            ts = sorted((t for t in mine if t.candidate == cand), key=lambda t: t.index)
            assert [t.index for t in ts] == list(range(N)) and [t.seed for t in ts] == [spec.trial_seed(i) for i in range(N)]
            assert {t.config["sample_seed"] for t in ts} == {d["sample_seed"]}
            assert all(t.config["train"]["lr"] == 1e-2 for t in ts)  # nuisance variable, recorded
        # the decision is a function of the stored trials only
        again = decide(o.stage, _space_before(res, o), mine, N)
        assert again["winner"] == d["winner"]
        assert [r["name"] for r in again["rows"]] == [r["name"] for r in d["rows"]]
        best = d["rows"][0]
        assert best["chosen"] and best["diff_to_best"] == 0.0
        for r in d["rows"][1:]:
            if r["n"]:
                assert r["ci_low"] <= r["diff_to_best"] <= r["ci_high"] and r["diff_to_best"] <= 0
    # the discovered design: the best trial of the last stage's winner
    disc = res["discovered"]
    last = res["outcomes"][-1].decision
    assert disc.candidate == last["winner"] and disc.score == max(
        t.score for t in trials if t.stage == disc.stage and t.candidate == disc.candidate and t.status == "done")
    # the final comparison: the discovered design beside the baseline
    assert [r["method"] for r in res["final"]["rows"]] == ["discovered", "lora"]
    assert all(r["n"] == 1 and 0 <= r["test_median"] <= 1 for r in res["final"]["rows"])
    # progress lines (no terminal: one line per finished trial)
    assert "trial 1/" in res["log"] and "best " in res["log"] and "ETA" in res["log"]


def _space_before(res, outcome):
    from peftspace.spaces import parse_space

    space = parse_space(res["spec"].space)
    for o in res["outcomes"]:
        if o is outcome:
            return space
        space = space.refine(o.decision["winner"])
    raise AssertionError


def test_failed_trials_are_recorded_and_the_search_goes_on(reference):
    with TrialStore(reference["store"]) as s:
        failed = s.trials(status="failed")
    assert {t.candidate for t in failed} == {"strategies=G1:B,tunable=G1"} and len(failed) == N
    assert all("cannot meet budget" in t.error for t in failed)
    row = next(r for r in reference["outcomes"][-1].decision["rows"] if r["name"] == "strategies=G1:B,tunable=G1")
    assert row["n"] == 0 and row["failed"] == N and not row["chosen"]


def test_a_trial_that_raises_is_recorded_with_its_error(workdir, monkeypatch, tmp_path):
    d, cfg = workdir
    spec = build_spec(cfg, [], stages=[STAGES[0]], **{"final.enabled": False})
    real = execute.run_trial

    def flaky(row, threads=None):
        if row.candidate == "allocation=increasing" and row.index == 1:
            raise RuntimeError("injected failure")
        return real(row, threads=threads)

    monkeypatch.setattr(execute, "run_trial", flaky)
    res = run_search(spec, tmp_path / "trials.sqlite", cpus=1, console=quiet(), live=False, report=False)
    with TrialStore(res["store"]) as s:
        trials = s.trials()
    bad = [t for t in trials if t.status == "failed"]
    assert len(trials) == 2 * N and len(bad) == 1
    assert bad[0].error.startswith("RuntimeError: injected failure") and bad[0].environment["threads"] >= 1
    assert res["outcomes"][0].decision["winner"]  # decided on what finished


# ---- resuming ---------------------------------------------------------------------------------------
def test_sigkill_mid_trial_then_rerun_equals_uninterrupted(workdir, reference, tmp_path):
    d, cfg = workdir
    store = tmp_path / "trials.sqlite"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "peftspace.cli", "search", "--config", str(cfg), "--store", str(store), "--no-final",
           "--cpus-per-trial", "1"]
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    status: dict[str, str] = {}
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            status = _statuses(store)
            if list(status.values()).count("done") >= 1 and "running" in status.values():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the search ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    before = {i: v for i, v in records(store).items() if v["status"] in ("done", "failed")}
    with TrialStore(store) as s:
        killed = s.trials(status="running")
        stamps = {t.id: (t.updated, t.attempts) for t in s.trials() if t.status == "done"}
    assert len(killed) == 1 and before

    spec = build_spec(cfg, [], **{"final.enabled": False})
    run_search(spec, store, cpus=1, console=quiet(), live=False, report=False)
    after, ref = records(store), records(reference["store"])
    assert sorted(after) == sorted(ref)  # the same trial ids, none lost, none extra (ids are the primary key)
    assert after == ref  # and the same designs, plans, scores and errors
    with TrialStore(store) as s:
        for t in s.trials():
            if t.id in stamps:  # finished before the kill: never run again
                assert (t.updated, t.attempts) == stamps[t.id]
        assert s.get(killed[0].id).attempts == 2 and s.get(killed[0].id).status == "done"
        assert s.integrity_check() == "ok"


def _statuses(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return dict(con.execute("SELECT id, status FROM trials").fetchall())
        finally:
            con.close()
    except sqlite3.Error:
        return {}


def test_rerunning_a_finished_search_runs_nothing(workdir, reference):
    d, cfg = workdir
    before = records(reference["store"])
    with TrialStore(reference["store"]) as s:
        stamps = {t.id: t.updated for t in s.trials()}
    res = run_search(build_spec(cfg), reference["store"], cpus=1, console=quiet(), live=False, report=False)
    assert records(reference["store"]) == before
    with TrialStore(reference["store"]) as s:
        assert {t.id: t.updated for t in s.trials()} == stamps
    assert all(o.reused for o in res["outcomes"])
    assert res["final"]["rows"] == reference["final"]["rows"]  # final runs reused from their records


# ---- backends ---------------------------------------------------------------------------------------
def test_worker_processes_give_the_same_records(workdir, reference, tmp_path):
    d, cfg = workdir
    spec = build_spec(cfg, [], **{"final.enabled": False})
    res = run_search(spec, tmp_path / "trials.sqlite", workers=2, console=quiet(), live=False, report=False)
    assert records(res["store"]) == records(reference["store"])
    with TrialStore(res["store"]) as s:
        done = s.trials(status="done")
    assert {t.environment["threads"] for t in done} == {max(1, execute.threads_per_worker(2))}
    assert len({t.environment["pid"] for t in done}) >= 1 and all(t.environment["pid"] != os.getpid() for t in done)


@pytest.mark.ray
def test_ray_backend_gives_the_same_records(workdir, reference, tmp_path):
    ray = pytest.importorskip("ray", reason="the optional ray extra is not installed (pip install 'peftspace[ray]')")
    d, cfg = workdir
    spec = build_spec(cfg, [], **{"final.enabled": False})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_search(spec, tmp_path / "trials.sqlite", backend="ray", cpus=1, console=quiet(), live=False,
                         report=False)
    finally:
        ray.shutdown()
    assert records(res["store"]) == records(reference["store"])
    with TrialStore(res["store"]) as s:
        done = s.trials(status="done")
    assert all(t.environment["pid"] != os.getpid() for t in done)  # ran in Ray workers
    assert all(t.worker.startswith("ray@") for t in done)


# ---- command line and report ------------------------------------------------------------------------
def test_trials_json(reference, capsys):
    assert cli_main(["trials", reference["store"], "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == N_TRIALS
    assert {"id", "stage", "candidate", "index", "seed", "lr", "status", "score", "error"} <= set(rows[0])
    assert {r["status"] for r in rows} == {"done", "failed"}
    assert all((r["score"] is None) == (r["status"] == "failed") for r in rows)
    assert cli_main(["trials", reference["store"]]) == 0
    assert "strategies-G1" in capsys.readouterr().out


def test_report(reference, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli_main(["report", reference["store"], "--out", str(out)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    for stage in STAGES:
        assert f"<h3>{stage['name']}" in html and f"### {stage['name']}" in md
        for c in stage["candidates"]:
            assert f"<td>{c}</td>" in html
    assert html.count('<table class="stage">') == len(STAGES)
    assert "95% CI of Δ" in html and 'class="chosen"' in html and "Chosen:" in html
    assert "Discovered design" in html and "Final comparison" in html and "discovered (" in html
    assert html.count("data:image/png;base64,") == len(STAGES) + 2  # EDFs, allocation, comparison
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(STAGES) + 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for p in pngs:
        assert f"]({p.name})" in md
    assert "cannot meet budget" in md  # failed trials listed with their error


def test_search_help_and_config(capsys, workdir):
    d, cfg = workdir
    with pytest.raises(SystemExit):
        cli_main(["search", "--help"])
    text = capsys.readouterr().out
    assert "minilm on vader-movie" in text and "N=2" in text and "--workers" in text and "--backend" in text
    assert cli_main(["search", "--print-config", "--samples", "3", "--set", "trial.steps=12"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["samples"] == 3 and printed["trial"]["steps"] == 12 and printed["model"] == "minilm"
    assert [s["name"] for s in printed["stages"]][:3] == ["stage1-grouping", "stage2-allocation", "stage3-tunable"]


def test_spec_identity_and_errors(workdir):
    d, cfg = workdir
    a = build_spec(cfg)
    assert build_spec(cfg).search_id == a.search_id
    assert build_spec(cfg, ["final.steps=99"]).search_id == a.search_id  # the final run is not the trials'
    assert build_spec(cfg, ["trial.steps=31"]).search_id != a.search_id
    assert build_spec(cfg, ["trial.lr_range=[1e-4, 1e-2]"]).trial_lr(0) == build_spec(cfg, ["trial.lr_range=[1e-4, 1e-2]"]).trial_lr(0)
    with pytest.raises(SearchSpecError, match="unknown key"):
        build_spec(cfg, ["trial.stepz=3"])
    with pytest.raises(SearchSpecError, match="unknown stage"):
        build_spec(cfg, ["stages=[stage9]"])
    assert [s.name for s in build_spec(None, ["stages=paper"]).stages][-1] == "stage4-G4"
