"""The `usgi` command: serve | dicom | worker | migrate | token | peer."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from service.config import ConfigError, Settings

log = logging.getLogger("service")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"
    )
    # pynetdicom logs every PDU at INFO/DEBUG; keep its warnings only unless debugging.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def _services(settings: Settings, temp_name: str | None = None, migrated: bool = True):  # type: ignore[no-untyped-def]
    from service.bootstrap import build_services
    from service.migrate import is_current

    services = build_services(settings, temp_name)
    if migrated and not is_current(services.engine):
        services.close()
        raise click.UsageError(
            f"the database at {settings.describe()['database_url']} is not migrated: run `usgi migrate`"
        )
    return services


@contextlib.contextmanager
def _one_shot(migrated: bool = True) -> Iterator[Any]:
    """Services for one command, with its database connections handed back when it ends."""
    services = _services(_settings(), migrated=migrated)
    try:
        yield services
    finally:
        services.close()


@click.group()
def main() -> None:
    """usgi-docs: DICOM ingest, procedure reports and FHIR for ultrasound-guided injections."""


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    settings = _settings()
    from service.migrate import upgrade

    with _one_shot(migrated=False) as services:
        upgrade(services.engine)
    click.echo(f"database at {settings.describe()['database_url']} is up to date")


# --- tokens


@main.group()
def token() -> None:
    """API bearer tokens."""


@token.command("create")
@click.option("--role", "role", required=True, type=click.Choice(["clinician", "auditor", "ehr", "admin"]))
@click.option("--name", default="", help="who or what uses the token (shown in the audit trail)")
def token_create(role: str, name: str) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from service.auth import Role, create_token

    with _one_shot() as services:
        token_value = create_token(services, Role(role), name or role)
    click.echo(token_value)


@token.command("list")
def token_list() -> None:
    from service.auth import list_tokens

    with _one_shot() as services:
        tokens = list_tokens(services)
    for t in tokens:
        state = "revoked" if t.revoked_at else "active"
        click.echo(f"{t.id}\t{t.role}\t{t.name}\t{state}\t{t.created_at:%Y-%m-%d}")


@token.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    from service.auth import revoke_token

    with _one_shot() as services:
        revoked = revoke_token(services, token_id)
    if not revoked:
        raise click.ClickException(f"no token {token_id}")
    click.echo(f"token {token_id} revoked")


# --- peers


@main.group()
def peer() -> None:
    """DICOM peers (ultrasound machines) allowed to associate."""


@peer.command("add")
@click.argument("ae_title")
@click.option("--host", default=None, help="where Storage Commitment results go once the association has closed")
@click.option("--port", default=None, type=click.IntRange(1, 65535))
@click.option("--description", default=None)
def peer_add(ae_title: str, host: str | None, port: int | None, description: str | None) -> None:
    from service.errors import Conflict
    from service.peers import add_peer

    try:
        with _one_shot() as services:
            p = add_peer(services, ae_title, host, port, description)
    except (ValueError, Conflict) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"peer {p.ae_title} registered")


@peer.command("list")
def peer_list() -> None:
    from service.peers import list_peers

    with _one_shot() as services:
        peers = list_peers(services)
    for p in peers:
        click.echo(f"{p.ae_title}\t{p.host or '-'}\t{p.port or '-'}\t{p.description or ''}")


@peer.command("remove")
@click.argument("ae_title")
def peer_remove(ae_title: str) -> None:
    from service.errors import NotFound
    from service.peers import remove_peer

    try:
        with _one_shot() as services:
            remove_peer(services, ae_title)
    except NotFound as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"peer {ae_title} removed")


# --- servers


class _Stop:
    """Set by SIGTERM/SIGINT; the main thread waits on it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum: int, _frame: Any) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        self.event.set()


def _die_with_parent() -> None:
    """In a worker, before exec: get SIGTERM when `usgi serve` dies, even by SIGKILL (Linux prctl).

    Without it a killed supervisor would leave its workers holding the DICOM port.
    """
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class _DicomWorkers:
    """N `usgi dicom` processes on one port (SO_REUSEPORT), restarted if one dies, stopped together."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def _spawn(self, index: int) -> None:
        cmd = [sys.executable, "-m", "service.cli", "dicom", "--worker", str(index), "--reuse-port"]
        self.procs[index] = subprocess.Popen(cmd, env=os.environ.copy(), preexec_fn=_die_with_parent)

    def start(self) -> None:
        for i in range(self.count):
            self._spawn(i)
        threading.Thread(target=self._watch, name="dicom-supervisor", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopping:
            time.sleep(1)
            for i, p in list(self.procs.items()):
                if p.poll() is not None and not self._stopping:
                    log.error("DICOM worker %d exited with %s; restarting it", i, p.returncode)
                    self._spawn(i)

    def signal_stop(self) -> None:
        """SIGTERM every worker: each stops accepting at once and finishes its associations."""
        self._stopping = True
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def stop(self, grace: float) -> None:
        self.signal_stop()
        deadline = time.monotonic() + grace + 5
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()


class _InFlight:
    """WSGI middleware counting requests in flight, so a stop can wait for them (up to the grace period)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._count = 0
        self._idle = threading.Condition()

    def _done(self) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        from werkzeug.wsgi import ClosingIterator

        with self._idle:
            self._count += 1
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._done()
            raise
        return ClosingIterator(body, [self._done])

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout=timeout)


@main.command()
@click.option("--worker", "worker", default=None, type=int, hidden=True)
@click.option("--reuse-port", is_flag=True, hidden=True)
def dicom(worker: int | None, reuse_port: bool) -> None:
    """Run only the DICOM receiver (storage, verification, MPPS, storage commitment)."""
    settings = _settings()
    _logging(settings)
    from service.dicom.server import DicomServer

    temp_name = None if worker is None else f"{os.uname().nodename}-w{worker}"
    stop = _Stop()
    server = DicomServer(_services(settings, temp_name), reuse_port=reuse_port, resume_commitments=worker in (None, 0))
    server.start()
    stop.event.wait()
    server.stop()
    server.services.close()


@main.command()
def worker() -> None:
    """Deliver the FHIR outbox to the EHR (USGI_EHR_FHIR_BASE); several workers may run at once."""
    settings = _settings()
    if not settings.ehr_fhir_base:
        raise click.UsageError("USGI_EHR_FHIR_BASE is not set: there is no EHR to deliver to")
    _logging(settings)
    from service.fhir.push import Pusher

    stop = _Stop()
    services = _services(settings)
    pusher = Pusher(services, name=f"fhir-push-{os.getpid()}")
    pusher.start()
    click.echo(f"usgi-docs worker delivering the FHIR outbox to {settings.ehr_fhir_base}")
    sys.stdout.flush()
    stop.event.wait()
    pusher.stop()
    services.close()
    log.info("stopped")


@main.command()
def serve() -> None:
    """Run the HTTP API and the DICOM receiver in one command (the embedded default)."""
    settings = _settings()
    _logging(settings)
    from werkzeug.serving import make_server

    from service.app import create_app
    from service.dicom.server import DicomServer

    services = _services(settings)
    log.info("settings: %s", settings.describe())
    if not settings.dicom_peers:
        log.warning("USGI_DICOM_PEERS is empty: only peers registered with `usgi peer add` may send images")
    stop = _Stop()

    dicom_server: DicomServer | None = None
    workers: _DicomWorkers | None = None
    if settings.dicom_processes > 1:
        workers = _DicomWorkers(settings.dicom_processes)
        workers.start()
    else:
        dicom_server = DicomServer(services)
        dicom_server.start()

    pusher = None
    if settings.ehr_fhir_base:
        from service.fhir.push import Pusher

        pusher = Pusher(services)
        pusher.start()

    app = create_app(settings, services)
    in_flight = _InFlight(app)
    http = make_server(settings.http_host, settings.http_port, in_flight, threaded=True)
    threading.Thread(target=http.serve_forever, name="http", daemon=True).start()
    click.echo(f"usgi-docs HTTP  http://{settings.http_host}:{http.server_port}/ (GET /healthz)")
    click.echo(
        f"usgi-docs DICOM AE title {settings.ae_title} on port "
        f"{dicom_server.port if dicom_server else settings.dicom_port}"
    )
    sys.stdout.flush()

    stop.event.wait()
    # First stop accepting everywhere, then let what is in flight finish.
    if dicom_server is not None:
        dicom_server.stop_accepting()
    if workers is not None:
        workers.signal_stop()
    http.shutdown()
    deadline = time.monotonic() + settings.shutdown_grace_seconds
    if not in_flight.wait_idle(settings.shutdown_grace_seconds):
        log.warning("HTTP requests still running after the grace period are cut off")
    http.server_close()
    remaining = max(0.0, deadline - time.monotonic())
    if dicom_server is not None:
        dicom_server.stop(grace_seconds=remaining)
    if workers is not None:
        workers.stop(remaining)
    if pusher is not None:
        pusher.stop()  # an unfinished delivery is picked up again when its lease runs out
    services.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
