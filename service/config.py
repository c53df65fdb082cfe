"""One settings object, read from ``USGI_*`` environment variables (DESIGN.md §3)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.procedures.roles import ImageRole


class ConfigError(ValueError):
    """A ``USGI_*`` variable has a value the service cannot use."""


def _int(environ: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from exc
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is outside {lo}..{hi}")
    return value


def _switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{name}={raw!r} must be on or off")


def _seconds(environ: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from exc
    if not lo <= value <= hi:  # also refuses nan
        raise ConfigError(f"{name}={value} is outside {lo}..{hi}")
    return value


def _ae_title(value: str, name: str) -> str:
    value = value.strip()
    if not value or len(value) > 16 or "\\" in value or not value.isprintable():
        raise ConfigError(f"{name}={value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value


def _http_url(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip().rstrip("/")
    if value and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={value!r} must be an http(s) URL")
    return value


def _uri(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip().rstrip("/")
    if value and (":" not in value or any(c.isspace() for c in value)):
        raise ConfigError(f"{name}={value!r} must be an absolute URI (e.g. https://clinic.example.org/usgi)")
    return value


def _timezone(name: str) -> str:
    """An IANA zone name (``Europe/London``); empty means the server's local time zone."""
    if name:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"USGI_TIMEZONE={name!r} is not a known IANA time zone (e.g. Europe/London)") from exc
    return name


def _role_keywords(spec: str) -> str:
    if spec:
        from service.procedures.roles import parse_keywords

        try:
            parse_keywords(spec)
        except ValueError as exc:
            raise ConfigError(f"USGI_ROLE_KEYWORDS: {exc}") from exc
    return spec


def _mask_url(url: str) -> str:
    """The URL with its password hidden, wherever libpq would read one (user info or ?password=)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown scheme-only
        return url.split("://", 1)[0] + "://***"
    query = {k: ("***" if k.lower() in ("password", "passfile", "sslpassword") else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


@dataclass(frozen=True)
class Settings:
    """Every setting of the service; see the README's table for each variable's meaning."""

    data_dir: Path = Path("./var")
    database_url: str = ""
    image_store: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    ae_title: str = "USGI"
    dicom_peers: tuple[str, ...] = ()
    dicom_max_associations: int = 64
    dicom_max_pdu: int = 131072
    dicom_processes: int = 1
    dicom_network_timeout: int = 60
    dicom_store_lane: bool = True
    ehr_fhir_base: str = ""
    payer_rules: str = "us-cms"
    log_level: str = "INFO"
    shutdown_grace_seconds: int = 30
    public_url: str = ""
    identifier_system: str = ""
    link_window_hours: int = 12
    timezone: str = ""
    role_keywords: str = ""
    push_timeout_seconds: float = 30.0
    push_backoff_seconds: float = 2.0
    push_backoff_max_seconds: float = 600.0
    push_max_entries: int = 8

    def __post_init__(self) -> None:
        # Derived defaults follow USGI_DATA_DIR unless set explicitly.
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'usgi.db'}")
        if not self.image_store:
            object.__setattr__(self, "image_store", f"file://{self.data_dir / 'images'}")
        if not self.public_url:
            object.__setattr__(self, "public_url", f"http://{self.http_host}:{self.http_port}")
        if not self.identifier_system:
            object.__setattr__(self, "identifier_system", f"{self.public_url.rstrip('/')}/id")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the ``USGI_*`` variables; raise :class:`ConfigError` naming a bad one."""
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("USGI_DATA_DIR", "").strip() or "./var")
        peers = tuple(_ae_title(p, "USGI_DICOM_PEERS") for p in env.get("USGI_DICOM_PEERS", "").split(",") if p.strip())
        payer_rules = env.get("USGI_PAYER_RULES", "").strip() or "us-cms"
        if payer_rules not in ("us-cms", "uk-nhs"):
            raise ConfigError(f"USGI_PAYER_RULES={payer_rules!r} must be us-cms or uk-nhs")
        store = env.get("USGI_IMAGE_STORE", "").strip()
        if store and not store.startswith("file://"):
            raise ConfigError(f"USGI_IMAGE_STORE={store!r}: only file:// stores are available in this version")
        ehr = env.get("USGI_EHR_FHIR_BASE", "").strip().rstrip("/")
        if ehr and not ehr.startswith(("http://", "https://")):
            raise ConfigError(f"USGI_EHR_FHIR_BASE={ehr!r} must be an http(s) URL")
        if ehr and not env.get("USGI_IDENTIFIER_SYSTEM", "").strip():
            # The EHR finds our resources again by identifiers in this system: a default derived from the
            # listening address would change with it and duplicate everything there.
            raise ConfigError("USGI_EHR_FHIR_BASE needs USGI_IDENTIFIER_SYSTEM: your organisation's URI, never changed")
        log_level = (env.get("USGI_LOG_LEVEL", "").strip() or "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"USGI_LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR")
        processes = _int(env, "USGI_DICOM_PROCESSES", 1, 1, 64)
        dicom_port = _int(env, "USGI_DICOM_PORT", 11112, 0, 65535)
        if processes > 1 and dicom_port == 0:
            raise ConfigError("USGI_DICOM_PROCESSES > 1 needs a fixed USGI_DICOM_PORT (0 would give each its own)")
        backoff = _seconds(env, "USGI_PUSH_BACKOFF_SECONDS", 2.0, 0.01, 3600)
        backoff_max = _seconds(env, "USGI_PUSH_BACKOFF_MAX_SECONDS", 600.0, 0.01, 86400)
        if backoff > backoff_max:
            raise ConfigError("USGI_PUSH_BACKOFF_SECONDS must not exceed USGI_PUSH_BACKOFF_MAX_SECONDS")
        return cls(
            data_dir=data_dir,
            database_url=env.get("USGI_DATABASE_URL", "").strip(),
            image_store=store,
            http_host=env.get("USGI_HTTP_HOST", "").strip() or "127.0.0.1",
            http_port=_int(env, "USGI_HTTP_PORT", 8080, 0, 65535),
            dicom_host=env.get("USGI_DICOM_HOST", "").strip() or "0.0.0.0",
            dicom_port=dicom_port,
            ae_title=_ae_title(env.get("USGI_AE_TITLE", "") or "USGI", "USGI_AE_TITLE"),
            dicom_peers=peers,
            dicom_max_associations=_int(env, "USGI_DICOM_MAX_ASSOCIATIONS", 64, 1, 1000),
            dicom_max_pdu=_int(env, "USGI_DICOM_MAX_PDU", 131072, 0, 2**32 - 1),
            dicom_processes=processes,
            dicom_network_timeout=_int(env, "USGI_DICOM_NETWORK_TIMEOUT", 60, 1, 3600),
            dicom_store_lane=_switch(env, "USGI_DICOM_STORE_LANE", True),
            ehr_fhir_base=ehr,
            payer_rules=payer_rules,
            log_level=log_level,
            shutdown_grace_seconds=_int(env, "USGI_SHUTDOWN_GRACE_SECONDS", 30, 0, 3600),
            public_url=_http_url(env, "USGI_PUBLIC_URL"),
            identifier_system=_uri(env, "USGI_IDENTIFIER_SYSTEM"),
            link_window_hours=_int(env, "USGI_LINK_WINDOW_HOURS", 12, 0, 168),
            timezone=_timezone(env.get("USGI_TIMEZONE", "").strip()),
            role_keywords=_role_keywords(env.get("USGI_ROLE_KEYWORDS", "").strip()),
            push_timeout_seconds=_seconds(env, "USGI_PUSH_TIMEOUT_SECONDS", 30.0, 1, 600),
            push_backoff_seconds=backoff,
            push_backoff_max_seconds=backoff_max,
            push_max_entries=_int(env, "USGI_PUSH_MAX_ENTRIES", 8, 0, 1000),
        )

    @classmethod
    def for_tests(cls, tmp_path: Path, **overrides: object) -> Settings:
        """Settings for one test: its own data directory, ephemeral ports, the test database if given."""
        base = cls(
            data_dir=tmp_path,
            database_url=os.environ.get("USGI_TEST_DATABASE_URL", ""),
            http_port=0,
            dicom_host="127.0.0.1",
            dicom_port=0,
            dicom_peers=("TESTSCU", "STORESCU", "ECHOSCU", "FINDSCU"),
            shutdown_grace_seconds=5,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    @property
    def local_zone(self) -> tzinfo | None:
        """The zone of the naive DICOM date-times the machines send; None: the server's local zone."""
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone) if self.timezone else None

    @property
    def image_role_keywords(self) -> Mapping[str, ImageRole]:
        from service.procedures.roles import DEFAULT_KEYWORDS, parse_keywords

        return parse_keywords(self.role_keywords) if self.role_keywords else DEFAULT_KEYWORDS

    @property
    def image_store_path(self) -> Path:
        return Path(self.image_store.removeprefix("file://"))

    def describe(self) -> dict[str, str]:
        """The effective settings with secrets masked, for the start-up log."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "database_url":
                value = _mask_url(str(value))
            out[f.name] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out
