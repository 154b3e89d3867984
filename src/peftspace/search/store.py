"""A resumable trial store on embedded SQLite (stdlib ``sqlite3``).

Why SQLite: a design-space search (Chen et al. 2023) trains hundreds of small
trials per stage, often from several worker processes, and is routinely killed
and resumed.  SQLite in WAL mode gives us atomic single-file transactions that
several processes on one host can write concurrently, survives ``SIGKILL`` at
any instant (the journal is rolled back or forward on the next open), and needs
no server.

Life of a trial::

    pending --claim--> running --complete--> done      (final, never run again)
                          |  \\--fail------> failed    (kept with its error; retried only on request)
                          \\-- lease expired or worker pid dead --> claimable again

Every state change is one transaction.  Writers take the write lock up front
(``BEGIN IMMEDIATE``) so a read-decide-write sequence such as :meth:`TrialStore.claim`
is atomic across processes.  JSON columns hold canonical JSON text (sorted keys,
compact separators) so equal dicts are stored as equal strings.

Limitations: WAL needs shared memory, so every writer must be on the same host
(no network file systems).  Dead workers are detected by pid on the same host
name; containers sharing a host name but not a pid namespace should pass
``check_pids=False`` and rely on leases alone.  Python's ``json`` writes non-finite floats as the
non-standard tokens ``NaN``/``Infinity``; they round-trip through this store but
not through strict JSON parsers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

__all__ = ["SCHEMA_VERSION", "STATUSES", "Trial", "TrialStore", "canonical_json"]

#: Bumped whenever the table layout changes; stored in the ``meta`` table.
SCHEMA_VERSION = 1
#: Meta key holding the schema version; keys starting with ``_`` are reserved.
_SCHEMA_KEY = "_schema"
STATUSES = ("pending", "running", "done", "failed")
#: Default lease: a worker that neither finishes nor heartbeats within this many
#: seconds is presumed dead and its trial becomes claimable again.
DEFAULT_LEASE_SECONDS = 600.0


def _json_default(obj: Any) -> Any:
    """Make numpy scalars/arrays, paths and sets JSON-able without importing numpy."""
    if hasattr(obj, "tolist"):  # numpy scalar or array, torch tensor
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=canonical_json)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, UTF-8 kept as is.

    Used both for content hashes (:meth:`TrialStore.trial_id`) and for the JSON
    columns, so the same dict always gives the same bytes.  Note that ``1`` and
    ``1.0`` (and tuples vs lists: both become arrays) are distinguished only as
    JSON distinguishes them.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _dumps(obj: Any) -> str | None:
    return None if obj is None else canonical_json(obj)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass
class Trial:
    """One training run of one sampled design under one candidate constraint.

    ``index`` is the sample's position within its candidate and ``seed`` the seed
    it was sampled/trained with; candidates of a stage share both, which is what
    makes paired comparisons possible (see :mod:`peftspace.search.stats`).
    ``lease_until``, ``host`` and ``pid`` describe the current claim and are
    maintained by the store.
    """

    id: str
    search: str
    stage: str
    candidate: str
    index: int
    seed: int
    status: str = "pending"
    design: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: dict | None = None
    score: float | None = None
    trainable_params: int | None = None
    timings: dict | None = None
    environment: dict | None = None
    error: str | None = None
    worker: str | None = None
    attempts: int = 0
    created: float = 0.0
    updated: float = 0.0
    lease_until: float | None = None
    host: str | None = None
    pid: int | None = None

    @classmethod
    def new(
        cls,
        search: str,
        stage: str,
        candidate: str,
        index: int,
        seed: int,
        config: dict,
        design: dict | None = None,
        plan: dict | None = None,
    ) -> "Trial":
        """A pending trial whose id is the content hash of its identifying fields."""
        now = time.time()
        return cls(
            id=TrialStore.trial_id(search, stage, candidate, index, seed, config),
            search=search,
            stage=stage,
            candidate=candidate,
            index=int(index),
            seed=int(seed),
            design=dict(design or {}),
            plan=dict(plan or {}),
            config=dict(config),
            created=now,
            updated=now,
        )


_COLUMNS = (
    "id", "search", "stage", "candidate", "idx", "seed", "status", "design", "plan", "config",
    "metrics", "score", "trainable_params", "timings", "environment", "error", "worker",
    "attempts", "created", "updated", "lease_until", "host", "pid",
)  # fmt: skip
_JSON_FIELDS = ("design", "plan", "config", "metrics", "timings", "environment")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    id               TEXT PRIMARY KEY,
    search           TEXT NOT NULL,
    stage            TEXT NOT NULL,
    candidate        TEXT NOT NULL,
    idx              INTEGER NOT NULL,
    seed             INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    design           TEXT NOT NULL,
    plan             TEXT NOT NULL,
    config           TEXT NOT NULL,
    metrics          TEXT,
    score            REAL,
    trainable_params INTEGER,
    timings          TEXT,
    environment      TEXT,
    error            TEXT,
    worker           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created          REAL NOT NULL,
    updated          REAL NOT NULL,
    lease_until      REAL,
    lease_seconds    REAL,
    host             TEXT,
    pid              INTEGER
);
CREATE INDEX IF NOT EXISTS trials_order ON trials (search, stage, candidate, idx);
CREATE INDEX IF NOT EXISTS trials_status ON trials (status);
"""


#: Connections inherited across ``fork``.  SQLite forbids using them in the child, and
#: closing one counts as use (it could checkpoint or drop the parent's WAL), so the
#: child keeps them referenced, untouched, until it exits.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live (non-zombie) process on this host.

    Errs on the side of "alive": a recycled pid only delays reclaiming until the
    lease expires, never lets two live workers run the same trial.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    try:  # a killed but unreaped child is a zombie: it answers kill(0) yet will never heartbeat
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


class TrialStore:
    """Trials and search metadata in one SQLite file, safe for several processes.

    One instance holds one connection guarded by a lock, so it may be shared by
    threads of a process (e.g. a heartbeat thread); after ``fork`` the child
    transparently opens its own connection.
    """

    def __init__(
        self, path: str | Path, busy_timeout: float = 60.0, synchronous: str = "FULL", check_pids: bool = True
    ):
        """Open (creating if needed) the store at ``path``.

        ``synchronous="FULL"`` fsyncs each commit, so even a power cut cannot
        undo a recorded result (trials take seconds to minutes; the fsync is
        noise).  ``check_pids=False`` turns off reclaiming trials of dead local
        workers before their lease ends, for hosts whose workers live in
        separate pid namespaces under one host name.
        """
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous mode {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = float(busy_timeout)
        self.synchronous = synchronous.upper()
        self.check_pids = check_pids
        self.host = socket.gethostname()
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._owner_pid = -1
        self._init_schema()

    # -- connection and transactions -------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._owner_pid != os.getpid():
            if self._conn is not None:  # inherited across fork: never use (or close) it here
                _INHERITED_CONNECTIONS.append(self._conn)
            conn = sqlite3.connect(
                str(self.path), timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            deadline = time.monotonic() + self.busy_timeout
            while True:  # switching to WAL needs a moment without other writers
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._conn, self._owner_pid = conn, os.getpid()
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from the start."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def _init_schema(self) -> None:
        with self._tx() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SCHEMA_KEY,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    (_SCHEMA_KEY, canonical_json({"version": SCHEMA_VERSION})),
                )
            else:
                version = json.loads(row[0]).get("version")
                if version != SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path}: trial store schema version {version}, this peftspace reads {SCHEMA_VERSION}"
                    )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                if self._owner_pid == os.getpid():
                    self._conn.close()
                else:
                    _INHERITED_CONNECTIONS.append(self._conn)
            self._conn = None

    def __enter__(self) -> "TrialStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # Picklable (e.g. to hand to a spawned worker): the connection is reopened there.
        state = self.__dict__.copy()
        state.update(_conn=None, _owner_pid=-1, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- identity ----------------------------------------------------------------------

    @staticmethod
    def trial_id(search: str, stage: str, candidate: str, index: int, seed: int, config: dict) -> str:
        """Deterministic id: sha256 of the canonical JSON of the identifying fields, 16 hex digits.

        Re-planning a search therefore yields the same ids, which is what makes
        :meth:`add` idempotent and a resumed search skip finished trials.
        """
        key = {
            "search": search,
            "stage": stage,
            "candidate": candidate,
            "index": int(index),
            "seed": int(seed),
            "config": config,
        }
        return hashlib.sha256(canonical_json(key).encode("utf-8")).hexdigest()[:16]

    # -- writes ------------------------------------------------------------------------

    @staticmethod
    def _row_values(trial: Trial) -> tuple:
        if trial.status not in STATUSES:
            raise ValueError(f"unknown status {trial.status!r}")
        now = time.time()
        values = []
        for col in _COLUMNS:
            name = "index" if col == "idx" else col
            value = getattr(trial, name)
            if name in _JSON_FIELDS:
                value = _dumps(value)
                if value is None and name in ("design", "plan", "config"):
                    value = "{}"
            elif name in ("created", "updated") and not value:
                value = now
            values.append(value)
        return tuple(values)

    def add(self, trial: Trial) -> Trial:
        """Insert ``trial`` unless a trial with its id exists; return the stored row either way."""
        return self.add_many([trial])[0]

    def add_many(self, trials: list[Trial]) -> list[Trial]:
        """:meth:`add` for many trials in one transaction (all or none are inserted)."""
        placeholders = ", ".join("?" for _ in _COLUMNS)
        sql = f"INSERT OR IGNORE INTO trials ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
        rows = [self._row_values(t) for t in trials]
        with self._tx() as conn:
            conn.executemany(sql, rows)
            stored = [self._fetch(conn, t.id) for t in trials]
        return [t for t in stored if t is not None]

    def claim(
        self,
        trial_id: str,
        worker: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retry_failed: bool = False,
    ) -> bool:
        """Atomically move a trial to ``running`` for ``worker``; True if this call got it.

        Claimable: ``pending``; ``running`` whose lease expired or whose worker
        process is dead on this host; ``failed`` only with ``retry_failed``.
        Never claimable: ``done``, or a live lease held by anyone (including
        ``worker`` itself: a claim is a transition, not a re-entrant lock).
        """
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT status, lease_until, host, pid FROM trials WHERE id = ?", (trial_id,)
            ).fetchone()
            if row is None:
                raise KeyError(trial_id)
            status, lease_until, host, pid = row
            if status == "running":
                if not self._is_stale(lease_until, host, pid, now):
                    return False
            elif status == "failed":
                if not retry_failed:
                    return False
            elif status != "pending":
                return False
            conn.execute(
                "UPDATE trials SET status = 'running', worker = ?, host = ?, pid = ?, lease_until = ?, "
                "lease_seconds = ?, attempts = attempts + 1, updated = ? WHERE id = ?",
                (worker, self.host, os.getpid(), now + lease_seconds, lease_seconds, now, trial_id),
            )
        return True

    def claim_next(
        self,
        worker: str,
        search: str | None = None,
        stage: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retry_failed: bool = False,
    ) -> Trial | None:
        """Claim the first claimable trial in (stage, candidate, index) order; None when none is left.

        Candidates are tried one :meth:`claim` at a time, so workers racing on
        the same stage simply skip what another just took.
        """
        statuses = ("pending", "running", "failed") if retry_failed else ("pending", "running")
        where, params = self._where(search=search, stage=stage)
        where = (where + " AND" if where else "WHERE") + f" status IN ({', '.join('?' for _ in statuses)})"
        rows = self._read(f"SELECT id FROM trials {where} ORDER BY stage, candidate, idx, id", (*params, *statuses))
        for (trial_id,) in rows:
            if self.claim(trial_id, worker, lease_seconds=lease_seconds, retry_failed=retry_failed):
                return self.get(trial_id)
        return None

    def _is_stale(self, lease_until: float | None, host: str | None, pid: int | None, now: float) -> bool:
        if lease_until is None or lease_until <= now:
            return True
        return self.check_pids and host == self.host and pid is not None and not _pid_alive(pid)

    def heartbeat(self, trial_id: str, worker: str) -> bool:
        """Extend ``worker``'s lease on a running trial; False if it no longer holds it."""
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE trials SET lease_until = ? + COALESCE(lease_seconds, ?), updated = ? "
                "WHERE id = ? AND status = 'running' AND worker = ?",
                (now, DEFAULT_LEASE_SECONDS, now, trial_id, worker),
            )
            return cur.rowcount == 1

    def complete(
        self,
        trial_id: str,
        metrics: dict,
        score: float | None,
        timings: dict | None = None,
        environment: dict | None = None,
        trainable_params: int | None = None,
    ) -> bool:
        """Record a finished trial as ``done``; False (and nothing written) if it was already done.

        Accepted from any state but ``done``: a worker whose lease lapsed while it
        was still training produced a valid result, and the first result wins.
        A non-finite score is stored as NULL (``None``); the metrics keep the detail.
        """
        if score is not None:
            score = float(score)
            if not math.isfinite(score):
                score = None
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE trials SET status = 'done', metrics = ?, score = ?, timings = ?, environment = ?, "
                "trainable_params = ?, error = NULL, lease_until = NULL, updated = ? "
                "WHERE id = ? AND status != 'done'",
                (_dumps(metrics), score, _dumps(timings), _dumps(environment),
                 None if trainable_params is None else int(trainable_params), now, trial_id),
            )  # fmt: skip
            if cur.rowcount == 0:
                self._require(conn, trial_id)
            return cur.rowcount == 1

    def fail(
        self, trial_id: str, error: str, timings: dict | None = None, environment: dict | None = None
    ) -> bool:
        """Record a failed trial with its error text; a ``done`` trial is never downgraded."""
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE trials SET status = 'failed', error = ?, timings = COALESCE(?, timings), "
                "environment = COALESCE(?, environment), lease_until = NULL, updated = ? "
                "WHERE id = ? AND status != 'done'",
                (str(error), _dumps(timings), _dumps(environment), now, trial_id),
            )
            if cur.rowcount == 0:
                self._require(conn, trial_id)
            return cur.rowcount == 1

    def reset_running(self, older_than: float = 0) -> int:
        """Return ``running`` trials not updated for ``older_than`` seconds to ``pending``.

        For resuming after a crash when no worker is alive (``older_than=0``), or
        to sweep orphans without waiting for their leases.  Returns how many.
        """
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE trials SET status = 'pending', lease_until = NULL, updated = ? "
                "WHERE status = 'running' AND updated <= ?",
                (now, now - older_than),
            )
            return cur.rowcount

    def reset_failed(self, search: str | None = None, stage: str | None = None) -> int:
        """Return ``failed`` trials to ``pending`` (their error text is kept until they rerun)."""
        where, params = self._where(search=search, stage=stage, status="failed")
        with self._tx() as conn:
            cur = conn.execute(f"UPDATE trials SET status = 'pending', updated = ? {where}", (time.time(), *params))
            return cur.rowcount

    # -- reads -------------------------------------------------------------------------

    @staticmethod
    def _require(conn: sqlite3.Connection, trial_id: str) -> None:
        if conn.execute("SELECT 1 FROM trials WHERE id = ?", (trial_id,)).fetchone() is None:
            raise KeyError(trial_id)

    @staticmethod
    def _to_trial(row: tuple) -> Trial:
        values = dict(zip(_COLUMNS, row))
        values["index"] = values.pop("idx")
        for name in _JSON_FIELDS:
            values[name] = _loads(values[name])
        return Trial(**values)

    def _fetch(self, conn: sqlite3.Connection, trial_id: str) -> Trial | None:
        row = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM trials WHERE id = ?", (trial_id,)).fetchone()
        return None if row is None else self._to_trial(row)

    def get(self, trial_id: str) -> Trial | None:
        with self._lock:
            return self._fetch(self._connection(), trial_id)

    @staticmethod
    def _where(**filters: Any) -> tuple[str, tuple]:
        clauses = [f"{k} = ?" for k, v in filters.items() if v is not None]  # keys are ours, never user text
        params = tuple(v for v in filters.values() if v is not None)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    def trials(
        self,
        search: str | None = None,
        stage: str | None = None,
        candidate: str | None = None,
        status: str | None = None,
    ) -> list[Trial]:
        """Trials matching every given filter, ordered by (stage, candidate, index)."""
        where, params = self._where(search=search, stage=stage, candidate=candidate, status=status)
        rows = self._read(
            f"SELECT {', '.join(_COLUMNS)} FROM trials {where} ORDER BY stage, candidate, idx, id", params
        )
        return [self._to_trial(r) for r in rows]

    def counts(self, search: str | None = None, stage: str | None = None) -> dict[str, int]:
        """Number of trials in each status (all statuses present, zeros included)."""
        where, params = self._where(search=search, stage=stage)
        rows = self._read(f"SELECT status, COUNT(*) FROM trials {where} GROUP BY status", params)
        out = dict.fromkeys(STATUSES, 0)
        out.update(dict(rows))
        return out

    # -- metadata ----------------------------------------------------------------------

    def set_meta(self, key: str, value: dict) -> None:
        """Store a JSON-able dict under ``key`` (e.g. a search spec, a stage decision)."""
        if key.startswith("_"):
            raise ValueError(f"meta keys starting with '_' are reserved: {key!r}")
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, canonical_json(value)),
            )

    def get_meta(self, key: str) -> dict | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def integrity_check(self) -> str:
        """SQLite's own consistency check: ``"ok"`` for a sound file."""
        return self._read("PRAGMA integrity_check")[0][0]
