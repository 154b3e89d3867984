"""Backends that run a stage's trials: in-process (sequential), spawned worker processes, or Ray.

Every backend follows the store's protocol, so any mix of them (and several `peftspace search`
processes on one store) cooperates: a trial is run only by whoever `claim`s it; a claim whose
process died (kill -9) or whose lease ran out becomes claimable again; `complete`/`fail` record
the outcome; `run(...)` returns once every given trial is final (done or failed), whoever ran it.
A trial's computation is `trial.run_trial(row)`, a pure function of its row.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import threading
import time
import traceback
from typing import Any, Callable, Protocol

from .store import Trial, TrialStore
from .trial import environment, run_trial, threads_per_worker

LEASE_SECONDS = 300.0  # renewed every LEASE_SECONDS / 4 while a trial runs
POLL_SECONDS = 0.3
FINAL = ("done", "failed")

OnUpdate = Callable[[list[Trial], "Trial | None"], None]  # (rows of the stage, trial just started or None)


def worker_name(kind: str) -> str:
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


def error_text(e: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
    return f"{type(e).__name__}: {e}\n{tb}".strip()


class _Heartbeat:
    """Renews the leases of trials this process runs, from a daemon thread."""

    def __init__(self, store: TrialStore, worker: str, lease: float):
        self.store, self.worker, self.lease = store, worker, lease
        self.ids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.lease / 4):
            for i in list(self.ids):
                try:
                    self.store.heartbeat(i, self.worker)
                except Exception:  # a busy store delays one beat; the lease has slack for three
                    pass

    def stop(self) -> None:
        self._stop.set()


def execute(store: TrialStore, trial: Trial, worker: str, threads: int, beat: _Heartbeat | None = None) -> None:
    """Run a trial this process has claimed and record the outcome (errors are recorded, not raised)."""
    t0 = time.perf_counter()
    if beat:
        beat.ids.add(trial.id)
    try:
        result = run_trial(trial, threads=threads)
    except Exception as e:  # noqa: BLE001 - any failure of one trial is recorded; the search goes on
        store.fail(trial.id, error_text(e), timings={"total_seconds": time.perf_counter() - t0},
                   environment=environment(threads))
    else:
        store.complete(trial.id, result["metrics"], result["score"], result["timings"], result["environment"],
                       result["trainable_params"])
    finally:
        if beat:
            beat.ids.discard(trial.id)


def _rows(store: TrialStore, ids: list[str]) -> list[Trial]:
    return [t for t in (store.get(i) for i in ids) if t is not None]


def _open(rows: list[Trial]) -> list[Trial]:
    return [t for t in rows if t.status not in FINAL]


def drain(store: TrialStore, ids: list[str], threads: int, on_update: OnUpdate | None = None,
          lease: float = LEASE_SECONDS, stop: Callable[[], bool] = lambda: False) -> None:
    """Claim and run, in this process, every trial of `ids` nobody else holds; wait for the rest."""
    worker = worker_name("local")
    beat = _Heartbeat(store, worker, lease)
    try:
        while not stop():
            rows = _rows(store, ids)
            if on_update:
                on_update(rows, None)
            if not _open(rows):
                return
            ran = False
            for t in _open(rows):
                if store.claim(t.id, worker, lease_seconds=lease):
                    claimed = store.get(t.id)
                    if on_update:
                        on_update(_rows(store, ids), claimed)
                    execute(store, claimed, worker, threads, beat)
                    ran = True
                    break  # re-read: other processes may have finished trials meanwhile
            if not ran:
                time.sleep(POLL_SECONDS)  # the open trials are running elsewhere
    finally:
        beat.stop()


class Backend(Protocol):
    name: str
    parallel: int

    def run(self, store: TrialStore, ids: list[str], on_update: OnUpdate | None = None) -> None: ...

    def close(self) -> None: ...


class LocalBackend:
    """Sequential, in this process (the default)."""

    name = "local"
    parallel = 1

    def __init__(self, threads: int | None = None):
        self.threads = threads or threads_per_worker(1)

    def run(self, store: TrialStore, ids: list[str], on_update: OnUpdate | None = None) -> None:
        drain(store, ids, self.threads, on_update)

    def close(self) -> None:
        pass


def _pool_worker(store_path: str, search: str, threads: int, stop, parent: int) -> None:
    """A spawned worker: claim and run any open trial of `search` until told to stop or orphaned."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    store = TrialStore(store_path)
    worker = worker_name("worker")
    beat = _Heartbeat(store, worker, LEASE_SECONDS)
    try:
        while not stop.is_set() and os.getppid() == parent:
            got = False
            for t in store.trials(search=search):
                if t.status in FINAL:
                    continue
                if store.claim(t.id, worker, lease_seconds=LEASE_SECONDS):
                    execute(store, store.get(t.id), worker, threads, beat)
                    got = True
                    break
            if not got:
                stop.wait(POLL_SECONDS)
    finally:
        beat.stop()
        store.close()


class ProcessBackend:
    """`workers` spawned processes, each claiming trials from the store (torch threads: cores // workers)."""

    name = "workers"

    def __init__(self, store_path: str, search: str, workers: int, threads: int | None = None):
        self.store_path, self.search = str(store_path), search
        self.parallel = max(1, int(workers))
        self.threads = threads or threads_per_worker(self.parallel)
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._procs: list[Any] = []

    def _start(self) -> None:
        self._procs = [p for p in self._procs if p.is_alive()]
        # Workers are fresh processes, so their OpenMP threads can be told to sleep rather than spin
        # while waiting (OMP_WAIT_POLICY is read once, at load): on a machine where other jobs hold
        # cores, spinning threads made a MiniLM step 5-10x slower (measured), sleeping ones do not.
        # Numerics do not change. A value set by the user is kept.
        saved = os.environ.get("OMP_WAIT_POLICY")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            while len(self._procs) < self.parallel:
                p = self._ctx.Process(target=_pool_worker, daemon=True,
                                      args=(self.store_path, self.search, self.threads, self._stop, os.getpid()))
                p.start()
                self._procs.append(p)
        finally:
            if saved is None:
                os.environ.pop("OMP_WAIT_POLICY", None)

    def run(self, store: TrialStore, ids: list[str], on_update: OnUpdate | None = None) -> None:
        self._start()
        while True:
            rows = _rows(store, ids)
            if on_update:
                on_update(rows, None)
            if not _open(rows):
                return
            if not any(p.is_alive() for p in self._procs):  # every worker died: finish here
                drain(store, ids, self.threads, on_update)
                return
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        self._stop.set()
        for p in self._procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        self._procs = []


def _ray_trial(row: dict, threads: int) -> dict:
    return run_trial(row, threads=threads)


class RayBackend:
    """Each trial a Ray task with `cpus` CPUs (= its torch threads) and `gpus` GPUs.

    This process claims the trials in the store (so a killed driver's trials become claimable again)
    and records results; the workers only compute `run_trial(row)`. With `address`, joins a running
    cluster (peftspace must be installed on its nodes); without, starts a local instance."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus: float | None = None, gpus: float = 0.0,
                 init_kwargs: dict | None = None):
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RuntimeError("--backend ray needs Ray: pip install 'peftspace[ray]' (or 'ray[default]')") from e
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, **(init_kwargs or {})}
            if address:
                kw["address"] = address
            ray.init(**kw)
            self._started = True
        total = float(ray.cluster_resources().get("CPU", 1))
        self.cpus = float(cpus) if cpus else 1.0
        self.gpus = float(gpus or 0.0)
        self.parallel = max(1, int(total // self.cpus))
        self._remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(_ray_trial)

    def run(self, store: TrialStore, ids: list[str], on_update: OnUpdate | None = None) -> None:
        ray = self.ray
        worker = worker_name("ray")
        beat = _Heartbeat(store, worker, LEASE_SECONDS)
        inflight: dict[Any, tuple[Trial, float]] = {}
        threads = max(1, int(self.cpus))
        try:
            while True:
                rows = _rows(store, ids)
                if on_update:
                    on_update(rows, None)
                open_rows = _open(rows)
                if not open_rows and not inflight:
                    return
                held = {t.id for t, _ in inflight.values()}
                for t in open_rows:
                    if t.id not in held and store.claim(t.id, worker, lease_seconds=LEASE_SECONDS):
                        row = store.get(t.id)
                        beat.ids.add(t.id)
                        inflight[self._remote.remote(_plain(row), threads)] = (row, time.perf_counter())
                        if on_update:
                            on_update(_rows(store, ids), row)
                if not inflight:
                    time.sleep(POLL_SECONDS)
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    row, t0 = inflight.pop(ref)
                    beat.ids.discard(row.id)
                    try:
                        res = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a RayTaskError wraps the trial's own error
                        cause = getattr(e, "cause", None) or e
                        store.fail(row.id, error_text(cause), timings={"total_seconds": time.perf_counter() - t0})
                    else:
                        store.complete(row.id, res["metrics"], res["score"], res["timings"], res["environment"],
                                       res["trainable_params"])
        finally:
            beat.stop()
            for ref in inflight:  # interrupted: leave claims to expire / dead-pid detection
                try:
                    ray.cancel(ref)
                except Exception:
                    pass

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def _plain(row: Trial) -> dict:
    import dataclasses

    return dataclasses.asdict(row)


def make_backend(kind: str, store_path: str, search: str, workers: int = 1, address: str | None = None,
                 cpus: float | None = None, gpus: float = 0.0) -> Backend:
    if kind == "ray":
        return RayBackend(address=address, cpus=cpus, gpus=gpus)
    if kind != "local":
        raise ValueError(f"--backend {kind!r}: valid are local, ray")
    if workers and workers > 1:
        return ProcessBackend(store_path, search, workers, threads=int(cpus) if cpus else None)
    return LocalBackend(threads=int(cpus) if cpus else None)
