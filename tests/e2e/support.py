"""Helpers for the end-to-end tests: `usgi serve` as a subprocess, a paced pynetdicom sender, store checks."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import create_engine, select

from service.ingest import dataset_offset
from service.models import Instance

# Calling AE titles the e2e server admits (USGI_DICOM_PEERS).
PEERS = ("STORESCU", "TESTSCU")
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
# The store is content-addressed: whatever folders it uses, an object's file is named by its dataset's SHA-256.
STORE_NAME = re.compile(r"^([0-9a-f]{64})\.dcm$")


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (the sockets stay bound together so the ports are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def usgi_command() -> list[str]:
    script = Path(sys.executable).with_name("usgi")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "service.cli"]


def dataset_sha256(path: Path) -> str:
    """SHA-256 of a Part 10 file's dataset (everything after the file meta group), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        h.update(head[dataset_offset(head) :])
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` figure from /proc/<pid>/status (VmHWM = peak resident set size, VmRSS = current)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


class UsgiServe:
    """One `usgi serve` process on a data directory and database; restartable on the same ones and ports."""

    def __init__(self, data_dir: Path, database_url: str, log_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_ports(2)
        base = {k: v for k, v in os.environ.items() if not k.startswith("USGI_")}
        self.env = base | {
            "USGI_DATA_DIR": str(data_dir),
            "USGI_DATABASE_URL": database_url,
            "USGI_HTTP_HOST": "127.0.0.1",
            "USGI_HTTP_PORT": str(self.http_port),
            "USGI_DICOM_HOST": "127.0.0.1",
            "USGI_DICOM_PORT": str(self.dicom_port),
            "USGI_DICOM_PEERS": ",".join(PEERS),
            "USGI_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.update(env)
        # Tracing allocations (PYTHONTRACEMALLOC, set to chase a ResourceWarning here) slows the server ~10x.
        self.env.pop("PYTHONTRACEMALLOC", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path: Path | None = None
        self._tokens: dict[str, str] = {}

    # --- the CLI

    def cli(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [*usgi_command(), *args],
            env=self.env,
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"usgi {' '.join(args)} failed ({done.returncode}):\n{done.stderr}"
        return done.stdout

    def migrate(self) -> None:
        self.cli("migrate")

    def token(self, role: str) -> str:
        if role not in self._tokens:
            self._tokens[role] = self.cli("token", "create", "--role", role, "--name", f"e2e-{role}").strip()
        return self._tokens[role]

    # --- the process

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30) -> None:
        assert not self.running(), "already running"
        self.starts += 1
        self.log_path = self.log_dir / f"serve-{self.starts}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*usgi_command(), "serve"], env=self.env, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Until a C-ECHO (dcmtk echoscu) succeeds and GET /healthz answers 200."""
        deadline = time.monotonic() + timeout
        dicom_ok = http_ok = False
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(
                    f"usgi serve exited with {self.proc.returncode if self.proc else None}:\n{self.log()}"
                )
            dicom_ok = dicom_ok or self.echo()
            if dicom_ok:
                try:
                    http_ok = requests.get(self.url("/healthz"), timeout=2).status_code == 200
                except requests.ConnectionError:
                    http_ok = False
                if http_ok:
                    return
            time.sleep(0.1)
        raise AssertionError(
            f"usgi serve not ready after {timeout} s (dicom {dicom_ok}, http {http_ok}):\n{self.log()}"
        )

    def echo(self, ae_title: str = "STORESCU", timeout: int = 5) -> bool:
        """One dcmtk C-ECHO; True when it succeeded."""
        echoscu = shutil.which("echoscu")
        assert echoscu, "dcmtk echoscu is required"
        cmd = [echoscu, "-aet", ae_title, "-aec", "USGI", "-to", str(timeout), "-ta", str(timeout)]
        cmd += ["-td", str(timeout), "127.0.0.1", str(self.dicom_port)]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout * 3)
        return done.returncode == 0

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or cleaned up."""
        assert self.proc is not None and self.running()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)

    def terminate(self) -> None:
        assert self.proc is not None and self.running()
        os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in ``timeout`` s; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def vm_kb(self, key: str = "VmHWM") -> int:
        return proc_status_kb(self.pid, key)

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux: write 5 to /proc/<pid>/clear_refs); False if not allowed."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    # --- HTTP

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str, role: str | None = "auditor", **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if role:
            headers["Authorization"] = f"Bearer {self.token(role)}"
        return requests.get(self.url(path), headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)


# --- objects


@dataclass(frozen=True)
class Corpus:
    """Restamped copies of one vendor file: ``items`` in sending order, ``sha256`` of each dataset by UID."""

    folder: Path
    items: list[tuple[str, Path]]
    sha256: dict[str, str]
    sop_class_uid: str
    transfer_syntax_uid: str

    def path_of(self, uid: str) -> Path:
        return dict(self.items)[uid]

    @property
    def contexts(self) -> list[tuple[str, str]]:
        return [(self.sop_class_uid, self.transfer_syntax_uid)]


def write_cine(path: Path, frames: int, rows: int = 480, columns: int = 640) -> tuple[str, str, int]:
    """Write an RGB 8-bit US Multi-frame object (explicit VR little endian) one frame at a time, never holding
    more than a frame in memory; return (SOP Instance UID, dataset SHA-256, file size).

    Frame k is red = k % 256, green = a ramp along the columns, blue = a ramp along the rows.
    """
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.PatientID = "E2E-CINE"
    ds.PatientName = "E2E^Cine"
    ds.AccessionNumber = "E2ECINE1"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    ds.FrameTime = 33.3
    ds.FrameIncrementPointer = 0x00181063
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    head = buf.getvalue()
    digest = hashlib.sha256(head[dataset_offset(head) :])
    frame_bytes = rows * columns * 3
    # (7FE0,0010) Pixel Data, explicit VR OB: tag, VR, 2 reserved bytes, 32-bit length; then the frames.
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, frame_bytes * frames)
    digest.update(element)
    frame = np.empty((rows, columns, 3), np.uint8)
    frame[..., 1] = (np.arange(columns) * 255 // (columns - 1)).astype(np.uint8)[None, :]
    frame[..., 2] = (np.arange(rows) * 255 // (rows - 1)).astype(np.uint8)[:, None]
    with open(path, "wb") as f:
        f.write(head)
        f.write(element)
        for k in range(frames):
            frame[..., 0] = k % 256
            data = frame.tobytes()
            digest.update(data)
            f.write(data)
    return uid, digest.hexdigest(), path.stat().st_size


# --- sending


@dataclass
class PacedSender:
    """C-STOREs files over one pynetdicom association in a thread, recording each response status.

    ``signal_after`` acknowledged (0x0000) stores set ``reached``; ``pause`` seconds between stores.
    ``timeout`` bounds each wait for the peer: when the server is killed while a C-STORE is in flight,
    pynetdicom may only notice when its DIMSE timeout expires.
    """

    port: int
    items: list[tuple[str, Path]]  # (SOP Instance UID, file)
    contexts: list[tuple[str, str]]  # (SOP Class UID, transfer syntax UID)
    signal_after: int = 0
    pause: float = 0.0
    ae_title: str = "TESTSCU"
    timeout: float = 20
    statuses: dict[str, int] = field(default_factory=dict)
    acked: list[str] = field(default_factory=list)
    reached: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    established: bool = False
    released: bool = False
    finished_at: float | None = None  # time.monotonic() when the association ended
    error: str | None = None
    _thread: threading.Thread | None = None

    def start(self) -> PacedSender:
        self._thread = threading.Thread(target=self._run, name="e2e-sender", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the sender did not finish"

    def _run(self) -> None:
        try:
            ae = AE(ae_title=self.ae_title)
            ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.timeout
            for sop_class, ts in self.contexts:
                ae.add_requested_context(sop_class, ts)
            assoc = ae.associate("127.0.0.1", self.port, ae_title="USGI")
            self.established = assoc.is_established
            if not assoc.is_established:
                self.error = "association not established"
                return
            try:
                for uid, path in self.items:
                    if not assoc.is_established:
                        break
                    status = assoc.send_c_store(path)
                    code = int(status.Status) if status is not None and "Status" in status else -1
                    self.statuses[uid] = code
                    if code == 0x0000:
                        self.acked.append(uid)
                        if self.signal_after and len(self.acked) >= self.signal_after:
                            self.reached.set()
                    if self.pause:
                        time.sleep(self.pause)
            finally:
                if assoc.is_established:
                    assoc.release()
                    self.released = assoc.is_released
                _close_socket(assoc)
        except Exception as exc:  # noqa: BLE001 - reported to the test, never raised in the thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished_at = time.monotonic()
            self.done.set()


def _close_socket(assoc: Any) -> None:
    """Close the association's TCP socket for good once its threads are done.

    When the peer vanishes (SIGKILL), pynetdicom's AssociationSocket._shutdown_socket() gets ENOTCONN from
    shutdown() and skips close(): the socket would leak (a ResourceWarning, an error under filterwarnings).
    """
    assoc.join(10)
    dul = getattr(assoc, "dul", None)
    if dul is not None:
        dul.join(10)
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is not None:
        sock.close()


def contexts_of(paths: list[Path]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for p in paths:
        h = dcmread(p, stop_before_pixels=True)
        key = (str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID))
        if key not in out:
            out.append(key)
    return out


# --- what the service kept


@dataclass(frozen=True)
class Row:
    id: int
    sop_instance_uid: str
    sha256: str
    storage_key: str
    number_of_frames: int | None
    rows: int | None
    columns: int | None


def index_rows(database_url: str) -> list[Row]:
    """Every row of the instance index, read with SQLAlchemy on the service's own database URL."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            result = conn.execute(
                select(
                    Instance.id,
                    Instance.sop_instance_uid,
                    Instance.sha256,
                    Instance.storage_key,
                    Instance.number_of_frames,
                    Instance.rows,
                    Instance.columns,
                )
            ).all()
        return [Row(*r) for r in result]
    finally:
        engine.dispose()


def temp_files(data_dir: Path) -> list[Path]:
    tmp = data_dir / "images" / "tmp"
    return sorted(p for p in tmp.rglob("*") if not p.is_dir()) if tmp.exists() else []


def store_files(data_dir: Path) -> list[Path]:
    """Files in the image store proper (the temp folder excluded)."""
    root = data_dir / "images"
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if not p.is_dir() and p.relative_to(root).parts[0] != "tmp")


@dataclass
class StoreReport:
    rows: list[Row]
    by_uid: dict[str, list[Row]]
    orphans: list[str]  # complete store files no row points to (a crash between rename and commit)


def check_store(data_dir: Path, database_url: str, *, expect_no_temp: bool = True) -> StoreReport:
    """The invariants that must hold at any restart, whatever was interrupted:

    - no indexed row points to a missing, unreadable or different file (full pydicom read, dataset hash);
    - no partial file in the store: every file sits at the key of its own dataset hash, so nothing
      half-written was ever renamed into place;
    - with ``expect_no_temp``, the temp folder holds no file (the server sweeps it as it starts).
    """
    root = data_dir / "images"
    rows = index_rows(database_url)
    problems: list[str] = []
    keys: set[str] = set()
    by_uid: dict[str, list[Row]] = {}
    for row in rows:
        by_uid.setdefault(row.sop_instance_uid, []).append(row)
        keys.add(row.storage_key)
        path = root / row.storage_key
        if not path.is_file():
            problems.append(f"row {row.id} ({row.sop_instance_uid}) points to a missing file {row.storage_key}")
            continue
        try:
            ds = dcmread(path)
            ds.PixelData  # noqa: B018 - the whole object must be readable, pixel data included
        except Exception as exc:  # noqa: BLE001
            problems.append(f"row {row.id}: stored file not readable by pydicom: {type(exc).__name__}: {exc}")
            continue
        if str(ds.SOPInstanceUID) != row.sop_instance_uid:
            problems.append(f"row {row.id}: file holds SOP Instance {ds.SOPInstanceUID}")
        if dataset_sha256(path) != row.sha256:
            problems.append(f"row {row.id}: dataset hash of {row.storage_key} differs from the index sha256")
    orphans = []
    for path in store_files(data_dir):
        rel = path.relative_to(root).as_posix()
        m = STORE_NAME.match(path.name)
        if not m:
            problems.append(f"unexpected file in the store: {rel}")
            continue
        try:
            actual = dataset_sha256(path)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"store file {rel} is not a Part 10 file: {type(exc).__name__}")
            continue
        if actual != m.group(1):
            problems.append(f"partial or corrupt file in the store: {rel} (dataset hash {actual[:12]}…)")
        if rel not in keys:
            orphans.append(rel)
    if expect_no_temp:
        left = temp_files(data_dir)
        if left:
            problems.append(f"{len(left)} file(s) left in images/tmp: {[p.name for p in left[:5]]}")
    assert not problems, "store invariants violated:\n  " + "\n  ".join(problems[:30])
    return StoreReport(rows, by_uid, orphans)


def assert_kept(report: StoreReport, expected: dict[str, str], uids: list[str] | set[str], what: str) -> None:
    """Each of ``uids`` is indexed with a version whose sha256 is the sent file's dataset hash."""
    missing = [u for u in uids if u not in report.by_uid]
    wrong = [u for u in uids if u in report.by_uid and expected[u] not in {r.sha256 for r in report.by_uid[u]}]
    assert not missing, f"{len(missing)} {what} instance(s) not in the index, e.g. {missing[:3]}"
    assert not wrong, f"{len(wrong)} {what} instance(s) indexed with a different hash, e.g. {wrong[:3]}"
