"""Database connection: SQLite file by default, PostgreSQL when AZAGUARD_DATABASE_URL says so.

The schema is created and upgraded only through Alembic migrations, so SQLite and PostgreSQL
always run the same schema.

Concurrency (docs/operations.md):

- SQLite runs in WAL mode (readers never block the writer or each other) with a busy timeout.
  A unit of work reads outside any transaction (each statement sees the latest committed data
  and takes no lock) and starts its transaction with `BEGIN IMMEDIATE` at its first write
  (INSERT, UPDATE, DELETE, DDL or SAVEPOINT). So a write never upgrades a deferred read
  transaction - the upgrade SQLite refuses with "database is locked" when another writer
  committed in between - and a request that only reads never takes the write lock. Writers
  queue on a write gate: a thread lock in the process (woken at once), then an exclusive flock
  across processes (server workers, a CLI import); other programs meet SQLite's busy timeout.
- The connection pool never makes a request wait for a connection on SQLite (unbounded, 40 kept)
  and on PostgreSQL holds as many connections as the server has worker threads (AnyIO's 40);
  `InFlightLimit` keeps fewer requests than that inside the application, so no request holding
  the write lock or a connection ever waits for a worker thread.
- Rows deferred with `defer_insert` (the audit trail) are inserted when the unit of work ends:
  with its writes, or - if it only read, on SQLite - by a group commit that writes the rows of
  many units of work in one short transaction. They are on disk before `session()` returns, so
  before any response is sent.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, exc, insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

log = logging.getLogger("azaguard.db")

DEFAULT_URL = "sqlite:///azaguard.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# AnyIO runs FastAPI's sync routes and dependencies on 40 worker threads by default.
WORKER_THREADS = 40
_DEFERRED = "azaguard.deferred"  # session.info: rows inserted when the unit of work ends
T = TypeVar("T")


class DatabaseBusy(RuntimeError):
    """The write lock could not be had within the busy timeout (another program holds it)."""


def database_url(url: str | None = None) -> str:
    return url or os.environ.get("AZAGUARD_DATABASE_URL") or DEFAULT_URL


def busy_timeout() -> float:
    """Seconds a writer waits for the write lock (SQLite) or a row lock (PostgreSQL) before giving up."""
    return float(os.environ.get("AZAGUARD_BUSY_TIMEOUT", "15"))


def pool_size() -> int:
    """Connections kept per process: one per worker thread (PostgreSQL adds 10 for the refresher,
    audit rows written after a rollback and login counters)."""
    return int(os.environ.get("AZAGUARD_POOL_SIZE", str(WORKER_THREADS)))


def max_in_flight() -> int:
    """Requests inside the application at once per process (InFlightLimit). Fewer than the worker
    threads: the thread holding the write lock then competes with fewer others for Python's GIL."""
    return min(pool_size(), int(os.environ.get("AZAGUARD_MAX_IN_FLIGHT", "16")))


# ---------------------------------------------------------------- SQLite
class _WriteGate:
    """One writer at a time per database file: a thread lock inside this process, then an
    exclusive `flock` on `<database>-writelock` across processes (the server's workers, a CLI
    import). Waiters are woken at once in-process and within 2 ms across processes, where
    SQLite's own busy handler would sleep up to 100 ms between tries.

    While a thread of this process writes, the process's other threads wait before their next
    statement (`give_way`) for the first GIVE_WAY seconds of its transaction: the writer then has
    Python's GIL to itself instead of waiting for it after each row SQLite hands back, and
    releases the write lock - which every other writer and every read's audit row waits for -
    several times sooner. A long transaction (an import chunk) is waited for only that long."""

    GIVE_WAY = 0.025
    YIELDING = 1.0

    def __init__(self, path: str) -> None:
        self.lock = threading.Lock()
        self.free = threading.Event()  # no thread of this process holds the gate
        self.free.set()
        self.holder: int | None = None  # the thread that holds it
        self.since = 0.0  # when it took it (time.monotonic)
        self.fd: int | None = None
        try:
            self.fd = os.open(path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:  # a read-only folder: SQLite's busy timeout alone orders the processes
            self.fd = None

    def acquire(self, timeout: float, yielding: bool = False) -> bool:
        """`yielding` (an import chunk): for its first YIELDING seconds of waiting, poll the lock
        across processes every 5 ms rather than every 2 ms at most, so the server's writers and
        group commits - polling faster - take it first while they queue for it."""
        started = time.monotonic()
        deadline = started + timeout
        if not self.lock.acquire(timeout=timeout):
            return False
        pause = 0.0002
        while self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    self.lock.release()
                    return False
                time.sleep(0.005 if yielding and now - started < self.YIELDING else pause)
                pause = min(pause * 2, 0.002)
        self.holder, self.since = threading.get_ident(), time.monotonic()
        self.free.clear()
        return True

    def release(self) -> None:
        self.holder = None
        self.free.set()
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.lock.release()

    def give_way(self) -> None:
        """Wait (briefly: see the class) while another thread of this process writes."""
        if self.free.is_set() or self.holder == threading.get_ident():
            return
        left = self.since + self.GIVE_WAY - time.monotonic()
        if left > 0:
            self.free.wait(left)


_gates: dict[str, _WriteGate] = {}
_gates_lock = threading.Lock()


def _gate(path: str) -> _WriteGate:
    key = os.path.realpath(path)
    with _gates_lock:
        if key not in _gates:
            _gates[key] = _WriteGate(key)
        return _gates[key]


class SQLiteConnection(sqlite3.Connection):
    """A pysqlite connection in manual transaction mode that starts write transactions with
    BEGIN IMMEDIATE (after the write gate) and leaves the gate when they end."""

    gate: _WriteGate | None = None
    wait: float = 15.0
    holds_gate: bool = False

    def begin_immediate(self, yielding: bool = False) -> None:
        if self.in_transaction:
            return
        gate = self.gate
        if gate is not None and not self.holds_gate:
            if not gate.acquire(self.wait, yielding):
                raise DatabaseBusy(f"the database stayed busy for {self.wait:.0f} s (another writer held it)")
            self.holds_gate = True
        try:
            self.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            self._leave()
            if "locked" in str(error) or "busy" in str(error):
                raise DatabaseBusy(
                    f"the database stayed locked for {self.wait:.0f} s (another program was writing)"
                ) from None
            raise
        except BaseException:
            self._leave()
            raise

    def _leave(self) -> None:
        if self.holds_gate and not self.in_transaction:
            self.holds_gate = False
            assert self.gate is not None
            self.gate.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._leave()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._leave()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.holds_gate and self.gate is not None:
                self.holds_gate = False
                self.gate.release()


_READS = ("SELECT", "PRAGMA", "EXPLAIN", "WITH", "VALUES")
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "RELEASE", "END")


def _is_write(statement: str) -> bool:
    head = statement.lstrip(" \t\r\n(")[:10].upper()
    return not head.startswith(_READS) and not head.startswith(_CONTROL)


def _sqlite_engine(url: str) -> Engine:
    path = make_url(url).database or ""
    memory = path in ("", ":memory:") or path.startswith("file::memory:")
    wait = busy_timeout()
    connect_args: dict[str, Any] = {
        "check_same_thread": False,
        "timeout": wait,  # SQLite's busy timeout: waits for a writer in another process
        "isolation_level": None,  # no implicit BEGIN: transactions are started below
        "factory": SQLiteConnection,
    }
    if memory:
        engine = create_engine(url, connect_args=connect_args)
    else:
        # Never waits for a connection (max_overflow=-1), so it cannot deadlock; keeps 40 open.
        engine = create_engine(
            url, connect_args=connect_args, poolclass=QueuePool, pool_size=pool_size(), max_overflow=-1
        )
    gate = None if memory else _gate(path)

    @event.listens_for(engine, "connect")
    def _sqlite_setup(conn: Any, _record: Any) -> None:
        if isinstance(conn, SQLiteConnection):
            conn.gate, conn.wait = gate, wait
        cur = conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "before_cursor_execute")
    def _begin_on_first_write(
        conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        raw = cursor.connection
        if not isinstance(raw, SQLiteConnection):
            return
        if not raw.in_transaction and _is_write(statement):
            raw.begin_immediate()
        elif raw.gate is not None and not raw.holds_gate:
            raw.gate.give_way()  # a read while another thread of this process writes

    return engine


# ---------------------------------------------------------------- engines
def make_engine(url: str | None = None) -> Engine:
    url = database_url(url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    timeout_ms = int(busy_timeout() * 1000)
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size(),
        max_overflow=10,  # the background refresher, audit rows after a rollback, login counters
        pool_timeout=busy_timeout() * 2,
        # A writer waiting for a row lock longer than this fails (DatabaseBusy) instead of hanging.
        connect_args={"options": f"-c lock_timeout={timeout_ms}"},
    )


def begin_write(target: Session | Connection, yielding: bool = False) -> None:
    """Take the write lock now, before the reads a write depends on (SQLite: BEGIN IMMEDIATE,
    unless the unit of work already writes; PostgreSQL: nothing - lock rows with FOR UPDATE).
    `yielding`: let other processes' waiting writers go first for a while (_WriteGate.acquire)."""
    conn = target.connection() if isinstance(target, Session) else target
    if conn.dialect.name != "sqlite":
        return
    raw = conn.connection.driver_connection
    if isinstance(raw, SQLiteConnection):
        raw.begin_immediate(yielding)


def is_writing(target: Session | Connection) -> bool:
    """Whether this unit of work holds the SQLite write lock already (always False on PostgreSQL)."""
    conn = target.connection() if isinstance(target, Session) else target
    raw = conn.connection.driver_connection
    return isinstance(raw, SQLiteConnection) and raw.in_transaction


def is_busy(error: BaseException) -> bool:
    """A lock that could not be had in time: SQLite 'database is locked', PostgreSQL lock timeout."""
    if isinstance(error, DatabaseBusy):
        return True
    if isinstance(error, exc.OperationalError | exc.DBAPIError):
        text = str(getattr(error, "orig", error)).lower()
        code = getattr(getattr(error, "orig", None), "sqlstate", None)
        return "database is locked" in text or "lock timeout" in text or code in ("55P03", "40P01")
    return False


def retry_busy(fn: Callable[[], T], attempts: int = 3) -> T:
    """Run fn again (it must be a whole unit of work) when the database was busy."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as error:
            if not is_busy(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class InFlightLimit:
    """ASGI wrapper: at most `limit` requests inside the application at once; the others wait in
    the event loop, holding no worker thread, connection or lock.

    FastAPI keeps a request's unit of work (a `yield` dependency) open across several hops to its
    40 worker threads - after a sync endpoint returns, its response model is validated in another
    hop, before the dependency commits. A request holding the write lock (or the last pooled
    connection) would then wait for a thread that every other request holds while waiting for that
    lock: a deadlock. With no more requests inside than worker threads (and pooled connections),
    a thread is always free for the one holding the lock."""

    def __init__(self, app: Any, limit: int | None = None) -> None:
        self.app = app
        self.limit = limit or max_in_flight()
        self._gate: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import asyncio

        if self._gate is None:
            self._gate = asyncio.Semaphore(self.limit)
        async with self._gate:
            await self.app(scope, receive, send)


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest migration (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


# ---------------------------------------------------------------- rows written at the end of a unit of work
@dataclass
class Deferred:
    """A row kept aside by `defer_insert` until its unit of work ends."""

    model: type[Any]
    values: dict[str, Any]
    keep: bool  # written even if the unit of work fails
    failed: dict[str, Any] | None = None  # if the unit of work fails: written with these values instead

    def fail(self, **values: Any) -> None:
        """What the row records has failed (and may have been rolled back to a savepoint while the
        unit of work goes on): from now on it is written with its `failed` values and `values`,
        whether the unit of work then commits or fails."""
        self.values = {**self.values, **(self.failed or {}), **values}
        self.failed, self.keep = None, True

    def after_rollback(self) -> dict[str, Any] | None:
        """The values to write after the unit of work failed; None: the row goes with it."""
        if self.keep:
            return self.values
        return None if self.failed is None else {**self.values, **self.failed}


def defer_insert(
    s: Session, model: type[Any], row: dict[str, Any], keep: bool = False, failed: dict[str, Any] | None = None
) -> Deferred | None:
    """Insert `row` (values of the mapped class `model`) when the unit of work ends: with its
    writes if it commits; if it fails, only when `keep` is set or the code committed after adding
    the row, or - with the `failed` values instead - when `failed` is given (an audit row that
    says a write failed). Written after a failure in a short transaction of its own.
    Returns the deferred row (its `fail()` records a failure the unit of work survives), or None
    if `s` is not a unit of work of `Database` (the caller must then add the row itself)."""
    pending = s.info.get(_DEFERRED)
    if pending is None:
        return None
    deferred = Deferred(model, row, keep, failed)
    pending.append(deferred)
    return deferred


def _committing(s: Session) -> None:
    """An explicit commit: rows deferred so far would have been committed by it, so they are kept."""
    if not s.in_nested_transaction():
        for row in s.info.get(_DEFERRED) or []:
            row.keep = True


def _insert_rows(conn: Connection, rows: list[Deferred]) -> None:
    """Insert deferred rows, one executemany per table and set of columns, in the order they came."""
    groups: dict[tuple[type[Any], tuple[str, ...]], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row.model, tuple(row.values)), []).append(row.values)
    for (model, _columns), values in groups.items():
        conn.execute(insert(model.__table__), values)


class _Handover:
    """Rows of one unit of work waiting for the group commit."""

    def __init__(self, rows: list[Deferred]) -> None:
        self.rows = rows
        self.done = threading.Event()  # written (or failed), or: this unit of work leads now
        self.lead = False  # handed the lead: write the queue (its own rows included)
        self.error: BaseException | None = None


class _GroupCommit:
    """SQLite: the rows of units of work that only read (their audit rows) are inserted many units
    of work to one short write transaction, so fifty reads take the write lock once, not fifty
    times. Each reading thread waits until its rows are committed (milliseconds), so they are on
    disk before its response is sent.

    The first thread to arrive leads: it writes everything queued by then (its own rows included)
    in one transaction, then hands the lead to the first thread that queued meanwhile, whose rows
    go in the next transaction with those of every thread that queued after it. A read on a quiet
    server thus writes its own row with no hand-over to another thread; under load the batches
    grow by themselves; and no thread writes more than one batch beyond its own. A write
    transaction of the process that commits meanwhile takes the queued rows along (`board`)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.lock = threading.Lock()
        self.queue: list[_Handover] = []
        self.leading = False

    def write(self, rows: list[Deferred]) -> None:
        item = _Handover(rows)
        with self.lock:
            self.queue.append(item)
            item.lead = not self.leading
            self.leading = True
        if not item.lead and not item.done.wait(busy_timeout() * 2):
            with self.lock:
                if not item.lead and item in self.queue:  # still waiting: leave the queue, unwritten
                    self.queue.remove(item)
                    raise DatabaseBusy("rows of a unit of work could not be committed in time")
            item.done.wait()  # written or handed the lead meanwhile: that takes no longer than a batch
        if item.lead:
            self._lead()
        if item.error is not None:
            raise item.error

    def _lead(self) -> None:
        with self.lock:
            batch, self.queue = self.queue, []
        try:
            retry_busy(functools.partial(self._insert, batch), attempts=3)
        except BaseException as error:  # every unit of work of the batch fails with it
            for item in batch:
                item.error = error
        with self.lock:
            following = self.queue[0] if self.queue else None
            if following is not None:
                following.lead = True
            else:
                self.leading = False
        for item in batch:
            item.done.set()
        if following is not None:
            following.done.set()

    def _insert(self, batch: list[_Handover]) -> None:
        with self.db.engine.begin() as conn:  # Core: no ORM bookkeeping for rows written as they are
            _insert_rows(conn, [row for item in batch for row in item.rows])

    def board(self, conn: Connection) -> list[_Handover]:
        """A write transaction of this process about to commit takes the rows waiting in the queue
        along (inserted here, on its connection): they are committed with it, without a group commit
        of their own - the write lock is taken once for both, and those reads need not wait for it
        after the writer. Not the rows of a unit of work handed the lead (it writes the queue
        itself). Rows that cannot be inserted here stay queued: a read's row never fails a write."""
        with self.lock:
            riders = [item for item in self.queue if not item.lead]
            if not riders:
                return []
            self.queue = [item for item in self.queue if item.lead]
        try:
            _insert_rows(conn, [row for item in riders for row in item.rows])
        except Exception:
            self.alight(riders, committed=False)
            return []
        return riders

    def alight(self, riders: list[_Handover], committed: bool) -> None:
        """The write transaction that took `riders` along has ended: their units of work go on
        (committed), or their rows go back to the front of the queue for the group commit (the
        transaction rolled back), one of them taking the lead if nobody has it."""
        if committed:
            for item in riders:
                item.done.set()
            return
        with self.lock:
            self.queue[:0] = riders
            first = None if self.leading else riders[0]
            if first is not None:
                first.lead = self.leading = True
        if first is not None:
            first.done.set()


class Database:
    """An engine plus a session factory; one per process."""

    def __init__(self, url: str | None = None, create: bool = True) -> None:
        self.url = database_url(url)
        self.engine = make_engine(self.url)
        if create:
            migrate(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self.sessions, "before_commit", _committing)
        memory = self.engine.url.database in (None, "", ":memory:")  # one database per connection there
        self._group = _GroupCommit(self) if self.engine.dialect.name == "sqlite" and not memory else None

    def _new(self) -> Session:
        s = self.sessions()
        s.info[_DEFERRED] = []
        s.info["azaguard.db"] = self
        return s

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any error (nothing half-saved).

        Reads take no lock; on SQLite the first write starts the transaction with BEGIN IMMEDIATE.
        Code may commit early (an audit record of a refused request must survive the refusal).
        Rows deferred with `defer_insert` are written with the unit of work's writes, or, if it
        only read, by the group commit; either way before this returns.
        """
        with self._new() as s:
            rows: list[Deferred] = []
            try:
                yield s
                rows = s.info[_DEFERRED]
                s.info[_DEFERRED] = []
                writing = s.in_transaction() and is_writing(s)
                if rows and self._group is not None and not writing:
                    s.commit()  # it only read: end it, then hand the rows over
                    handed, rows = rows, []
                    self._group.write(handed)
                    return
                if rows:  # with the unit of work's writes
                    _insert_rows(s.connection(), rows)
                riders = self._group.board(s.connection()) if writing and self._group is not None else []
                committed = False
                try:
                    s.commit()
                    committed = True
                finally:
                    if riders:
                        assert self._group is not None
                        self._group.alight(riders, committed)
            except BaseException:
                s.rollback()
                rows += s.info.get(_DEFERRED) or []
                s.info[_DEFERRED] = []
                s.close()
                self._write_kept(rows)
                raise

    @contextmanager
    def write(self, yielding: bool = False) -> Iterator[Session]:
        """A unit of work that takes the write lock first (SQLite BEGIN IMMEDIATE), for work whose
        reads decide its writes (import chunks, counters). Keep it short: other writers wait.
        `yielding` (bulk work such as an import chunk): other processes' writers go first while
        they queue for the lock (see _WriteGate.acquire)."""
        with self.session() as s:
            begin_write(s, yielding)
            yield s

    def _write_kept(self, deferred: list[Deferred]) -> None:
        """Rows that must survive a failed unit of work (audit of a refused or failed request), in
        a short transaction of their own after the rollback (SQLite: through the group commit, so a
        flood of refused requests takes the write lock once per batch). Never raises."""
        rows = [Deferred(r.model, values, True) for r in deferred if (values := r.after_rollback()) is not None]
        if not rows:
            return

        def write() -> None:
            with self.engine.begin() as conn:
                _insert_rows(conn, rows)

        try:
            if self._group is not None:
                self._group.write(rows)  # retries a busy database itself
            else:
                retry_busy(write, attempts=5)
        except Exception as error:  # the request's own error propagates; say (without data) what was lost
            log.error("could not write %d kept row(s) after a rollback: %s", len(rows), type(error).__name__)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"


def database_of(s: Session) -> Database | None:
    """The Database a unit of work came from (None for a session made elsewhere)."""
    db = s.info.get("azaguard.db")
    return db if isinstance(db, Database) else None
