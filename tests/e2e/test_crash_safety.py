"""SIGKILL of `usgi serve` in the middle of a burst of C-STOREs: no acknowledged image is ever lost.

After the kill the server is restarted on the same data directory and database, and:
- every instance acknowledged with 0x0000 is in the index, its file exists, pydicom reads it, and its dataset
  hash equals both the index sha256 and the sent file's dataset hash;
- no row points to a missing or different file, no partial file is in the store, images/tmp/ is empty;
- everything not acknowledged, sent again, is stored (nothing lost; duplicates are fine).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dicomutil import STORESCU_PROPOSE
from tests.e2e.support import Corpus, PacedSender, UsgiServe, assert_kept, check_store, store_files, temp_files

pytestmark = pytest.mark.e2e

KILL_FRACTION = 0.4


def _wait_for_a_transfer_in_flight(data_dir: Path, timeout: float = 2.0) -> bool:
    """Spin until a data set is being written in images/tmp, so that the kill cuts a transfer short."""
    tmp = data_dir / "images" / "tmp"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.is_file() for p in tmp.rglob("*")):
            return True
    return False


def _restart_and_check(usgi: UsgiServe, corpus: Corpus, acked: list[str]) -> None:
    """Restart after the kill; check the acknowledged ones and the store as a whole."""
    left_by_kill = len(temp_files(usgi.data_dir))  # usually the transfer the kill cut short
    usgi.start()
    report = check_store(usgi.data_dir, usgi.database_url)
    assert_kept(report, corpus.sha256, acked, "acknowledged")
    print(
        f"acknowledged before the kill: {len(acked)}/{len(corpus.items)}; temp files left by the kill: "
        f"{left_by_kill}; indexed after restart: {len(report.by_uid)}; complete files without a row: "
        f"{len(report.orphans)}"
    )


def _resend_and_check_everything(usgi: UsgiServe, corpus: Corpus, acked: list[str]) -> None:
    done = set(acked)
    rest = [(uid, path) for uid, path in corpus.items if uid not in done]
    sender = PacedSender(usgi.dicom_port, rest, corpus.contexts).start()
    sender.join(120)
    assert sender.error is None, sender.error
    failed = {uid: f"0x{code:04X}" for uid, code in sender.statuses.items() if code != 0x0000}
    assert len(sender.statuses) == len(rest) and not failed, f"resend: {len(failed)} not acknowledged: {failed}"
    report = check_store(usgi.data_dir, usgi.database_url, expect_no_temp=False)
    assert_kept(report, corpus.sha256, list(corpus.sha256), "sent")
    assert len(report.by_uid) == len(corpus.items)
    # The API sees them too (one row per SOP Instance UID: duplicates stored nothing new).
    page = usgi.get("/api/images", params={"patient_id": "E2E-CORPUS", "per_page": 1})
    assert page.status_code == 200, page.text
    assert page.json()["meta"]["total"] == len(corpus.items)


def test_sigkill_during_a_pynetdicom_burst_loses_no_acknowledged_image(usgi: UsgiServe, corpus: Corpus) -> None:
    kill_after = int(len(corpus.items) * KILL_FRACTION)
    sender = PacedSender(usgi.dicom_port, corpus.items, corpus.contexts, signal_after=kill_after, timeout=5).start()
    assert sender.reached.wait(60), f"only {len(sender.acked)} acknowledged; {sender.error}\n{usgi.log()}"
    _wait_for_a_transfer_in_flight(usgi.data_dir)
    usgi.kill()
    sender.join(60)
    # Every 0x0000 the sender got, including one the server sent just before dying and read after the kill.
    acked = list(sender.acked)
    assert kill_after <= len(acked) < len(corpus.items), "the kill did not interrupt the burst"
    assert not sender.released, "the association should have been cut by the kill"

    _restart_and_check(usgi, corpus, acked)
    _resend_and_check_everything(usgi, corpus, acked)


# dcmtk storescu -v: "I: Sending file: <path>" ... "I: Received Store Response (<status>)"
_SENDING = re.compile(r"^I: Sending file: (.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((.+)\)")


class _StorescuWatcher:
    """Reads storescu's -v log as it comes, pairing each file sent with its response status."""

    def __init__(self, proc: subprocess.Popen[str], signal_after: int) -> None:
        self.proc = proc
        self.signal_after = signal_after
        self.results: dict[Path, str] = {}
        self.lines: list[str] = []
        self.reached = threading.Event()
        self._current: Path | None = None
        self._thread = threading.Thread(target=self._read, name="storescu-log", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if m := _SENDING.match(line):
                self._current = Path(m.group(1))
            elif (m := _RESPONSE.match(line)) and self._current is not None:
                self.results[self._current] = m.group(1)
                self._current = None
                if len(self.succeeded) >= self.signal_after:
                    self.reached.set()

    @property
    def succeeded(self) -> list[Path]:
        return [p for p, status in list(self.results.items()) if status == "Success"]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive()


def _storescu(dcmtk: dict[str, str], port: int, corpus: Corpus, *paths: Path) -> list[str]:
    return [
        dcmtk["storescu"],
        "-v",
        "-aet",
        "STORESCU",
        "-aec",
        "USGI",
        *STORESCU_PROPOSE[corpus.transfer_syntax_uid],
        "-to",
        "20",
        "-ta",
        "20",
        "-td",
        "20",
        "127.0.0.1",
        str(port),
        *[str(p) for p in paths],
    ]


def test_sigkill_while_storescu_sends_a_folder_loses_no_acknowledged_image(
    usgi: UsgiServe, corpus: Corpus, dcmtk: dict[str, str]
) -> None:
    kill_after = int(len(corpus.items) * KILL_FRACTION)
    cmd = _storescu(dcmtk, usgi.dicom_port, corpus, corpus.folder)
    cmd[2:2] = ["+sd", "+r"]  # scan the folder, recursively
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        watcher = _StorescuWatcher(proc, kill_after)
        deadline = time.monotonic() + 60
        # Kill on storescu's count of successes; should its log ever be unreadable, on the store's file count.
        while not watcher.reached.wait(0.01):
            assert time.monotonic() < deadline, "storescu did not get far enough:\n" + "\n".join(watcher.lines[-20:])
            assert proc.poll() is None or watcher.reached.is_set(), "storescu ended early:\n" + "\n".join(
                watcher.lines[-20:]
            )
            if not watcher.results and len(store_files(usgi.data_dir)) >= kill_after:
                break
        _wait_for_a_transfer_in_flight(usgi.data_dir)
        usgi.kill()
        proc.wait(60)
        watcher.join(10)
    assert proc.returncode != 0, "storescu should have seen the association cut"
    succeeded = watcher.succeeded

    by_path = {path: uid for uid, path in corpus.items}
    if not watcher.results:
        # storescu's log could not be parsed: check what holds whatever was acknowledged.
        usgi.start()
        report = check_store(usgi.data_dir, usgi.database_url)
        print(f"storescu log not parseable; {len(report.by_uid)} indexed after restart")
        return
    acked = [by_path[p] for p in succeeded]
    assert kill_after <= len(acked) < len(corpus.items), "the kill did not interrupt the transfer"
    _restart_and_check(usgi, corpus, acked)

    # Send what storescu did not see acknowledged again, with storescu.
    rest = [path for uid, path in corpus.items if uid not in set(acked)]
    done = subprocess.run(_storescu(dcmtk, usgi.dicom_port, corpus, *rest), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("Received Store Response (Success)") == len(rest), done.stderr[-2000:]
    report = check_store(usgi.data_dir, usgi.database_url, expect_no_temp=False)
    assert_kept(report, corpus.sha256, list(corpus.sha256), "sent")
    assert len(report.by_uid) == len(corpus.items)


def test_a_restart_under_another_hostname_sweeps_what_the_killed_server_left_in_images_tmp(
    serve_factory: Callable[..., UsgiServe], corpus: Corpus
) -> None:
    """The temp folder is per process, ``images/tmp/<hostname>``. A container recreated on the same data volume
    (``docker compose up -d`` after a settings change) gets a new hostname: what the killed one left in its
    folder is not in the new server's folder. A file there untouched for an hour is no transfer in flight
    (one writes at least once per network timeout, 60 s), so the restart must remove it all the same."""
    usgi = serve_factory(start=False)
    dead = usgi.data_dir / "images" / "tmp" / "3f2a9c1d7e6b"  # the killed container's hostname
    dead.mkdir(parents=True)
    partial = dead / "tmpk2j4x9qa.dcm"
    partial.write_bytes(corpus.items[0][1].read_bytes()[:40_000])  # a data set cut short by SIGKILL
    an_hour_ago = time.time() - 3600
    os.utime(partial, (an_hour_ago, an_hour_ago))

    usgi.start()
    left = temp_files(usgi.data_dir)
    assert not left, f"left in images/tmp after the restart: {[str(p.relative_to(usgi.data_dir)) for p in left]}"
