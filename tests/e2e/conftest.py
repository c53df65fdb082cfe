"""End-to-end fixtures: `usgi serve` as a subprocess on the test's data directory and database, and a corpus
of small ultrasound objects written once per session."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.dicomutil import vendor_path
from tests.e2e.support import Corpus, UsgiServe, dataset_sha256

CORPUS_SIZE = 300


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """300 copies of the GE JPEG 2000 ultrasound image, each with its own Study/Series/SOP Instance UIDs.

    dcmtk's storescu re-encodes what it sends (undefined-length sequences become defined-length), so the
    base file is first written in dcmtk's encoding (dcmconv): then both pynetdicom and storescu send each
    file's dataset byte for byte, and "stored exactly as received" can be checked against the file.
    """
    dcmconv = shutil.which("dcmconv")
    if dcmconv is None:
        pytest.fail("dcmtk is required for these tests (dcmconv missing): apt-get install dcmtk")
    root = tmp_path_factory.mktemp("e2e-corpus")
    base = root / "base.dcm"
    subprocess.run([dcmconv, str(vendor_path("ge_jpeg2k")), str(base)], check=True, capture_output=True, timeout=60)
    folder = root / "files"
    folder.mkdir()
    ds = dcmread(base)
    base.unlink()
    items: list[tuple[str, Path]] = []
    hashes: dict[str, str] = {}
    for i in range(CORPUS_SIZE):
        uid = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.PatientID = "E2E-CORPUS"
        ds.AccessionNumber = f"E2E{i:05d}"
        path = folder / f"us{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        items.append((uid, path))
        hashes[uid] = dataset_sha256(path)
    return Corpus(folder, items, hashes, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))


@pytest.fixture
def serve_factory(tmp_path: Path, database_url: str, dcmtk: dict[str, str]) -> Iterator[Callable[..., UsgiServe]]:
    """Make (migrate and start) `usgi serve` on this test's data directory and database; stopped at teardown
    with SIGTERM, killed if it has not exited in 15 s. Keyword arguments are extra environment variables."""
    servers: list[UsgiServe] = []

    def make(start: bool = True, **env: str) -> UsgiServe:
        server = UsgiServe(tmp_path, database_url, tmp_path / "logs", **env)
        servers.append(server)
        server.migrate()
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop(timeout=15)


@pytest.fixture
def usgi(serve_factory: Callable[..., UsgiServe]) -> UsgiServe:
    """A running `usgi serve` with the default settings (a short shutdown grace)."""
    return serve_factory(USGI_SHUTDOWN_GRACE_SECONDS="10")
