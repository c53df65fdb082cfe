"""A C-STORE fast lane inside pynetdicom's association, for the common case of an established association.

Profiling (bench/RESULTS.md, and our own runs) shows that for a 45 KB single-frame image pynetdicom spends
most of its per-object CPU outside the ingest itself: decoding each P-DATA-TF PDU into item objects, running
the state machine per PDU, decoding the command set into a pydicom Dataset, building primitives, handing the
message to the association thread and the response back to the DUL thread. That is several thread switches
and about 2-3 ms of CPU per object on this machine, more than Orthanc spends in all.

Here the DUL thread itself reads each PDU of an established association (state Sta6). A P-DATA-TF PDU is
split into its PDVs with ``struct``. A C-STORE-RQ command that is plain (one fragment, on an accepted context
whose abstract syntax is the request's SOP class, with a data set, no field we do not know) opens a temp file
with the Part 10 preamble and file meta, the data set's PDVs are written to it as they arrive, and on the
last one the AE's ``store_lane`` function ingests the file (durable and indexed, or a failure status) and the
C-STORE-RSP goes back as one hand-encoded PDU. Everything else - other PDU types, other messages, a command
we do not recognise or that arrives in several fragments - goes to pynetdicom exactly as its own DT-2 action
would hand it over, one PDV at a time (``DIMSEServiceProvider.receive_primitive``).

Order on the wire: pynetdicom sends from the DUL thread too, but queues a message's PDUs from the association
thread. Our response goes straight to the socket only when nothing is queued, under a lock that pynetdicom's
``send_msg`` also takes, so the PDUs of one of its messages (an N-EVENT-REPORT of storage commitment) and
ours never interleave; otherwise ours is queued behind them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from service.dicom import fastpath
from service.dicom import status as st
from service.ingest import HEAD_BYTES, Received

log = logging.getLogger("service.dicom")

PREAMBLE = b"\x00" * 128 + b"DICM"
_PDU_TYPES = frozenset(range(1, 8))
_P_DATA_TF = 0x04
_COMMAND_LAST = 0x03  # PS3.8 E.2: bit 0 command, bit 1 last fragment
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101
# The elements of a C-STORE-RQ command set (PS3.7 9.3.1.1); any other one sends the message to pynetdicom.
_REQUIRED = frozenset({0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000})
_OPTIONAL = frozenset({0x1030, 0x1031})  # Move Originator AE Title and Message ID
_MAX_UID = 64

StoreFunction = Callable[[Any, Received, str, "StoreCommand"], tuple[int, str]]
"""(association, received file, transfer syntax UID, command) -> (status, error comment); never raises.
It consumes the file; the lane closes the descriptor afterwards."""
_names = itertools.count()


@dataclass(frozen=True)
class StoreCommand:
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


def _uid(raw: bytes) -> str | None:
    value = raw.rstrip(b"\x00 ")
    if not value or len(value) > _MAX_UID or not value.replace(b".", b"").isdigit():
        return None
    return value.decode("ascii")


def parse_store_rq(command: bytes | memoryview) -> StoreCommand | None:
    """The C-STORE-RQ in an implicit VR little endian command set, or None if it is anything else or unusual."""
    n = len(command)
    pos = 0
    values: dict[int, bytes] = {}
    while pos < n:
        if pos + 8 > n:
            return None
        group, element, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        if group != 0 or pos + length > n or element in values:
            return None
        values[element] = bytes(command[pos : pos + length])
        pos += length
    keys = values.keys()
    if not keys >= _REQUIRED or not keys <= _REQUIRED | _OPTIONAL:
        return None
    us = [values[e] for e in (0x0100, 0x0110, 0x0700, 0x0800)]
    if any(len(v) != 2 for v in us) or len(values[0x0000]) != 4:
        return None
    if struct.unpack("<I", values[0x0000])[0] != n - 12:
        return None
    field, message_id, priority, data_set_type = (struct.unpack("<H", v)[0] for v in us)
    if field != _C_STORE_RQ or data_set_type == _NO_DATA_SET or priority > 2:
        return None
    sop_class = _uid(values[0x0002])
    sop_instance = _uid(values[0x1000])
    if sop_class is None or sop_instance is None:
        return None
    return StoreCommand(message_id, sop_class, sop_instance)


def encode_store_rsp(command: StoreCommand, status: int, comment: str = "") -> bytes:
    """The C-STORE-RSP command set answering ``command`` (implicit VR little endian)."""
    return fastpath.c_store_rsp(command.sop_class_uid, command.sop_instance_uid, command.message_id, status, comment)


def p_data_tf(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF PDU carrying a whole command set as its last fragment (PS3.8 9.3.5)."""
    n = len(command)
    return struct.pack(">BBLLBB", _P_DATA_TF, 0, n + 6, n + 2, context_id, _COMMAND_LAST) + command


@dataclass
class _Transfer:
    """A C-STORE whose data set is arriving: written to ``fd``, hashed, and its head kept for the index."""

    context_id: int
    transfer_syntax: str
    command: StoreCommand
    fd: int
    path: str
    head: bytearray
    sha256: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    error: OSError | None = None
    """Why the data set could not be written (a full disk): the rest is read and dropped, then answered."""

    def write(self, data: memoryview) -> None:
        if self.error is not None:
            return
        try:
            _write_all(self.fd, data)
        except OSError as exc:
            self.error = exc
            return
        self.sha256.update(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.size += len(data)

    def received(self) -> Received:
        return Received(self.path, bytes(self.head), self.sha256.hexdigest(), self.size, self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_PREALLOCATE = 4 << 20


def _recv_exact(sock: Any, n: int) -> bytearray:
    """Up to ``n`` bytes: fewer only when the peer closed the connection."""
    if n > _PREALLOCATE:
        # A length this large is announced, not yet received: grow with what arrives, as pynetdicom does.
        grown = bytearray()
        while len(grown) < n:
            chunk = sock.recv(min(n - len(grown), 1 << 20))
            if not chunk:
                break
            grown += chunk
        return grown
    buf = bytearray(n)
    got = 0
    with memoryview(buf) as view:
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if not k:
                break
            got += k
    if got < n:
        del buf[got:]
    return buf


def send_lock(assoc: Any) -> threading.Lock:
    lock: threading.Lock | None = getattr(assoc, "_usgi_send_lock", None)
    if lock is None:
        # dict.setdefault is atomic: two threads asking at once get the same lock.
        lock = assoc.__dict__.setdefault("_usgi_send_lock", threading.Lock())
    return lock


def discard(dul: Any) -> bool:
    """Remove the partial data set of an interrupted transfer, if there is one.

    Called on EVT_CONN_CLOSE, which pynetdicom triggers from the DUL thread (its state machine or reader),
    so never while that thread is writing the transfer.
    """
    transfer: _Transfer | None = getattr(dul, "_usgi_transfer", None)
    if transfer is None:
        return False
    dul._usgi_transfer = None
    transfer.discard()
    return True


class _Lane:
    """The fast-lane reader of one DUL; every method runs in the DUL thread."""

    def __init__(self, dul: DULServiceProvider, store: StoreFunction, temp_dir: Path) -> None:
        self.dul = dul
        self.assoc = dul.assoc
        self.store = store
        # A name unique in this process's temp folder: the process id and a counter (mkstemp's random names
        # cost more, and nothing else writes there).
        self.temp_prefix = os.path.join(temp_dir, f"lane-{os.getpid()}-")

    def read_pdu(self) -> None:
        dul = self.dul
        sock = dul.socket.socket  # type: ignore[union-attr]
        try:
            header = _recv_exact(sock, 6)
            if len(header) < 6:
                dul.event_queue.put("Evt17")  # transport closed
                return
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in _PDU_TYPES:
                log.error("unknown PDU type 0x%02X received", pdu_type)
                dul.event_queue.put("Evt19")
                return
            body = _recv_exact(sock, length)
        except OSError:
            log.error("connection closed before the entire PDU was received")
            dul.event_queue.put("Evt17")
            return
        if len(body) < length:
            log.error("the received PDU is shorter than expected")
            dul.event_queue.put("Evt17")
            return
        if pdu_type != _P_DATA_TF:
            self._to_pynetdicom(header + body)
            return
        try:
            self._p_data(memoryview(body))
        except _ProtocolError as exc:
            log.error("invalid P-DATA-TF PDU: %s", exc)
            discard(dul)
            dul.event_queue.put("Evt19")  # the state machine aborts the association

    def _to_pynetdicom(self, pdu: bytes | bytearray) -> None:
        # What pynetdicom's own reader does with a whole PDU (DULServiceProvider._read_pdu_data).
        dul = self.dul
        try:
            decoded, event = dul._decode_pdu(bytearray(pdu))
        except Exception:  # noqa: BLE001
            log.error("unable to decode the received PDU")
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(decoded)

    def _p_data(self, body: memoryview) -> None:
        pos, end = 0, len(body)
        if end == 0:
            raise _ProtocolError("no presentation data value")
        while pos < end:
            if pos + 6 > end:
                raise _ProtocolError("item header cut short")
            (item_length,) = struct.unpack_from(">L", body, pos)
            if item_length < 2 or pos + 4 + item_length > end:
                raise _ProtocolError("item length out of bounds")
            context_id = body[pos + 4]
            self._pdv(context_id, body[pos + 5 : pos + 4 + item_length])
            pos += 4 + item_length

    def _pdv(self, context_id: int, pdv: memoryview) -> None:
        dul = self.dul
        control = pdv[0]
        transfer: _Transfer | None = getattr(dul, "_usgi_transfer", None)
        if transfer is not None:
            if control & 1 or context_id != transfer.context_id:
                raise _ProtocolError("a data set was interrupted by another fragment")
            transfer.write(pdv[1:])
            if control & 2:
                dul._usgi_transfer = None
                self._finish(transfer)
            return
        if control == _COMMAND_LAST and self.assoc.dimse.message is None:
            command = parse_store_rq(pdv[1:])
            if command is not None and (ts := self._storage_syntax(context_id, command)) is not None:
                dul._usgi_transfer = self._open(context_id, ts, command)
                return
        # Not ours: to pynetdicom's DIMSE layer, as its DT-2 action would (one PDV per primitive is the same).
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, bytes(pdv)))
        self.assoc.dimse.receive_primitive(primitive)

    def _storage_syntax(self, context_id: int, command: StoreCommand) -> str | None:
        cx = self.assoc._accepted_cx.get(context_id)
        if cx is None or str(cx.abstract_syntax) != command.sop_class_uid or not cx.transfer_syntax:
            return None
        if command.sop_class_uid in NON_STORAGE_CLASSES:
            return None
        return str(cx.transfer_syntax[0])

    def _open(self, context_id: int, transfer_syntax: str, command: StoreCommand) -> _Transfer:
        path = f"{self.temp_prefix}{next(_names)}.dcm"
        meta = fastpath.FileMeta(command.sop_class_uid, command.sop_instance_uid, transfer_syntax)
        head = bytearray(PREAMBLE + fastpath.encode_file_meta(meta))
        transfer = _Transfer(context_id, transfer_syntax, command, -1, path, head, size=len(head))
        try:
            transfer.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            _write_all(transfer.fd, head)
        except OSError as exc:
            transfer.error = exc
        return transfer

    def _finish(self, transfer: _Transfer) -> None:
        if transfer.error is not None:
            transfer.discard()
            status, comment = _write_failure(transfer.error)
            log.error("C-STORE from %s: the data set could not be written (%s)", self.assoc.requestor.ae_title,
                      transfer.error.strerror)  # fmt: skip
        else:
            try:
                status, comment = self.store(
                    self.assoc, transfer.received(), transfer.transfer_syntax, transfer.command
                )
            finally:
                transfer.close()
        if not self.assoc.is_established:
            return
        rsp = encode_store_rsp(transfer.command, status, comment)
        if not fastpath.fits_one_pdv(rsp, self.assoc.dimse.maximum_pdu_size):
            self._send_by_pynetdicom(transfer, status, comment)
            return
        with send_lock(self.assoc):
            if self.dul.to_provider_queue.empty():
                self.dul.socket.send(p_data_tf(transfer.context_id, rsp))  # type: ignore[union-attr]
            else:
                self.dul.to_provider_queue.put(fastpath.whole_command(transfer.context_id, rsp))

    def _send_by_pynetdicom(self, transfer: _Transfer, status: int, comment: str) -> None:
        # A peer whose maximum PDU cannot take our ~200 byte response: let pynetdicom fragment it.
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = transfer.command.message_id
        rsp.AffectedSOPClassUID = transfer.command.sop_class_uid
        rsp.AffectedSOPInstanceUID = transfer.command.sop_instance_uid
        rsp.Status = status
        if comment:
            rsp.ErrorComment = comment[:64]
        self.assoc.dimse.send_msg(rsp, transfer.context_id)


class _ProtocolError(Exception):
    pass


def _write_failure(exc: OSError) -> tuple[int, str]:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return st.OUT_OF_RESOURCES, "out of storage space"
    return st.PROCESSING_FAILURE, "the data set could not be written"


NON_STORAGE_CLASSES: frozenset[str] = frozenset()
"""SOP classes that are never storage (set by install): a C-STORE on their context goes to pynetdicom."""

_installed = False


def install(non_storage_classes: frozenset[str]) -> None:
    """Patch pynetdicom once per process; an AE opts in with a ``store_lane`` attribute (see ``lane_for``)."""
    global _installed, NON_STORAGE_CLASSES
    NON_STORAGE_CLASSES = non_storage_classes
    if _installed:
        return
    _installed = True

    original_read = DULServiceProvider._read_pdu_data

    def read_pdu_data(self: DULServiceProvider) -> None:
        lane = lane_for(self)
        if lane is None:
            original_read(self)
        else:
            lane.read_pdu()

    DULServiceProvider._read_pdu_data = read_pdu_data  # type: ignore[method-assign]

    original_send_msg = DIMSEServiceProvider.send_msg

    def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        # All PDUs of one message enter the send queue together (see the module docstring).
        with send_lock(self.assoc):
            original_send_msg(self, primitive, context_id)

    send_msg.__wrapped__ = original_send_msg  # type: ignore[attr-defined]
    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]


def lane_for(dul: DULServiceProvider) -> _Lane | None:
    """The fast-lane reader for this DUL, when its association is established and its AE has a lane."""
    lane: _Lane | None = getattr(dul, "_usgi_lane", None)
    if lane is None:
        assoc = dul.assoc
        store = getattr(assoc.ae, "store_lane", None)
        if store is None or not assoc.is_acceptor:
            return None
        temp_dir = assoc.ae.store_lane_temp_dir
        dul._usgi_lane = lane = _Lane(dul, store, temp_dir)  # type: ignore[attr-defined]
    if dul.state_machine.current_state != "Sta6":
        return None
    return lane
