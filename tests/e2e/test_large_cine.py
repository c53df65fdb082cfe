"""A ~200 MB ultrasound cine sent with dcmtk storescu: streamed to disk, never held whole in the server's memory,
stored byte for byte, indexed right, and one frame of it previewed without loading the others."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

from tests.dicomutil import STORESCU_PROPOSE
from tests.e2e.support import UsgiServe, dataset_sha256, index_rows, write_cine

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROWS, COLUMNS, FRAMES = 480, 640, 220  # 921,600 bytes a frame, 202.8 MB of pixel data
MAX_RSS_GROWTH_KB = 60 * 1024


def test_a_200_mb_cine_is_streamed_stored_byte_exact_and_previewed(
    usgi: UsgiServe, dcmtk: dict[str, str], tmp_path: Path
) -> None:
    src = tmp_path / "in" / "cine.dcm"
    src.parent.mkdir()
    uid, sent_sha, size = write_cine(src, FRAMES, ROWS, COLUMNS)
    assert size > 200_000_000
    usgi.token("clinician")  # created before measuring (a separate process, but it touches the database)

    # The peak from here on: reset it to the current RSS where the kernel allows, else keep the start-up peak.
    usgi.reset_peak_rss()
    hwm_before = usgi.vm_kb("VmHWM")
    cmd = [dcmtk["storescu"], "-aet", "STORESCU", "-aec", "USGI", *STORESCU_PROPOSE[ExplicitVRLittleEndian]]
    cmd += ["-to", "30", "-ta", "30", "-td", "60", "127.0.0.1", str(usgi.dicom_port), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    hwm_after = usgi.vm_kb("VmHWM")
    growth = hwm_after - hwm_before
    print(f"cine {size / 1e6:.1f} MB: server peak RSS {hwm_before / 1024:.1f} -> {hwm_after / 1024:.1f} MiB")
    assert growth < MAX_RSS_GROWTH_KB, f"peak RSS grew by {growth / 1024:.0f} MiB receiving a {size >> 20} MiB object"

    # Stored byte for byte, indexed right.
    rows = [r for r in index_rows(usgi.database_url) if r.sop_instance_uid == uid]
    assert len(rows) == 1
    row = rows[0]
    assert row.sha256 == sent_sha
    assert dataset_sha256(usgi.data_dir / "images" / row.storage_key) == sent_sha
    assert (row.number_of_frames, row.rows, row.columns) == (FRAMES, ROWS, COLUMNS)
    meta = usgi.get(f"/api/images/{uid}", role="clinician").json()
    assert meta["number_of_frames"] == FRAMES and meta["rows"] == ROWS and meta["columns"] == COLUMNS
    assert meta["sha256"] == sent_sha and abs(meta["size_bytes"] - size) < 1024  # only the file meta may differ

    # One frame near the end, decoded without loading the cine.
    resp = usgi.get(f"/api/images/{uid}/preview.png", role="clinician", params={"frame": 200})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(resp.content)) as png:
        assert png.format == "PNG" and png.size == (COLUMNS, ROWS) and png.mode == "RGB"
        assert png.getpixel((0, 0)) == (200, 0, 0)
        assert png.getpixel((COLUMNS - 1, ROWS - 1)) == (200, 255, 255)
    hwm_preview = usgi.vm_kb("VmHWM")
    print(f"after the frame-200 preview: peak RSS {hwm_preview / 1024:.1f} MiB")
    assert hwm_preview - hwm_before < MAX_RSS_GROWTH_KB, "the preview seems to load more than one frame"
