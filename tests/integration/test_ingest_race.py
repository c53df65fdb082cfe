"""The same object arriving on several associations at the same moment is stored once, never lost.

A modality that times out and resends, or two machines forwarding one study, send the same SOP instance at
once. On SQLite the index write lock serialises them; on PostgreSQL the unique (SOP instance, SHA-256) index
refuses the second insert and that writer looks again. Either way: one row, one file, every sender told
the object is kept.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import func, select

from service.ingest import Origin, Outcome, ingest_file
from service.models import Instance
from tests.dicomutil import restamp, vendor_path

WRITERS = 8


def test_one_object_from_eight_writers_at_once_is_stored_once(services, tmp_path: Path):
    src = restamp(vendor_path("ge_rgb"), tmp_path / "src.dcm")
    uid = str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    ts = str(dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    copies = []
    for i in range(WRITERS):
        copy = services.store.temp_dir() / f"race-{i}.dcm"
        shutil.copyfile(src, copy)
        copies.append(copy)
    start = threading.Barrier(WRITERS)
    outcomes: list[Outcome] = []

    def writer(path: Path) -> None:
        start.wait()
        outcomes.append(ingest_file(services, path, Origin("dicom", "TESTSCU", "127.0.0.1:1"), ts).outcome)

    threads = [threading.Thread(target=writer, args=(p,)) for p in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sorted(o.value for o in outcomes) == sorted(
        [Outcome.STORED.value] + [Outcome.DUPLICATE.value] * (WRITERS - 1)
    )
    with services.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Instance).where(Instance.sop_instance_uid == uid)) == 1
    root = Path(services.store.root)
    assert len([p for p in root.rglob("*.dcm") if p.relative_to(root).parts[0] != "tmp"]) == 1
    assert not any(services.store.temp_dir().iterdir()), "a temp copy was left behind"
