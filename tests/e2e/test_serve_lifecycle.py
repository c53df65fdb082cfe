"""`usgi serve` start and stop: health endpoints, and SIGTERM while an association is sending.

On SIGTERM the server stops accepting associations, lets the one in flight finish within the grace period
(every C-STORE acknowledged and kept), then exits with code 0; past the grace period it aborts what is left.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.support import Corpus, PacedSender, UsgiServe, assert_kept, check_store, write_cine

pytestmark = pytest.mark.e2e


def test_healthz_needs_no_token_and_readyz_needs_one(usgi: UsgiServe) -> None:
    health = usgi.get("/healthz", role=None)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"

    anonymous = usgi.get("/readyz", role=None)
    assert anonymous.status_code == 401
    assert anonymous.json()["status"] == 401
    bad = usgi.get("/readyz", role=None, headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401

    ready = usgi.get("/readyz", role="auditor")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "image_store": "ok"}}


def _echo_refused_within(usgi: UsgiServe, seconds: float) -> float | None:
    """Seconds until a new association (dcmtk echoscu) is refused, or None if it never was."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not usgi.echo(timeout=2):
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def test_sigterm_refuses_new_associations_and_lets_the_one_in_flight_finish(usgi: UsgiServe, corpus: Corpus) -> None:
    grace = int(usgi.env["USGI_SHUTDOWN_GRACE_SECONDS"])
    items = corpus.items[:30]
    # ~30 C-STOREs 0.12 s apart: the association is still sending for a few seconds after the SIGTERM.
    sender = PacedSender(usgi.dicom_port, items, corpus.contexts, signal_after=5, pause=0.12).start()
    assert sender.reached.wait(30), f"{sender.error}\n{usgi.log()}"

    sigterm_at = time.monotonic()
    usgi.terminate()
    refused_after = _echo_refused_within(usgi, 5)
    in_flight_when_refused = not sender.done.is_set()
    assert refused_after is not None, "new associations were still accepted 5 s after SIGTERM"
    assert not usgi.echo(timeout=2), "a new association was accepted after one had been refused"

    assert usgi.proc is not None
    usgi.proc.wait(timeout=grace + 10)
    exited_after = time.monotonic() - sigterm_at
    sender.join(30)
    print(
        f"SIGTERM: new associations refused after {refused_after:.2f} s, "
        f"in-flight association ended after {(sender.finished_at or 0) - sigterm_at:.2f} s, "
        f"exit after {exited_after:.2f} s (grace {grace} s)"
    )

    assert in_flight_when_refused, "the association in flight should still have been sending when echo was refused"
    assert sender.error is None, sender.error
    assert sender.statuses == dict.fromkeys([uid for uid, _ in items], 0x0000), "every C-STORE must succeed"
    assert sender.released, "the association in flight should end with a normal release"
    assert usgi.proc.returncode == 0, usgi.log()
    assert exited_after < grace, f"took {exited_after:.1f} s to exit (grace {grace} s)"
    assert sender.finished_at is not None and sender.finished_at - sigterm_at <= exited_after
    assert "aborting" not in usgi.log()

    report = check_store(usgi.data_dir, usgi.database_url)  # a clean stop leaves nothing in images/tmp
    assert_kept(report, corpus.sha256, [uid for uid, _ in items], "acknowledged")


def test_sigterm_aborts_an_association_still_open_after_the_grace_period(
    serve_factory: Callable[..., UsgiServe], corpus: Corpus
) -> None:
    grace = 2
    usgi = serve_factory(USGI_SHUTDOWN_GRACE_SECONDS=str(grace))
    items = corpus.items[:40]
    # 40 C-STOREs 0.3 s apart: ~12 s, far past the grace period.
    sender = PacedSender(usgi.dicom_port, items, corpus.contexts, signal_after=3, pause=0.3).start()
    assert sender.reached.wait(30), f"{sender.error}\n{usgi.log()}"

    sigterm_at = time.monotonic()
    usgi.terminate()
    assert usgi.proc is not None
    usgi.proc.wait(timeout=grace + 10)
    exited_after = time.monotonic() - sigterm_at
    sender.join(30)
    print(
        f"grace {grace} s: exit after {exited_after:.2f} s, sender ended after {sender.finished_at - sigterm_at:.2f} s"
    )

    assert usgi.proc.returncode == 0, usgi.log()
    assert grace <= exited_after < grace + 5, f"exit after {exited_after:.1f} s with a {grace} s grace period"
    assert not sender.released and len(sender.statuses) < len(items), "the association should have been aborted"
    assert "aborting 1 association(s)" in usgi.log()
    report = check_store(usgi.data_dir, usgi.database_url, expect_no_temp=False)
    assert_kept(report, corpus.sha256, sender.acked, "acknowledged")


def test_sigterm_refuses_new_associations_even_while_an_http_download_is_in_flight(
    serve_factory: Callable[..., UsgiServe], dcmtk: dict[str, str], tmp_path: Path
) -> None:
    """A clinician's slow download must neither keep the DICOM port open after SIGTERM nor keep the process
    running past the grace period."""
    grace = 3
    usgi = serve_factory(USGI_SHUTDOWN_GRACE_SECONDS=str(grace))
    src = tmp_path / "in" / "cine.dcm"
    src.parent.mkdir()
    uid, _sha, _size = write_cine(src, frames=20)  # 18 MB: far more than the socket buffers below hold
    cmd = [dcmtk["storescu"], "-aet", "STORESCU", "-aec", "USGI", "-xe", "127.0.0.1", str(usgi.dicom_port), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert usgi.proc is not None

    # Start the download and stop reading. With a small receive buffer (no autotuning, which here may grow
    # to 32 MB) the server's request thread soon blocks on a full socket, as with a slow or stalled client.
    request = (
        f"GET /api/images/{uid}/dicom HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {usgi.token('clinician')}\r\nConnection: close\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.settimeout(10)
        client.connect(("127.0.0.1", usgi.http_port))
        client.sendall(request.encode())
        assert client.recv(4096).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.5)
        sigterm_at = time.monotonic()
        usgi.terminate()
        refused_after = _echo_refused_within(usgi, grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            usgi.proc.wait(timeout=max(0.1, grace + 3 - (time.monotonic() - sigterm_at)))
        exited_after = time.monotonic() - sigterm_at if usgi.proc.poll() is not None else None
    usgi.proc.wait(timeout=15)  # the client has gone: whatever the outcome above, it stops now
    print(f"with an HTTP download in flight: echo refused after {refused_after} s, exit after {exited_after} s")

    problems = []
    if refused_after is None:
        problems.append(f"new DICOM associations were still accepted {grace} s after SIGTERM")
    if exited_after is None:
        problems.append(f"the process was still running {grace + 3} s after SIGTERM (grace period {grace} s)")
    assert not problems, "with an HTTP download in flight: " + "; ".join(problems)
    assert usgi.proc.returncode == 0, usgi.log()


def test_worker_processes_stop_when_the_supervisor_is_killed(serve_factory: Callable[..., UsgiServe]) -> None:
    """With several DICOM receiver processes, a SIGKILLed `usgi serve` must not leave workers on the port."""
    usgi = serve_factory(USGI_DICOM_PROCESSES="2")
    children = [int(p) for p in Path(f"/proc/{usgi.pid}/task/{usgi.pid}/children").read_text().split()]
    assert len(children) == 2 and usgi.echo()
    usgi.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{c}").exists() for c in children), "workers outlived the supervisor"
    assert not usgi.echo(), "the DICOM port still answers"
    # A new server starts on the same port at once.
    usgi.start()
    assert usgi.echo()
