"""Engine and session factory from Settings; the unit of work that owns each transaction."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import Engine, Select, create_engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker


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
