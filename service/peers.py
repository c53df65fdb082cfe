"""DICOM peers allowed to associate (registered with `usgi peer add` or listed in USGI_DICOM_PEERS)."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from service.bootstrap import Services
from service.config import ConfigError, _ae_title
from service.db import unit_of_work
from service.errors import Conflict, NotFound
from service.models import DicomPeer


def add_peer(
    services: Services, ae_title: str, host: str | None, port: int | None, description: str | None = None
) -> DicomPeer:
    try:
        ae_title = _ae_title(ae_title, "AE title")
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    with unit_of_work(services.session_factory) as s:
        if s.scalar(select(DicomPeer).where(DicomPeer.ae_title == ae_title)):
            raise Conflict(f"peer {ae_title} is already registered")
        peer = DicomPeer(ae_title=ae_title, host=host, port=port, description=description, created_at=services.clock())
        s.add(peer)
        s.flush()
        return peer


def remove_peer(services: Services, ae_title: str) -> None:
    with unit_of_work(services.session_factory) as s:
        peer = s.scalar(select(DicomPeer).where(DicomPeer.ae_title == ae_title.strip()))
        if peer is None:
            raise NotFound(f"no peer {ae_title}")
        s.delete(peer)


def list_peers(services: Services) -> list[DicomPeer]:
    with unit_of_work(services.session_factory) as s:
        return list(s.scalars(select(DicomPeer).order_by(DicomPeer.ae_title)))


def find_peer(services: Services, ae_title: str) -> DicomPeer | None:
    with unit_of_work(services.session_factory) as s:
        return s.scalar(select(DicomPeer).where(DicomPeer.ae_title == ae_title.strip()))


class PeerAllowList:
    """Calling AE titles allowed to associate, re-read from the database at most every ``ttl`` seconds."""

    def __init__(self, services: Services, ttl: float = 2.0) -> None:
        self._services = services
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cached: frozenset[str] = frozenset()
        self._at = 0.0

    def titles(self) -> frozenset[str]:
        with self._lock:
            now = time.monotonic()
            if now - self._at > self._ttl:
                with unit_of_work(self._services.session_factory) as s:
                    registered = set(s.scalars(select(DicomPeer.ae_title)))
                self._cached = frozenset(registered | set(self._services.settings.dicom_peers))
                self._at = now
            return self._cached
