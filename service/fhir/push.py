"""Delivering the FHIR outbox to the EHR (DESIGN.md §1, §4): claim → commit → POST → record, with retries.

Each outbox row holds the procedure's whole resource set as a transaction Bundle conditional on business
identifiers (:mod:`service.fhir.transaction`), so delivering it twice creates nothing new in the EHR: the worst a
crash or a lost answer can cause is a resend, never a loss or a duplicate resource. A Bundle larger than
``USGI_PUSH_MAX_ENTRIES`` goes as several transactions (stages), referenced resources first; a failure at any
stage makes the whole delivery be repeated, which the conditional entries make harmless.

- **Claiming** selects due messages with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite ignores it and is
  serialised by the write lock) and *leases* them: ``next_attempt_at`` moves past the longest a delivery can take
  (every stage), so concurrent workers skip them, and a message whose worker died becomes due again when the
  lease runs out. ``attempts`` grows by one per claim and is the claim's fencing token: only the holder of the
  current claim may record the outcome.
- **No transaction is open during the HTTP requests**; the outcome is recorded in a new one.
- **Order**: a message is due only when every earlier version of its procedure has been delivered, so an older
  version never lands after a newer one; a failed message holds back the later ones of its procedure until an
  administrator retries it.
- **Outcomes**: every stage answered by a transaction-response Bundle with every entry 2xx → ``delivered``; no
  answer, 5xx or 429 → pending again after an exponential backoff with full jitter (never sooner than a
  ``Retry-After``); any other answer → ``failed`` with the OperationOutcome's diagnostics, until :func:`retry`.

Logs name message ids, versions and HTTP statuses only: never Bundle contents or the EHR's diagnostics, which may
echo patient data (those are kept in ``last_error``, in the database, for the admin API).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session, aliased

from service.bootstrap import Services
from service.db import stored_utc, unit_of_work
from service.errors import Conflict, NotFound
from service.fhir.transaction import PushError, locations, plan, stage_bundle
from service.models import OutboxMessage

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
ERROR_LIMIT = 2000  # characters of last_error kept
LEASE_MARGIN = timedelta(seconds=30)  # beyond the HTTP timeout, for recording the outcome
RETRY_AFTER_LIMIT = 86400.0  # a Retry-After beyond a day is taken as a day


@dataclass(frozen=True)
class Claim:
    """A leased message: what a worker needs to send it, and its fencing token."""

    message_id: int
    attempt: int
    bundle: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to."""

    status: str  # delivered | retry | failed | stale (the claim was superseded; nothing recorded)
    http_status: int | None = None
    error: str | None = None
    delay: float = 0.0  # seconds until the next attempt, for retry


def lease_for(timeout_seconds: float) -> timedelta:
    """How long a claimed message is hidden from other workers: a connect and a read timeout, and a margin."""
    return timedelta(seconds=2 * timeout_seconds) + LEASE_MARGIN


def _due(now: datetime) -> Any:
    earlier = aliased(OutboxMessage)
    blocked = exists().where(
        earlier.procedure_id == OutboxMessage.procedure_id,
        earlier.version < OutboxMessage.version,
        earlier.status != "delivered",
    )
    return and_(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now, ~blocked)


def claim_due(session: Session, now: datetime, limit: int, lease: timedelta, max_entries: int = 0) -> list[Claim]:
    """Lease up to ``limit`` due messages, oldest first; the caller commits (and holds the write lock on SQLite).

    ``lease`` is per request: a message delivered in several stages is leased for each of them.
    ``skip_locked``: a message another worker is claiming right now is skipped, not waited for (PostgreSQL;
    SQLite renders no FOR UPDATE and its write lock makes claims one at a time).
    """
    rows = session.scalars(
        select(OutboxMessage)
        .where(_due(now))
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=OutboxMessage)
    ).all()
    claims = []
    held = timedelta(0)  # they are sent one after the other: each lease covers the ones before it too
    for m in rows:
        held += lease * max(1, len(plan(m.bundle, max_entries)))
        m.attempts += 1
        m.next_attempt_at = now + held
        claims.append(Claim(m.id, m.attempts, m.bundle))
    session.flush()
    return claims


def claim_next(services: Services, limit: int = 1) -> list[Claim]:
    """Claim due messages in a transaction of their own (committed before anything is sent)."""
    settings = services.settings
    lease = lease_for(settings.push_timeout_seconds)
    with services.write_lock, unit_of_work(services.session_factory) as s:
        return claim_due(s, services.clock(), limit, lease, settings.push_max_entries)


# --- sending


def backoff_seconds(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^(attempt-1))]; never less than the server's Retry-After."""
    ceiling = min(cap, base * 2 ** min(max(attempt - 1, 0), 62))
    delay = rand() * ceiling
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_LIMIT))
    return delay


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    aware_now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return max(0.0, (when - aware_now).total_seconds())


def _diagnostics(resp: requests.Response) -> str:
    """The OperationOutcome's issues (severity, code, diagnostics or details), else the start of the body."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = []
        for issue in body.get("issue") or []:
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            parts.append(f"{issue.get('severity', '?')} {issue.get('code', '?')}: {text}".strip())
        return f"HTTP {resp.status_code}: " + "; ".join(parts)
    return f"HTTP {resp.status_code}: {resp.text[:500]}"


def _check_response(resp: requests.Response, sent: int) -> tuple[str | None, dict[str, Any]]:
    """(None, the answer) when ``resp`` is a transaction-response whose every entry succeeded, else what is wrong."""
    try:
        body = resp.json()
    except ValueError:
        return "the answer is not JSON", {}
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle" or body.get("type") != "transaction-response":
        return "the answer is not a transaction-response Bundle", {}
    entries = body.get("entry") or []
    if len(entries) != sent:
        return f"the answer has {len(entries)} entries for {sent} sent", {}
    bad = [str((e.get("response") or {}).get("status", "")) for e in entries]
    bad = [s for s in bad if not s.strip().startswith("2")]
    if bad:
        return f"entries not applied: {', '.join(bad[:5])}", {}
    return None, body


def _attempt(services: Services, http: requests.Session, bundle: dict[str, Any], attempt: int) -> Outcome:
    """POST ``bundle`` stage by stage, and what the answers mean."""
    stages = plan(bundle, services.settings.push_max_entries)
    resolved: dict[str, str] = {}
    outcome = Outcome("delivered")
    for number, stage in enumerate(stages, 1):
        where = f"stage {number} of {len(stages)}: " if len(stages) > 1 else ""
        sent = stage_bundle(bundle, stage, resolved)
        outcome, answer = _post(services, http, sent, attempt)
        if outcome.status != "delivered":
            error = f"{where}{outcome.error}" if outcome.error else None
            return Outcome(outcome.status, outcome.http_status, error, outcome.delay)
        try:
            resolved |= locations(sent, answer)
        except PushError as exc:
            return Outcome("failed", outcome.http_status, f"{where}{exc}")
    return outcome


def _post(
    services: Services, http: requests.Session, bundle: dict[str, Any], attempt: int
) -> tuple[Outcome, dict[str, Any]]:
    """One POST of a transaction and what its answer means (with the answer, when it was a success)."""
    settings = services.settings
    timeout = settings.push_timeout_seconds

    def again(status: int | None, error: str, retry_after: float | None = None) -> Outcome:
        base, cap = settings.push_backoff_seconds, settings.push_backoff_max_seconds
        return Outcome("retry", status, error, backoff_seconds(attempt, base, cap, retry_after))

    try:
        resp = http.post(
            settings.ehr_fhir_base,
            json=bundle,
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            timeout=(min(10.0, timeout), timeout),
            allow_redirects=False,  # a redirected POST would become a GET
        )
    except requests.RequestException as exc:
        # No answer: it may or may not have been applied; a resend is harmless (conditional entries).
        return again(None, f"no answer: {type(exc).__name__}"), {}
    with resp:
        if resp.status_code == 429 or resp.status_code >= 500:
            after = parse_retry_after(resp.headers.get("Retry-After"), services.clock())
            return again(resp.status_code, _diagnostics(resp), after), {}
        if 200 <= resp.status_code < 300:
            problem, answer = _check_response(resp, len(bundle.get("entry") or []))
            if problem is None:
                return Outcome("delivered", resp.status_code), answer
            return Outcome("failed", resp.status_code, f"HTTP {resp.status_code}: {problem}"), {}
        return Outcome("failed", resp.status_code, _diagnostics(resp)), {}


def deliver(services: Services, claim: Claim, http: requests.Session | None = None) -> Outcome:
    """Send a claimed message (no transaction open meanwhile), then record the outcome in a new transaction."""
    session = http or requests.Session()
    try:
        result = _attempt(services, session, claim.bundle, claim.attempt)
    finally:
        if http is None:
            session.close()
    with services.write_lock, unit_of_work(services.session_factory) as s:
        m = s.get(OutboxMessage, claim.message_id, with_for_update=True)
        if m is None or m.status != "pending" or m.attempts != claim.attempt:
            # The lease ran out and another worker claimed it (or an admin acted): theirs is the outcome to keep.
            log.warning("outbox message %d: claim %d superseded, outcome not recorded", claim.message_id, claim.attempt)
            return Outcome("stale", result.http_status)
        now = services.clock()
        m.last_status = result.http_status
        m.last_error = result.error[:ERROR_LIMIT] if result.error else None
        if result.status == "retry":
            m.next_attempt_at = now + timedelta(seconds=result.delay)
            log.info(
                "outbox message %d v%d: attempt %d got %s, next in %.1fs",
                m.id, m.version, m.attempts, result.http_status or "no answer", result.delay,
            )  # fmt: skip
        elif result.status == "delivered":
            m.status, m.delivered_at = "delivered", now
            log.info("outbox message %d v%d delivered (HTTP %s)", m.id, m.version, result.http_status)
        else:
            m.status = "failed"
            log.error("outbox message %d v%d refused by the EHR (HTTP %s)", m.id, m.version, result.http_status)
        return result


def push_due(services: Services, http: requests.Session | None = None, limit: int = 1) -> list[Outcome]:
    """Claim up to ``limit`` due messages and deliver them one after the other."""
    return [deliver(services, c, http) for c in claim_next(services, limit)]


# --- administration


def list_messages(services: Services, status: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Messages (newest first) without their Bundles, which hold patient data."""
    query = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)
    if status:
        query = query.where(OutboxMessage.status == status)
    with services.session_factory() as s:
        return [_summary(m) for m in s.scalars(query)]


def retry(services: Services, message_id: int) -> dict[str, Any]:
    """Put a failed message back in the queue, due now (its later versions follow once it is delivered)."""
    with services.write_lock, unit_of_work(services.session_factory) as s:
        m = s.get(OutboxMessage, message_id, with_for_update=True)
        if m is None:
            raise NotFound(f"no outbox message {message_id}")
        if m.status != "failed":
            raise Conflict(f"outbox message {message_id} is {m.status}: only a failed message can be retried")
        m.status, m.next_attempt_at = "pending", services.clock()
        s.flush()
        return _summary(m)


def _summary(m: OutboxMessage) -> dict[str, Any]:
    return {
        "id": m.id,
        "procedure_id": m.procedure_id,
        "version": m.version,
        "status": m.status,
        "attempts": m.attempts,
        "next_attempt_at": stored_utc(m.next_attempt_at),
        "created_at": stored_utc(m.created_at),
        "delivered_at": stored_utc(m.delivered_at),
        "last_status": m.last_status,
        "last_error": m.last_error,
    }


# --- the worker loop


class Pusher:
    """A thread draining the outbox: woken every ``interval`` seconds or by :meth:`notify`; stops on :meth:`stop`.

    Several pushers (threads or processes, on one database) may run at once: claims keep them apart.
    """

    def __init__(self, services: Services, interval: float = 1.0, name: str = "fhir-push") -> None:
        self.services = services
        self.interval = interval
        self.name = name
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = requests.Session()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        log.info("pushing the FHIR outbox to the EHR (%s)", self.name)

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the delivery in flight, waiting for it at most ``timeout`` seconds."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Its claim's lease makes the message due again later: nothing is lost.
                log.warning("%s: a delivery is still in flight; leaving it to its lease", self.name)
        self._http.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                busy = bool(push_due(self.services, self._http))
            except Exception:  # noqa: BLE001 - a database hiccup must not end the worker; try again later
                log.exception("%s: pushing the outbox failed; trying again", self.name)
                busy = False
            if not busy:
                self._wake.wait(self.interval)
                self._wake.clear()
