"""Wiring: build the engine, session factory and image store from Settings (nothing at import time)."""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import NoLock, make_engine, make_session_factory, write_lock_for
from service.procedures.linker import LinkSettings
from service.storage import FileStore


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    store: FileStore
    # The engine of the C-STORE index writes: on SQLite without fsync per commit (see service/ingest.py).
    ingest_engine: Engine | None = None
    clock: Callable[[], datetime] = utcnow
    write_lock: AbstractContextManager[None] = field(default_factory=NoLock)

    def __post_init__(self) -> None:
        if self.ingest_engine is None:
            self.ingest_engine = self.engine
        self._ingested = 0
        self._ingested_lock = threading.Lock()

    @functools.cached_property
    def link_settings(self) -> LinkSettings:
        return LinkSettings(self.settings)

    def note_ingest(self) -> None:
        with self._ingested_lock:
            self._ingested += 1

    def take_ingest_count(self) -> int:
        """How many objects were indexed since the last call (the index barrier's trigger)."""
        with self._ingested_lock:
            count, self._ingested = self._ingested, 0
            return count

    def close(self) -> None:
        self.engine.dispose()
        if self.ingest_engine is not None and self.ingest_engine is not self.engine:
            self.ingest_engine.dispose()


def build_services(settings: Settings, temp_name: str | None = None) -> Services:
    """One engine and one store per process. ``temp_name`` names this process's private temp folder."""
    engine = make_engine(settings.database_url)
    ingest_engine = (
        make_engine(settings.database_url, synchronous="NORMAL") if engine.dialect.name == "sqlite" else None
    )
    store = FileStore(settings.image_store_path, temp_name or socket.gethostname())
    return Services(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        store=store,
        ingest_engine=ingest_engine,
        write_lock=write_lock_for(engine),
    )
