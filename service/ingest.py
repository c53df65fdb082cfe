"""The one ingest path (STYLE.md habit 4): parse the index tags, fsync, index, move into place, answer.

Every source (C-STORE, a future upload endpoint, tests) hands over a complete DICOM Part 10 file in the
store's temp folder. Only when this returns ``stored`` or ``duplicate`` may the caller acknowledge it.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import struct
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from service.bootstrap import Services
from service.db import Direct, RawConnection, stored_utc, unit_of_work
from service.dicom_header import Unsupported, read_header, walk_complete
from service.dicom_index import IndexFields, NotIndexable, extract_index_fields
from service.models import IngestCheckpoint, Instance
from service.procedures.linker import link_columns
from service.storage import fsync_file

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    STORED = "stored"
    """Durably written and indexed."""
    DUPLICATE = "duplicate"
    """The same SOP Instance with the same bytes was already stored; nothing new written."""
    UNREADABLE = "unreadable"
    """Not a parsable DICOM dataset."""
    NOT_INDEXABLE = "not_indexable"
    """Parsable, but a required UID is missing or malformed."""
    MISMATCH = "mismatch"
    """The dataset's SOP Class/Instance UID differs from what the C-STORE request announced."""
    STORE_FAILED = "store_failed"
    """Writing or indexing failed (disk full, database down): nothing was kept."""


@dataclass(frozen=True)
class Origin:
    """Where an object came from (Orthanc's DicomInstanceOrigin idea)."""

    transport: str = "dicom"
    calling_ae_title: str | None = None
    peer_address: str | None = None


@dataclass
class IngestResult:
    outcome: Outcome
    message: str = ""
    instance_id: int | None = None
    sop_instance_uid: str | None = None
    conflict: bool = False
    warnings: list[str] = field(default_factory=list)
    no_space: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.outcome in (Outcome.STORED, Outcome.DUPLICATE)


def dataset_offset(head: bytes) -> int:
    """Byte offset where the dataset starts after the preamble and the file meta group (PS3.10 §7.1)."""
    if len(head) >= 144 and head[128:132] == b"DICM" and head[132:136] == b"\x02\x00\x00\x00":
        (group_length,) = struct.unpack("<I", head[140:144])
        return 144 + group_length
    raise InvalidDicomError("no file meta group length")


HEAD_BYTES = 1 << 20


def _walkable(transfer_syntax_uid: str) -> bool:
    return transfer_syntax_uid not in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")


@dataclass
class Received:
    """A complete Part 10 file in the store's temp folder, and what its receiver already knows of it."""

    path: str
    """Where it is (a string: on the hot path pathlib costs more than the rest of the bookkeeping)."""
    head: bytes
    """The file's first bytes (preamble and file meta included): all of it, or at least ``HEAD_BYTES``."""
    sha256: str
    """SHA-256 of the data set: the bytes after the file meta group."""
    size: int
    """Size of the whole file."""
    fd: int | None = None
    """An open descriptor of the file, if the receiver holds one (saves an open for the fsync)."""

    @property
    def whole(self) -> bool:
        return self.size == len(self.head)


def read_received(path: Path | str) -> Received:
    """Read a file once for its head, SHA-256 (file meta excluded) and size."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        h.update(head[dataset_offset(head) :])
        size = len(head)
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return Received(os.fspath(path), head, h.hexdigest(), size)


def index_fields(received: Received, transfer_syntax_uid: str) -> IndexFields:
    """Check the data set is whole, then return its index fields.

    Objects up to 1 MiB are checked and read in memory; larger ones are walked on disk. The header comes
    from the fast reader (service/dicom_header.py) when it can, else from pydicom. Raises InvalidDicomError
    (incomplete), NotIndexable, or a parse error.
    """
    head, path = received.head, received.path
    try:
        if not (received.whole and _walkable(transfer_syntax_uid)):
            raise Unsupported("walk on disk")
        pixels = walk_complete(head, dataset_offset(head), implicit=transfer_syntax_uid == "1.2.840.10008.1.2")
    except Unsupported:
        pixels = check_complete(Path(path), transfer_syntax_uid)
    try:
        fields = extract_index_fields(read_header(head, complete=received.whole))
    except NotIndexable:
        raise
    except Exception:  # noqa: BLE001 - anything unusual: let pydicom read it
        fields = extract_index_fields(dcmread(path, stop_before_pixels=True))
    if fields.is_image and pixels is False:
        # Pixel Data is Type 1 in every image IOD; an image cut off before it (exactly at an element
        # boundary, which no length check can see) must not be acknowledged.
        raise NotIndexable("image object without Pixel Data")
    return fields


def _read_indexed(path: Path, transfer_syntax_uid: str) -> tuple[IndexFields, str, int]:
    """Index fields, SHA-256 (file meta excluded) and size of a file (see index_fields)."""
    received = read_received(path)
    return index_fields(received, transfer_syntax_uid), received.sha256, received.size


_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VRs with 2 reserved bytes and a 32-bit length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


def check_complete(path: Path, transfer_syntax_uid: str) -> bool | None:
    """Walk every element header of the data set to the end of the file: each value must fit (PS3.5 §7).

    The index readers stop after the header (pydicom before the pixel data) and pydicom reads a value cut
    short by the end of the file without complaint, so a truncated data set, or foreign bytes that happen
    to decode as an element or two, would otherwise be acknowledged. Raises :class:`InvalidDicomError`.
    """
    ts = UID(transfer_syntax_uid)
    if ts.is_deflated:
        return None  # inflating a truncated stream already fails in pydicom (zlib); pixels unknown
    endian = "<" if ts.is_little_endian else ">"
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = dataset_offset(f.read(1 << 16))
        f.seek(start)
        implicit = ts.is_implicit_VR
        first = f.read(6)
        if not implicit and len(first) == 6 and not first[4:6].isalpha():
            # Encoded implicit despite the negotiated explicit syntax: pydicom reads these (with a warning),
            # and so must we, or a sloppy encoder's images are lost.
            implicit = True
        f.seek(start)
        return _skip_elements(f, size, implicit, endian, None)


def _skip_value(f: BinaryIO, size: int, length: int) -> None:
    if f.tell() + length > size:
        raise InvalidDicomError("an element runs past the end of the data set")
    f.seek(length, 1)


def _skip_elements(f: BinaryIO, size: int, implicit: bool, endian: str, delimiter: int | None) -> bool:
    """Elements up to the end of the file (``delimiter`` None) or up to the (FFFE,``delimiter``) tag.

    Returns whether (float) pixel data was among them.
    """
    pixels = False
    while True:
        head = f.read(8)
        if not head and delimiter is None:
            return pixels
        if len(head) < 8:
            raise InvalidDicomError("data set truncated")
        group, element = struct.unpack(endian + "HH", head[:4])
        if group == 0xFFFE and element == delimiter:
            return pixels
        pixels = pixels or (group == 0x7FE0 and element in (0x0008, 0x0009, 0x0010))
        vr = None if implicit or group == 0xFFFE else head[4:6]
        if vr is None:
            (length,) = struct.unpack(endian + "L", head[4:])
        elif vr in _LONG_VRS:
            extra = f.read(4)
            if len(extra) < 4:
                raise InvalidDicomError("data set truncated")
            (length,) = struct.unpack(endian + "L", extra)
        else:
            (length,) = struct.unpack(endian + "H", head[6:])
        if length == _UNDEFINED_LENGTH:
            _skip_items(f, size, implicit or vr == b"UN", endian)  # UN sequence content is implicit VR
        else:
            _skip_value(f, size, length)


def _skip_items(f: BinaryIO, size: int, implicit: bool, endian: str) -> None:
    """Items of an undefined-length sequence or of encapsulated pixel data, up to the sequence delimiter."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidDicomError("data set truncated")
        group, element, length = struct.unpack(endian + "HHL", head)
        if group == 0xFFFE and element == _SEQUENCE_END:
            return
        if group != 0xFFFE or element != _ITEM:
            raise InvalidDicomError("an item was expected")
        if length == _UNDEFINED_LENGTH:
            _skip_elements(f, size, implicit, endian, _ITEM_END)
        else:
            _skip_value(f, size, length)


def _fsync(received: Received) -> None:
    if received.fd is not None:
        os.fsync(received.fd)
    else:
        fsync_file(received.path)


def ingest_file(
    services: Services,
    path: Path,
    origin: Origin,
    transfer_syntax_uid: str,
    expected_sop_class_uid: str | None = None,
    expected_sop_instance_uid: str | None = None,
) -> IngestResult:
    """Index and keep the Part 10 file at ``path`` (in the store's temp folder); consume it in every case."""
    try:
        received = read_received(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure of foreign bytes is "cannot understand"
        _remove(path)
        return IngestResult(Outcome.UNREADABLE, f"dataset could not be parsed: {type(exc).__name__}")
    return ingest(services, received, origin, transfer_syntax_uid, expected_sop_class_uid, expected_sop_instance_uid)


def ingest(
    services: Services,
    received: Received,
    origin: Origin,
    transfer_syntax_uid: str,
    expected_sop_class_uid: str | None = None,
    expected_sop_instance_uid: str | None = None,
) -> IngestResult:
    """Index and keep a received file (in the store's temp folder); consume it in every case.

    The caller may close ``received.fd`` once this returns.
    """
    path = received.path
    # The file's mtime becomes "now": recovery after a power cut looks for files newer than the last
    # index barrier, and a long transfer's last write can be far older than its index row.
    handed_over = False
    try:
        os.utime(path)
        try:
            fields = index_fields(received, transfer_syntax_uid)
        except NotIndexable as exc:
            return IngestResult(Outcome.NOT_INDEXABLE, str(exc))
        except Exception as exc:  # noqa: BLE001 - any parse failure of foreign bytes is "cannot understand"
            return IngestResult(Outcome.UNREADABLE, f"dataset could not be parsed: {type(exc).__name__}")

        if expected_sop_class_uid and fields.sop_class_uid != expected_sop_class_uid:
            return IngestResult(Outcome.MISMATCH, "SOP Class UID in the dataset differs from the request's")
        if expected_sop_instance_uid and fields.sop_instance_uid != expected_sop_instance_uid:
            return IngestResult(Outcome.MISMATCH, "SOP Instance UID in the dataset differs from the request's")

        # In this thread: handing the fsync to another one cost more CPU (thread wake-ups, GIL hand-overs)
        # than overlapping it with the parse above saved, measured at 1 and 4 associations.
        try:
            _fsync(received)
        except OSError as exc:
            return IngestResult(Outcome.STORE_FAILED, f"write failed: {exc.strerror}", no_space=exc.errno == 28)

        handed_over = True  # _index moves the file into place or removes it
        return _index(services, path, fields, received.sha256, received.size, transfer_syntax_uid, origin)
    finally:
        if not handed_over:
            _remove(path)


def _remove(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class _Statements:
    """The ingest path's SQL, built once: composing SQLAlchemy expressions per object cost ~1 ms of CPU."""

    def __init__(self) -> None:
        table = Instance.__table__
        columns = [c for c in table.columns if c.key != "id"]
        names = ", ".join(c.key for c in columns)
        binds = ", ".join(f":{c.key}" for c in columns)
        self.insert = Direct(
            f"INSERT INTO instances ({names}) VALUES ({binds}) RETURNING id", {c.key: c.type for c in columns}
        )
        uid_type = table.c.sop_instance_uid.type
        self.versions = Direct(
            "SELECT id, sha256, storage_key FROM instances WHERE sop_instance_uid = :uid",
            {"uid": uid_type},
            [table.c.id, table.c.sha256, table.c.storage_key],
        )
        self.mark_conflict = Direct(
            "UPDATE instances SET conflict = :yes WHERE sop_instance_uid = :uid",
            {"yes": table.c.conflict.type, "uid": uid_type},
        )
        self.empty_row = {c.key: None for c in columns}


_SQL = _Statements()


def _row(
    fields: IndexFields,
    sha256: str,
    size: int,
    key: str,
    transfer_syntax_uid: str,
    origin: Origin,
    received_at: datetime,
    conflict: bool,
    note: str | None = None,
) -> dict[str, object]:
    """The index row of one stored object (every column of ``instances`` but its id)."""
    warnings = [*fields.warnings, *([note] if note else [])]
    return dict(
        _SQL.empty_row,
        sop_instance_uid=fields.sop_instance_uid,
        sop_class_uid=fields.sop_class_uid,
        study_instance_uid=fields.study_instance_uid,
        series_instance_uid=fields.series_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        is_image=fields.is_image,
        size_bytes=size,
        sha256=sha256,
        storage_key=key,
        calling_ae_title=origin.calling_ae_title,
        peer_address=origin.peer_address,
        received_at=received_at,
        conflict=conflict,
        warnings="; ".join(warnings) or None,
        **fields.values,
    )


def _index(
    services: Services,
    path: Path,
    fields: IndexFields,
    sha256: str,
    size: int,
    transfer_syntax_uid: str,
    origin: Origin,
) -> IngestResult:
    """Put the synced file in place (rename, fsync the directory), then index it in one short transaction.
    From here on the temp file is this function's: moved into place, or removed.

    The file is made durable before the row exists, so the write lock of the index is held only for the
    few statements of the row itself (a SQLite database has one writer at a time, across processes).
    """
    store = services.store
    engine = services.ingest_engine
    assert engine is not None
    uid = fields.sop_instance_uid
    received_at = services.clock()
    try:
        key, created = store.commit_file(path, sha256, received_at.date())
    except OSError as exc:
        _remove(path)
        return IngestResult(Outcome.STORE_FAILED, f"write failed: {exc.strerror}", no_space=exc.errno == 28)
    for _attempt in range(3):
        try:
            with services.write_lock:
                same, row_id, conflict = _write_row(
                    engine, services, fields, sha256, size, key, transfer_syntax_uid, origin, received_at
                )
        except engine.dialect.dbapi.IntegrityError:  # type: ignore[union-attr]
            continue  # the same object stored by another association at the same moment: look again
        except Exception as exc:  # noqa: BLE001 - database down or similar: refuse, keep nothing
            if created:
                store.remove(key)
            log.error("indexing failed: %s", type(exc).__name__)
            return IngestResult(Outcome.STORE_FAILED, "the index could not be written")
        if same is not None:
            if same.storage_key != key and created:
                # Stored earlier under another day's key: keep that copy, or put this one there if it is gone.
                if store.exists(same.storage_key):
                    store.remove(key)
                else:
                    store.restore_file(store.path(key), same.storage_key)
            return IngestResult(Outcome.DUPLICATE, instance_id=same.id, sop_instance_uid=uid)
        services.note_ingest()
        if conflict:
            log.warning("stored a second version of an instance with different content (id %s)", row_id)
        return IngestResult(
            Outcome.STORED, instance_id=row_id, sop_instance_uid=uid, conflict=conflict, warnings=fields.warnings
        )
    if created:
        store.remove(key)
    return IngestResult(Outcome.STORE_FAILED, "the index could not be written (repeated conflicts)")


def _write_row(
    engine: Engine,
    services: Services,
    fields: IndexFields,
    sha256: str,
    size: int,
    key: str,
    transfer_syntax_uid: str,
    origin: Origin,
    received_at: datetime,
) -> tuple[Any, int | None, bool]:
    """One transaction on a DBAPI connection of the pool: (the same version already indexed or None, the new
    row's id, whether it is a second version). Raises what the driver raises; nothing is kept then."""
    raw = RawConnection(engine.raw_connection(), engine.dialect)
    try:
        if raw.dialect.name == "sqlite":
            # The connection is in autocommit mode (service.db); IMMEDIATE takes the write lock up front.
            raw.dbapi.cursor().execute("BEGIN IMMEDIATE")
        try:
            versions = _SQL.versions.rows(raw, {"uid": fields.sop_instance_uid})
            same = next((v for v in versions if v.sha256 == sha256), None)
            row_id = None
            conflict = bool(versions)
            if same is None:
                row = _row(fields, sha256, size, key, transfer_syntax_uid, origin, received_at, conflict)
                _link(raw, row, services)
                row_id = int(_SQL.insert.execute(raw, row).fetchone()[0])
                if conflict:
                    _SQL.mark_conflict.execute(raw, {"yes": True, "uid": fields.sop_instance_uid})
            raw.dbapi.commit()
        except BaseException:
            raw.dbapi.rollback()
            raise
    finally:
        raw.dbapi.close()
    return same, row_id, conflict


def _link(raw: RawConnection, row: dict[str, object], services: Services) -> None:
    """Link the row in the ingest transaction, so one commit covers both. A failure here never costs the
    image: it is stored unlinked-pending (link_status NULL) and linked at the next start or report change."""
    try:
        if raw.dialect.name == "sqlite":
            # Linking only reads, and a failed read leaves a SQLite transaction as it was: no savepoint needed.
            row.update(link_columns(raw, row, services.link_settings))
        else:
            # On PostgreSQL any failed statement aborts the whole transaction unless a savepoint contains it.
            cursor = raw.dbapi.cursor()
            cursor.execute("SAVEPOINT usgi_link")
            try:
                row.update(link_columns(raw, row, services.link_settings))
            except BaseException:
                cursor.execute("ROLLBACK TO SAVEPOINT usgi_link")
                raise
            cursor.execute("RELEASE SAVEPOINT usgi_link")
    except Exception as exc:  # noqa: BLE001 - the type only: a message could carry patient data
        log.error("linking a new image failed (%s); it waits for the next linker run", type(exc).__name__)


# --- durability of the index on SQLite --------------------------------------------------------------------

RECOVERY_MARGIN = timedelta(seconds=60)  # > the longest time from ingest start to its commit


def index_barrier(services: Services) -> None:
    """Make every index row committed so far durable (one fsync'd commit), and record when.

    On SQLite the WAL is one append-only file: an fsync'd commit makes all earlier frames durable,
    whichever connection or process wrote them.
    """
    started = services.clock()
    with services.write_lock, unit_of_work(services.session_factory) as s:
        s.execute(update(IngestCheckpoint).where(IngestCheckpoint.id == 1).values(durable_before=started))


def recover_index(services: Services) -> int:
    """Index stored files that an unclean stop left without a durable index row; returns how many.

    Only files newer than the last barrier (minus a margin) are looked at: those are the only ones whose
    row can have been lost. Their origin (calling AE) is unknown and recorded as such.
    """
    with unit_of_work(services.session_factory) as s:
        since = s.scalar(select(IngestCheckpoint.durable_before).where(IngestCheckpoint.id == 1))
    if since is None:
        return 0
    since = stored_utc(since) - RECOVERY_MARGIN
    recovered = 0
    table = Instance.__table__
    day = since.date()
    today = services.clock().date()
    while day <= today:
        folder = services.store.root / f"{day:%Y/%m/%d}"
        day += timedelta(days=1)
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if not entry.name.endswith(".dcm") or entry.stat().st_mtime < since.timestamp():
                continue
            key = f"{folder.relative_to(services.store.root).as_posix()}/{entry.name}"
            with services.engine.connect() as conn:
                if conn.execute(select(table.c.id).where(table.c.storage_key == key)).first():
                    continue
            if _reindex(services, Path(entry.path), key, entry.stat()):
                recovered += 1
    if recovered:
        log.warning("re-indexed %d stored object(s) whose index rows were lost in an unclean stop", recovered)
    index_barrier(services)
    return recovered


def _reindex(services: Services, path: Path, key: str, stat: os.stat_result) -> bool:
    try:
        ds = dcmread(path, stop_before_pixels=True)
        fields, sha256, size = _read_indexed(path, str(ds.file_meta.TransferSyntaxUID))
    except Exception:  # noqa: BLE001 - not ours to judge now: leave the file for a person to look at
        log.error("a stored file could not be re-indexed: %s", key)
        return False
    table = Instance.__table__
    try:
        with services.write_lock, services.engine.begin() as conn:
            if conn.execute(
                select(table.c.id).where(table.c.sop_instance_uid == fields.sop_instance_uid, table.c.sha256 == sha256)
            ).first():
                return False
            recovered = Origin("recovered", None, "recovered")
            received_at = datetime.fromtimestamp(stat.st_mtime, UTC)
            ts = str(ds.file_meta.TransferSyntaxUID)
            row = _row(fields, sha256, size, key, ts, recovered, received_at, False, "re-indexed after an unclean stop")
            _SQL.insert.execute(RawConnection.of(conn), row)
    except (IntegrityError, services.engine.dialect.dbapi.IntegrityError):  # type: ignore[union-attr]
        return False
    return True


class IndexSyncer:
    """Runs the index barrier about once a second while objects arrive (SQLite only; a no-op otherwise)."""

    def __init__(self, services: Services, interval: float = 1.0) -> None:
        self._services = services
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def needed(self) -> bool:
        return self._services.ingest_engine is not self._services.engine

    def start(self) -> None:
        if self.needed:
            self._thread = threading.Thread(target=self._run, name="index-barrier", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        if self.needed and self._services.take_ingest_count():
            try:
                index_barrier(self._services)
            except Exception:  # noqa: BLE001 - retried at the next tick; files stay the durable record
                log.exception("index barrier failed")
                self._services.note_ingest()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
