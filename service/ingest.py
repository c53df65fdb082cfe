"""The one ingest path (STYLE.md habit 4): parse the index tags, fsync, index, move into place, answer.

Every source (C-STORE, a future upload endpoint, tests) hands over a complete DICOM Part 10 file in the
store's temp folder. Only when this returns ``stored`` or ``duplicate`` may the caller acknowledge it.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import struct
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from service.bootstrap import Services
from service.dicom_index import IndexFields, NotIndexable, extract_index_fields
from service.models import Instance
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


def _hash_and_size(path: Path) -> tuple[str, int, int]:
    """SHA-256 of the dataset as received (file meta excluded), the dataset offset and the file size."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        offset = dataset_offset(head)
        h.update(head[offset:])
        size = len(head)
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), offset, size


# fsync waits on the disk without holding the GIL: it runs here while the handler parses the header.
_FSYNC_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")


def ingest_file(
    services: Services,
    path: Path,
    origin: Origin,
    transfer_syntax_uid: str,
    expected_sop_class_uid: str | None = None,
    expected_sop_instance_uid: str | None = None,
) -> IngestResult:
    """Index and keep the Part 10 file at ``path`` (in the store's temp folder); consume it in every case."""
    synced = _FSYNC_POOL.submit(fsync_file, path)
    try:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            fields = extract_index_fields(ds)
        except NotIndexable as exc:
            return IngestResult(Outcome.NOT_INDEXABLE, str(exc))
        except Exception as exc:  # noqa: BLE001 - any parse failure of foreign bytes is "cannot understand"
            return IngestResult(Outcome.UNREADABLE, f"dataset could not be parsed: {type(exc).__name__}")

        if expected_sop_class_uid and fields.sop_class_uid != expected_sop_class_uid:
            return IngestResult(Outcome.MISMATCH, "SOP Class UID in the dataset differs from the request's")
        if expected_sop_instance_uid and fields.sop_instance_uid != expected_sop_instance_uid:
            return IngestResult(Outcome.MISMATCH, "SOP Instance UID in the dataset differs from the request's")

        try:
            sha256, _offset, size = _hash_and_size(path)
            synced.result()
        except InvalidDicomError as exc:
            return IngestResult(Outcome.UNREADABLE, str(exc))
        except OSError as exc:
            return IngestResult(Outcome.STORE_FAILED, f"write failed: {exc.strerror}", no_space=exc.errno == 28)

        return _index(services, path, fields, sha256, size, transfer_syntax_uid, origin)
    finally:
        wait([synced])
        path.unlink(missing_ok=True)


def _index(
    services: Services,
    path: Path,
    fields: IndexFields,
    sha256: str,
    size: int,
    transfer_syntax_uid: str,
    origin: Origin,
) -> IngestResult:
    """Move the synced file into place and index it in one transaction; the row and the file stand together."""
    store = services.store
    uid = fields.sop_instance_uid
    table = Instance.__table__
    for _attempt in range(3):
        created_key: str | None = None
        try:
            with services.engine.begin() as conn:
                versions = conn.execute(
                    select(table.c.id, table.c.sha256, table.c.storage_key).where(table.c.sop_instance_uid == uid)
                ).all()
                for row_id, row_sha, row_key in versions:
                    if row_sha == sha256:
                        if not store.exists(row_key):
                            # Indexed but its file is gone (never acknowledged): put this copy in its place.
                            store.restore_file(path, row_key)
                        return IngestResult(Outcome.DUPLICATE, instance_id=row_id, sop_instance_uid=uid)
                conflict = bool(versions)
                received_at = services.clock()
                key, created = store.commit_file(path, sha256, received_at.date())
                created_key = key if created else None
                row_id = conn.execute(
                    insert(table).values(
                        sop_instance_uid=uid,
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
                        warnings="; ".join(fields.warnings) or None,
                        **fields.values,
                    )
                ).inserted_primary_key[0]
                if conflict:
                    conn.execute(update(table).where(table.c.sop_instance_uid == uid).values(conflict=True))
            if conflict:
                log.warning("stored a second version of an instance with different content (id %s)", row_id)
            return IngestResult(
                Outcome.STORED, instance_id=row_id, sop_instance_uid=uid, conflict=conflict, warnings=fields.warnings
            )
        except IntegrityError:
            # Another association stored the same object at the same moment: look again.
            if created_key:
                store.remove(created_key)
            continue
        except OSError as exc:
            if created_key:
                store.remove(created_key)
            return IngestResult(Outcome.STORE_FAILED, f"write failed: {exc.strerror}", no_space=exc.errno == 28)
        except Exception as exc:  # noqa: BLE001 - database down or similar: refuse, keep nothing
            if created_key:
                store.remove(created_key)
            log.error("indexing failed: %s", type(exc).__name__)
            return IngestResult(Outcome.STORE_FAILED, "the index could not be written")
    return IngestResult(Outcome.STORE_FAILED, "the index could not be written (repeated conflicts)")
