"""Engine and session factory from Settings; the unit of work that owns each transaction."""

from __future__ import annotations

import fcntl
import os
import threading
from collections import namedtuple
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import Column, Connection, Dialect, Engine, Select, bindparam, create_engine, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeEngine


def make_engine(url: str, synchronous: str = "FULL", **kwargs: Any) -> Engine:
    """Create the engine; SQLite gets WAL, a busy timeout and, by default, an fsync at every commit.

    ``synchronous="NORMAL"`` (SQLite only) commits without fsync: for the ingest path, whose files are the
    durable record and whose index rows are made durable by a periodic barrier (service/ingest.py).
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Python's sqlite3 opens transactions lazily; BEGIN IMMEDIATE on write paths is set per session below.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsync'd at every commit, so what a request was told is saved is on disk.
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock up front: no deadlock-prone lock upgrades between processes.
            # On the DBAPI connection: exec_driver_sql costs ~0.1 ms of CPU, paid by every stored image.
            conn.connection.driver_connection.execute("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit when the block ends normally, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class SqliteWriteLock:
    """Serialises index writers of one SQLite database across threads and processes, without polling.

    SQLite admits one writer at a time; a writer that finds the lock taken sleeps in SQLite's busy
    handler (1, 2, 5, 10 ... ms), far longer than an index write holds it. Waiting on a kernel file lock
    instead wakes the next writer the moment the lock is released.
    """

    def __init__(self, database_path: Path) -> None:
        self._path = database_path.with_name(database_path.name + ".writelock")
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


class NoLock:
    """The server database (PostgreSQL) handles concurrent writers itself."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


@overload
def stored_utc(when: datetime) -> datetime: ...
@overload
def stored_utc(when: None) -> None: ...
def stored_utc(when: datetime | None) -> datetime | None:
    """A time read back from the database, UTC-aware: SQLite hands back naive UTC, PostgreSQL aware times."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def page_of(s: Session, q: Select[Any], page: int, per_page: int, *order_by: Any) -> tuple[list[Any], int]:
    """Page ``page`` (from 1) of ``q`` in ``order_by`` order, and the number of rows of all pages."""
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = list(s.scalars(q.order_by(*order_by).offset((page - 1) * per_page).limit(per_page)))
    return rows, total


def write_lock_for(engine: Engine) -> SqliteWriteLock | NoLock:
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        return SqliteWriteLock(Path(database))
    return NoLock()


# --- statements on the hot path of ingest ------------------------------------------------------------------


@dataclass(frozen=True)
class RawConnection:
    """A DBAPI connection (pool-proxied) and its dialect: what :class:`Direct` statements run on."""

    dbapi: Any
    dialect: Dialect

    @classmethod
    def of(cls, conn: Connection) -> RawConnection:
        """The DBAPI connection under a SQLAlchemy connection, inside the same transaction."""
        return cls(conn.connection, conn.dialect)


class Direct:
    """A text statement compiled once per dialect and run on the DBAPI cursor.

    Ingest runs a handful of statements for every stored object. Through ``Connection.execute`` each costs
    about 0.1 ms of CPU (result set-up, events, cache look-ups), as much as the statement itself; for a 45 KB
    image the ingest's SQL took a third of its Python time. Values go through the type processors
    SQLAlchemy itself would apply (dates on SQLite, booleans), and rows come back through its result
    processors, so what is stored and read is the same either way.
    """

    def __init__(self, sql: str, params: dict[str, TypeEngine[Any]], result: Sequence[Column[Any]] = ()) -> None:
        self._statement = text(sql).bindparams(*[bindparam(name, type_=t) for name, t in params.items()])
        self._params = params
        self._result = list(result)
        self._row = namedtuple("_Row", [c.key for c in self._result]) if self._result else None  # type: ignore[misc]
        self._by_dialect: dict[str, tuple[str, list[tuple[str, Any]] | None, dict[str, Any], list[Any]]] = {}

    def _compiled(self, dialect: Dialect) -> tuple[str, list[tuple[str, Any]] | None, dict[str, Any], list[Any]]:
        found = self._by_dialect.get(dialect.name)
        if found is None:
            compiled = self._statement.compile(dialect=dialect)
            binds = {n: t.dialect_impl(dialect).bind_processor(dialect) for n, t in self._params.items()}
            # Positional drivers (sqlite3): each parameter's name and processor, in order.
            order = [(n, binds[n]) for n in compiled.positiontup or ()] if compiled.positional else None
            results = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in self._result]
            found = (str(compiled), order, {n: p for n, p in binds.items() if p is not None}, results)
            self._by_dialect[dialect.name] = found
        return found

    def execute(self, raw: RawConnection, values: dict[str, Any]) -> Any:
        """Run it; returns the DBAPI cursor."""
        sql, order, binds, _ = self._compiled(raw.dialect)
        cursor = raw.dbapi.cursor()
        if order is not None:
            cursor.execute(sql, tuple(values[n] if p is None else p(values[n]) for n, p in order))
        else:
            cursor.execute(sql, {**values, **{n: p(values[n]) for n, p in binds.items()}} if binds else values)
        return cursor

    def rows(self, raw: RawConnection, values: dict[str, Any]) -> list[Any]:
        """Run it; returns its rows as named tuples of the result columns, values converted."""
        assert self._row is not None, "a statement without result columns has no rows"
        processors = self._compiled(raw.dialect)[3]
        out = []
        for row in self.execute(raw, values).fetchall():
            out.append(self._row(*(p(v) if p is not None else v for p, v in zip(processors, row, strict=True))))
        return out
