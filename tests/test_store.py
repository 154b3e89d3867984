"""The trial store: idempotence, claim semantics, multi-process races and SIGKILL safety."""

from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import pickle
import signal
import sqlite3
import time

import numpy as np
import pytest

from peftspace.search import store as store_module
from peftspace.search.store import SCHEMA_VERSION, Trial, TrialStore, canonical_json

SEARCH, STAGE = "s", "stage1"


def make(index: int = 0, candidate: str = "c", seed: int | None = None, search: str = SEARCH, **config) -> Trial:
    seed = index if seed is None else seed
    return Trial.new(search, STAGE, candidate, index, seed, config={"lr": 1e-3, **config}, design={"i": index})


@pytest.fixture
def store(tmp_path):
    with TrialStore(tmp_path / "trials.sqlite") as s:
        yield s


# -- identity and idempotence ---------------------------------------------------------


def test_trial_id_is_deterministic_and_pinned():
    args = (SEARCH, STAGE, "c", 3, 7, {"b": [1, 2], "a": {"y": 1, "x": 2.5}})
    tid = TrialStore.trial_id(*args)
    assert tid == TrialStore.trial_id(*args)
    assert len(tid) == 16 and all(ch in "0123456789abcdef" for ch in tid)
    # Key order is irrelevant; numpy scalars hash like the Python numbers they hold.
    assert tid == TrialStore.trial_id(SEARCH, STAGE, "c", np.int64(3), np.int32(7), {"a": {"x": 2.5, "y": 1}, "b": [1, 2]})
    # Pinned: a change in the id recipe would orphan every existing store.
    assert tid == "5ebd8a945938b95c", tid


def test_trial_id_sensitive_to_every_field():
    base = dict(search="s", stage="st", candidate="c", index=0, seed=0, config={"lr": 0.1})
    changes = dict(search="s2", stage="st2", candidate="c2", index=1, seed=1, config={"lr": 0.2})
    ids = {TrialStore.trial_id(**base)}
    for key, value in changes.items():
        ids.add(TrialStore.trial_id(**{**base, key: value}))
    ids.add(TrialStore.trial_id(**{**base, "config": {"lr": 0.1, "extra": None}}))
    assert len(ids) == len(changes) + 2


def test_add_is_idempotent(store):
    t = make(0)
    first = store.add(t)
    again = store.add(Trial.new(SEARCH, STAGE, "c", 0, 0, config={"lr": 1e-3}, design={"different": True}))
    assert again.id == first.id == t.id
    assert again.design == {"i": 0}  # the stored row wins
    assert len(store.trials()) == 1
    store.add_many([make(0), make(1), make(2)])
    assert [t.index for t in store.trials()] == [0, 1, 2]


def test_json_columns_are_canonical_and_round_trip(store):
    t = make(0)
    t.config = {"z": np.float32(0.5), "a": (1, 2)}
    t.id = TrialStore.trial_id(SEARCH, STAGE, "c", 0, 0, t.config)
    store.add(t)
    raw = sqlite3.connect(store.path).execute("SELECT config FROM trials").fetchone()[0]
    assert raw == canonical_json({"a": [1, 2], "z": 0.5}) == '{"a":[1,2],"z":0.5}'
    assert store.get(t.id).config == {"a": [1, 2], "z": 0.5}


# -- claim semantics ------------------------------------------------------------------


def test_claim_complete_and_done_is_final(store):
    t = store.add(make(0))
    assert t.status == "pending" and t.attempts == 0
    assert store.claim(t.id, "w1")
    assert not store.claim(t.id, "w2")  # live lease
    assert not store.claim(t.id, "w1")  # a claim is a transition, not re-entrant
    running = store.get(t.id)
    assert (running.status, running.worker, running.attempts, running.pid) == ("running", "w1", 1, os.getpid())
    assert store.heartbeat(t.id, "w1") and not store.heartbeat(t.id, "w2")
    assert store.complete(t.id, {"acc": 0.9}, 0.9, {"train_s": 1.0}, {"torch": "x"}, 123)
    done = store.get(t.id)
    assert (done.status, done.score, done.trainable_params, done.metrics) == ("done", 0.9, 123, {"acc": 0.9})
    assert done.lease_until is None
    # Never run again, never overwritten, never downgraded.
    assert not store.claim(t.id, "w3") and not store.claim(t.id, "w3", retry_failed=True)
    assert not store.complete(t.id, {"acc": 0.1}, 0.1, {}, {}, 1)
    assert not store.fail(t.id, "late failure")
    assert store.get(t.id).score == 0.9 and store.get(t.id).status == "done"
    assert store.reset_running() == 0 and store.get(t.id).status == "done"


def test_failed_keeps_error_and_retries_only_on_request(store):
    t = store.add(make(0))
    assert store.claim(t.id, "w")
    assert store.fail(t.id, "Traceback: CUDA out of memory", timings={"s": 2.0})
    failed = store.get(t.id)
    assert failed.status == "failed" and "out of memory" in failed.error and failed.timings == {"s": 2.0}
    assert not store.claim(t.id, "w2")
    assert store.claim(t.id, "w2", retry_failed=True)
    assert store.get(t.id).attempts == 2
    assert store.complete(t.id, {}, float("nan"), {}, {}, 5)  # a NaN score is stored as "no score"
    assert store.get(t.id).score is None and store.get(t.id).error is None
    u = store.add(make(1))
    store.claim(u.id, "w")
    store.fail(u.id, "boom")
    assert store.reset_failed() == 1 and store.get(u.id).status == "pending"


def test_expired_lease_is_reclaimable(store):
    t = store.add(make(0))
    assert store.claim(t.id, "slow", lease_seconds=0.05)
    assert not store.claim(t.id, "other")  # holder (this live process) still within its lease
    time.sleep(0.1)
    assert not store.heartbeat(t.id, "other")
    assert store.claim(t.id, "other")
    assert store.get(t.id).worker == "other"
    assert not store.heartbeat(t.id, "slow")  # the old holder learns it lost the trial


def test_claim_next_walks_in_order(store):
    store.add_many([make(i, candidate=c) for c in ("b", "a") for i in range(2)])
    got = [store.claim_next("w", stage=STAGE) for _ in range(4)]
    assert [(t.candidate, t.index, t.status) for t in got] == [("a", 0, "running"), ("a", 1, "running"), ("b", 0, "running"), ("b", 1, "running")]
    assert store.claim_next("w") is None
    store.fail(got[0].id, "x")
    assert store.claim_next("w") is None
    assert store.claim_next("w", retry_failed=True).id == got[0].id


def test_reset_running_and_unknown_ids(store):
    t = store.add(make(0))
    store.claim(t.id, "w")
    assert store.reset_running(older_than=3600) == 0
    assert store.reset_running() == 1
    assert store.get(t.id).status == "pending" and store.claim(t.id, "w2")
    with pytest.raises(KeyError):
        store.claim("nope", "w")
    with pytest.raises(KeyError):
        store.complete("nope", {}, 1.0, {}, {}, 1)
    assert store.get("nope") is None


def test_filters_order_counts_and_meta(store, tmp_path):
    store.add_many([make(i, candidate=c) for c in ("b", "a") for i in (2, 0, 1)])
    got = store.trials(stage=STAGE)
    assert [(t.candidate, t.index) for t in got] == [(c, i) for c in ("a", "b") for i in (0, 1, 2)]
    assert len(store.trials(candidate="a")) == 3 and store.trials(search="other") == []
    store.claim(got[0].id, "w")
    assert store.counts() == {"pending": 5, "running": 1, "done": 0, "failed": 0}
    assert [t.id for t in store.trials(status="running")] == [got[0].id]
    assert store.get_meta("spec") is None
    store.set_meta("spec", {"n": 5})
    store.set_meta("spec", {"n": 6})
    assert store.get_meta("spec") == {"n": 6}
    assert store.get_meta("_schema") == {"version": SCHEMA_VERSION}
    with pytest.raises(ValueError):
        store.set_meta("_schema", {"version": 99})
    clone = pickle.loads(pickle.dumps(store))  # e.g. handed to a worker; reconnects lazily
    assert clone.get_meta("spec") == {"n": 6}
    clone.close()


def test_forked_child_opens_its_own_connection(store):
    t = store.add(make(0))
    assert store.get(t.id).status == "pending"  # the parent's connection is open now
    pid = os.fork()
    if pid == 0:  # child: the inherited store must transparently reconnect
        code = 1
        try:
            code = 0 if store.claim(t.id, "child") and store.complete(t.id, {}, 0.5, {}, {}, 1) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get(t.id).status == "done" and store.get(t.id).worker == "child"
    store.set_meta("after_fork", {"ok": True})  # the parent's own connection still works
    assert store.integrity_check() == "ok"


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "t.sqlite"
    TrialStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '{\"version\":999}' WHERE key = '_schema'")
    with pytest.raises(RuntimeError, match="schema version 999"):
        TrialStore(path)


# -- several processes ----------------------------------------------------------------
#
# Children are real spawned processes (multiprocessing, "spawn") but run only the stdlib
# and store.py: the target is the builtin ``exec`` of a small bootstrap that loads store.py
# from its file and then the worker function's own source.  Importing the package instead
# would load torch and transformers (seconds per child) for code that needs neither.

_BOOT = """
import importlib.util, sys, time
_spec = importlib.util.spec_from_file_location("peftspace_store_standalone", STORE_FILE)
_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _mod
_spec.loader.exec_module(_mod)
Trial, TrialStore = _mod.Trial, _mod.TrialStore
exec(FUNC_SRC)
globals()[FUNC_NAME](*ARGS)
"""


def _spawn(ctx, func, *args):
    env = {
        "STORE_FILE": store_module.__file__,
        "FUNC_SRC": inspect.getsource(func),
        "FUNC_NAME": func.__name__,
        "ARGS": args,
        "STAGE": STAGE,
        "BATCH": BATCH,
    }
    proc = ctx.Process(target=exec, args=(_BOOT, env), daemon=True)
    proc.start()
    return proc


BATCH = 200


def _race_worker(path, ids, worker, barrier, out):
    store = TrialStore(path)
    barrier.wait(timeout=60)  # everyone connected: start together
    out.put((worker, [tid for tid in ids if store.claim(tid, worker)]))
    # Stay alive until everyone is done: a dead worker's running trials are rightly reclaimable.
    barrier.wait(timeout=60)
    store.close()


def test_processes_racing_claim_each_trial_exactly_once(tmp_path):
    path = tmp_path / "race.sqlite"
    with TrialStore(path) as store:
        ids = [t.id for t in store.add_many([make(i) for i in range(200)])]
    ctx = mp.get_context("spawn")
    n_procs = 2
    barrier, out = ctx.Barrier(n_procs + 1), ctx.Queue()
    procs = [_spawn(ctx, _race_worker, str(path), ids, f"w{k}", barrier, out) for k in range(n_procs)]
    barrier.wait(timeout=60)
    results = dict(out.get(timeout=60) for _ in procs)
    barrier.wait(timeout=60)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [tid for got in results.values() for tid in got]
    assert sorted(claimed) == sorted(ids)  # every trial claimed, none twice
    with TrialStore(path) as store:
        rows = store.trials()
        assert all(t.status == "running" and t.attempts == 1 for t in rows)
        assert {t.id: t.worker for t in rows} == {tid: w for w, got in results.items() for tid in got}


def _busy_worker(path):
    """Hold a long lease on 'victim', then write big transactions until killed."""
    store = TrialStore(path)
    victim = store.add(Trial.new("victim", STAGE, "c", 0, 0, config={}))
    assert store.claim(victim.id, "doomed", lease_seconds=3600)
    i = 0
    while True:
        store.add_many([Trial.new(f"batch{i}", STAGE, "c", j, j, config={"pad": "x" * 200}) for j in range(BATCH)])
        store.heartbeat(victim.id, "doomed")
        store.set_meta("progress", {"i": i})
        i += 1


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.037])
def test_sigkill_mid_write_leaves_consistent_db_and_reclaimable_trial(tmp_path, delay):
    path = tmp_path / "kill.sqlite"
    TrialStore(path).close()
    proc = _spawn(mp.get_context("spawn"), _busy_worker, str(path))
    with TrialStore(path) as watcher:
        deadline = time.monotonic() + 60
        while (watcher.get_meta("progress") or {}).get("i", -1) < 3:
            assert proc.is_alive() and time.monotonic() < deadline
            time.sleep(0.005)
    time.sleep(delay)  # somewhere inside the write loop
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL

    with TrialStore(path) as store:
        assert store.integrity_check() == "ok"
        last = store.get_meta("progress")["i"]
        sizes = {}
        for t in store.trials(stage=STAGE):
            sizes[t.search] = sizes.get(t.search, 0) + 1
        assert sizes.pop("victim") == 1
        assert set(sizes.values()) == {BATCH}  # each batch all or nothing
        assert len(sizes) in (last + 1, last + 2)  # killed before or after recording progress
        (v,) = store.trials(search="victim")
        assert v.status == "running" and v.worker == "doomed" and v.lease_until > time.time() + 3000
        # Its lease is live, but its process is dead on this host: claimable now, no waiting.
        assert store.claim(v.id, "rescuer")
        assert store.get(v.id).attempts == 2
