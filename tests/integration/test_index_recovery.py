"""On SQLite the ingest path commits its index rows without fsync; files are the durable record. These
tests play the power cut: rows committed after the last barrier are lost, and recovery indexes the files."""

from __future__ import annotations

from datetime import timedelta

from pydicom import dcmread
from sqlalchemy import delete, select, update

from service.ingest import IndexSyncer, index_barrier, recover_index
from service.models import IngestCheckpoint, Instance
from tests.dicomutil import restamp, send, vendor_path


def _checkpoint(services):
    with services.session_factory() as s:
        return s.scalar(select(IngestCheckpoint.durable_before))


def test_rows_lost_after_the_last_barrier_are_rebuilt_from_the_stored_files(dicom_server, services, tmp_path):
    files = [restamp(vendor_path("ge_jpeg2k"), tmp_path / f"{i}.dcm", AccessionNumber=f"A{i}") for i in range(3)]
    assert send(dicom_server.port, files) == [0, 0, 0]
    with services.session_factory() as s:
        before = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
    lost = str(dcmread(files[1]).SOPInstanceUID)
    # The power cut: the row of one object never reached the disk, and the barrier is older than it.
    with services.session_factory.begin() as s:
        s.execute(delete(Instance).where(Instance.sop_instance_uid == lost))
        s.execute(update(IngestCheckpoint).values(durable_before=before[lost].received_at - timedelta(seconds=1)))

    assert recover_index(services) == 1
    with services.session_factory() as s:
        row = s.scalars(select(Instance).where(Instance.sop_instance_uid == lost)).one()
        count = len(s.scalars(select(Instance)).all())
    assert count == 3
    old = before[lost]
    assert (row.sha256, row.storage_key, row.accession_number, row.transfer_syntax_uid) == (
        old.sha256,
        old.storage_key,
        "A1",
        old.transfer_syntax_uid,
    )
    assert row.peer_address == "recovered" and "re-indexed" in row.warnings
    # Recovery ends with a barrier; running it again finds nothing more.
    assert recover_index(services) == 0


def test_files_older_than_the_barrier_are_not_rescanned(dicom_server, services, tmp_path):
    src = restamp(vendor_path("ge_rgb"), tmp_path / "a.dcm")
    assert send(dicom_server.port, [src]) == [0]
    with services.session_factory.begin() as s:
        s.execute(delete(Instance))
    index_barrier(services)
    with services.session_factory.begin() as s:
        s.execute(update(IngestCheckpoint).values(durable_before=_checkpoint(services) + timedelta(minutes=1)))
    assert recover_index(services) == 0


def test_the_syncer_advances_the_checkpoint_only_after_new_rows(dicom_server, services, tmp_path):
    syncer = IndexSyncer(services, interval=3600)
    if not syncer.needed:  # PostgreSQL: every commit is durable, there is nothing to advance
        assert services.ingest_engine is services.engine
        return
    syncer.flush()  # drains what the fixture's server already counted
    first = _checkpoint(services)
    syncer.flush()
    assert _checkpoint(services) == first  # nothing ingested: no barrier
    assert send(dicom_server.port, [restamp(vendor_path("ge_rgb"), tmp_path / "b.dcm")]) == [0]
    syncer.flush()
    assert _checkpoint(services) > first
