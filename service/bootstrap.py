"""Wiring: build the engine, session factory and image store from Settings (nothing at import time)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import make_engine, make_session_factory
from service.storage import FileStore


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    store: FileStore
    clock: Callable[[], datetime] = utcnow

    def close(self) -> None:
        self.engine.dispose()


def build_services(settings: Settings, temp_name: str | None = None) -> Services:
    """One engine and one store per process. ``temp_name`` names this process's private temp folder."""
    engine = make_engine(settings.database_url)
    store = FileStore(settings.image_store_path, temp_name or socket.gethostname())
    return Services(settings=settings, engine=engine, session_factory=make_session_factory(engine), store=store)
