"""The DICOM Application Entity of usgi-docs: contexts, peer check, handlers, start and graceful stop."""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from pathlib import Path
from tempfile import NamedTemporaryFile

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom import acse as _acse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.presentation import PresentationContext, negotiate_unrestricted
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from service.bootstrap import Services
from service.db import unit_of_work
from service.dicom import fastpath, handlers, reactor, storelane
from service.dicom.commitment import CommitmentReporter
from service.ingest import IndexSyncer, recover_index
from service.peers import PeerAllowList
from service.procedures.linker import link_pending

log = logging.getLogger("service.dicom")

_NON_STORAGE_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_NON_STORAGE_CLASSES = (
    Verification,
    ModalityPerformedProcedureStep,
    StorageCommitmentPushModel,
    ModalityWorklistInformationFind,
)
_UNCOMPRESSED_ORDER = {ExplicitVRLittleEndian: 1, ImplicitVRLittleEndian: 2, "1.2.840.10008.1.2.2": 3}


def storage_syntax_preference(proposed: list[str]) -> list[str]:
    """Order a proposed context's transfer syntaxes so the one we accept (the first) is stored as is.

    A machine that proposes a compressed syntax (JPEG, JPEG-LS, JPEG 2000, RLE, deflate) holds the object
    that way: accepting it avoids a decompression on the machine and keeps the object exactly as acquired.
    Among the rest, explicit VR before implicit VR (keeps VRs of private tags). Otherwise the machine's order.
    """
    return sorted(proposed, key=lambda ts: _UNCOMPRESSED_ORDER.get(str(ts), 0))


def _negotiate_preferring_native_syntax(rq_contexts: list[PresentationContext], ac_contexts, roles=None):  # type: ignore[no-untyped-def]
    # pynetdicom's unrestricted negotiation accepts each context's first proposed syntax; reorder first.
    for cx in rq_contexts:
        ordered = storage_syntax_preference(list(cx.transfer_syntax))
        if ordered != list(cx.transfer_syntax):
            cx.transfer_syntax = ordered
    return negotiate_unrestricted(rq_contexts, ac_contexts, roles)


def configure_pynetdicom(services: Services) -> None:
    """Process-wide pynetdicom switches, set once when the receiver is built (they are module globals)."""
    # Accept every storage SOP class a machine proposes, vendors' private ones included: refusing a
    # context is how images get lost. Storage contexts are then negotiated without our supported list.
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    _acse.negotiate_unrestricted = _negotiate_preferring_native_syntax  # type: ignore[attr-defined]
    # Stream each C-STORE data set to a file instead of memory (200 MB cines), in this process's temp
    # folder on the image store's filesystem so that moving it into place is a rename.
    _config.STORE_RECV_CHUNKED_DATASET = True
    _dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined]
        NamedTemporaryFile, dir=services.store.temp_dir()
    )
    # Identifiers of C-FIND requests and responses contain patient data: keep them out of the logs.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # pynetdicom's "standard" event logging formats every DIMSE message even when nobody reads the log.
    if services.settings.log_level != "DEBUG":
        _config.LOG_HANDLER_LEVEL = "none"
    # Per-object encoding fast paths (see service/dicom/fastpath.py for why and how they are checked).
    _dimse_messages.create_file_meta = fastpath.create_file_meta  # type: ignore[attr-defined]
    _dimse_messages.write_file_meta_info = fastpath.write_file_meta_info  # type: ignore[attr-defined]
    reactor.install()
    if not hasattr(DIMSEServiceProvider.send_msg, "__wrapped__"):
        DIMSEServiceProvider.send_msg = fastpath.fast_send_msg(DIMSEServiceProvider.send_msg)  # type: ignore[method-assign]
    storelane.install(frozenset(str(uid) for uid in _NON_STORAGE_CLASSES))


class UsgiAE(AE):
    """An AE whose allowed calling AE titles come from the peer registry, re-read as it changes, and whose
    plain C-STOREs take the fast lane (service/dicom/storelane.py) when ``store_lane`` is set."""

    def __init__(self, ae_title: str, allow_list: PeerAllowList) -> None:
        super().__init__(ae_title=ae_title)
        self._allow_list = allow_list
        self.store_lane: storelane.StoreFunction | None = None
        self.store_lane_temp_dir = Path(".")

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        titles = sorted(self._allow_list.titles())
        # pynetdicom treats an empty list as "anyone"; with no peers configured nobody may associate.
        return titles or [" "]


class UsgiServer(ThreadedAssociationServer):
    """pynetdicom's server with TCP_NODELAY on every association and optional SO_REUSEPORT."""

    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self):  # type: ignore[no-untyped-def]
        sock, address = super().get_request()
        # A C-STORE response is small: without this, Nagle plus delayed ACK can stall each one ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address


class ReusePortServer(UsgiServer):
    reuse_port = True


class DicomServer:
    """The storage, verification, MPPS, storage commitment and modality worklist SCP on one port."""

    def __init__(self, services: Services, reuse_port: bool = False, resume_commitments: bool = True) -> None:
        self.services = services
        settings = services.settings
        configure_pynetdicom(services)
        self.reporter = CommitmentReporter(services)
        self.ae = UsgiAE(settings.ae_title, PeerAllowList(services))
        self.ae.maximum_associations = settings.dicom_max_associations
        self.ae.maximum_pdu_size = settings.dicom_max_pdu
        self.ae.network_timeout = settings.dicom_network_timeout
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = settings.dicom_network_timeout
        for uid in _NON_STORAGE_CLASSES:
            self.ae.add_supported_context(uid, _NON_STORAGE_SYNTAXES)
        if settings.dicom_store_lane:
            self.ae.store_lane = functools.partial(handlers.store_lane, services)
            self.ae.store_lane_temp_dir = services.store.temp_dir()
        self._reuse_port = reuse_port
        # Of several receiver processes only one resends undelivered commitment reports at start.
        self._resume_commitments = resume_commitments
        self._server: ThreadedAssociationServer | None = None
        self._sweeper_stop = threading.Event()
        self.syncer = IndexSyncer(services)

    def handlers(self) -> list[tuple]:  # type: ignore[type-arg]
        s = self.services
        return [
            (evt.EVT_CONN_CLOSE, handlers.handle_conn_close),
            (evt.EVT_C_ECHO, handlers.handle_echo),
            (evt.EVT_C_STORE, handlers.handle_store, [s]),
            (evt.EVT_N_CREATE, handlers.handle_n_create, [s]),
            (evt.EVT_N_SET, handlers.handle_n_set, [s]),
            (evt.EVT_N_ACTION, handlers.handle_n_action, [s, self.reporter]),
            (evt.EVT_C_FIND, handlers.handle_find, [s]),
        ]

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        settings = self.services.settings
        dead_after = 2 * settings.dicom_network_timeout
        removed = self.services.store.sweep_temp(others_older_than_seconds=dead_after)
        if removed:
            log.warning("removed %d incomplete transfer(s) left by an earlier stop", removed)
        if self.syncer.needed:
            recover_index(self.services)
        self._link_pending()
        self.syncer.start()
        if self._resume_commitments:
            self.reporter.resume_pending()
        server_class = ReusePortServer if self._reuse_port else UsgiServer
        server = self.ae.make_server(
            (settings.dicom_host, settings.dicom_port),
            evt_handlers=self.handlers(),
            server_class=server_class,
        )
        self._server = server
        self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True).start()
        threading.Thread(target=self._sweep, name="dicom-temp-sweeper", daemon=True).start()
        log.info("DICOM SCP %s listening on %s:%d", settings.ae_title, settings.dicom_host, self.port)

    def _link_pending(self) -> None:
        """Images indexed but never looked at by the linker (stored before linking existed, re-indexed after
        an unclean stop, or a linker failure): link them now, before new ones arrive."""
        try:
            with self.services.write_lock, unit_of_work(self.services.session_factory) as s:
                count = link_pending(s, self.services.link_settings)
        except Exception as exc:  # noqa: BLE001 - they stay pending; the next start or report change retries
            log.error("linking pending images failed: %s", type(exc).__name__)
            return
        if count:
            log.info("linked %d image(s) that were waiting for the linker", count)

    def _sweep(self) -> None:
        # Aborted associations leave their partial data set behind; a live transfer writes far more often.
        age = 2 * self.services.settings.dicom_network_timeout
        while not self._sweeper_stop.wait(60):
            self.services.store.sweep_temp(older_than_seconds=age, others_older_than_seconds=age)

    def active_associations(self) -> int:
        return sum(1 for a in self.ae.active_associations if a.is_acceptor)

    def stop_accepting(self) -> None:
        """Close the listening socket; associations already open go on."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop accepting, let associations in flight finish (up to the grace period), then abort the rest."""
        grace = self.services.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self.stop_accepting()
        self._sweeper_stop.set()
        deadline = time.monotonic() + grace
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.active_associations()
        if left:
            log.warning("aborting %d association(s) still open after %.0f s", left, grace)
        self.reporter.stop()
        self.ae.shutdown()
        self.syncer.stop()
