"""Settings.from_env: the DESIGN/README defaults, every variable parsed, every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from service.config import ConfigError, Settings


def test_defaults_follow_the_design_table():
    s = Settings.from_env({})
    assert s.data_dir == Path("./var")
    assert make_url(s.database_url).get_backend_name() == "sqlite"
    assert Path(make_url(s.database_url).database) == Path("./var") / "usgi.db"
    assert s.image_store.startswith("file://")
    assert s.image_store_path == Path("./var") / "images"
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert (s.dicom_host, s.dicom_port) == ("0.0.0.0", 11112)
    assert s.ae_title == "USGI"
    assert s.dicom_peers == ()
    assert (s.dicom_max_associations, s.dicom_max_pdu, s.dicom_processes) == (64, 131072, 1)
    assert (s.dicom_network_timeout, s.shutdown_grace_seconds) == (60, 30)
    assert s.ehr_fhir_base == ""
    assert s.payer_rules == "us-cms"
    assert s.log_level == "INFO"
    # Blank values are the defaults too.
    assert Settings.from_env(dict.fromkeys(("USGI_DATA_DIR", "USGI_HTTP_PORT", "USGI_PAYER_RULES"), "  ")) == s


def test_derived_locations_follow_the_data_dir():
    s = Settings.from_env({"USGI_DATA_DIR": "/srv/usgi"})
    assert s.database_url == "sqlite:////srv/usgi/usgi.db"
    assert make_url(s.database_url).database == "/srv/usgi/usgi.db"
    assert s.image_store == "file:///srv/usgi/images"
    assert s.image_store_path == Path("/srv/usgi/images")


def test_every_variable_is_parsed():
    env = {
        "USGI_DATA_DIR": "/data",
        "USGI_DATABASE_URL": "postgresql+psycopg://usgi:secret@db:5432/usgi",
        "USGI_IMAGE_STORE": "file:///mnt/images",
        "USGI_HTTP_HOST": "0.0.0.0",
        "USGI_HTTP_PORT": "9000",
        "USGI_DICOM_HOST": "10.0.0.5",
        "USGI_DICOM_PORT": "104",
        "USGI_AE_TITLE": "USGI_EAST",
        "USGI_DICOM_PEERS": " CART1 , SONOSITE_2,,",
        "USGI_DICOM_MAX_ASSOCIATIONS": "8",
        "USGI_DICOM_MAX_PDU": "0",
        "USGI_DICOM_PROCESSES": "4",
        "USGI_DICOM_NETWORK_TIMEOUT": "15",
        "USGI_DICOM_STORE_LANE": "Off",
        "USGI_SHUTDOWN_GRACE_SECONDS": "5",
        "USGI_EHR_FHIR_BASE": "https://ehr.example/fhir/",
        "USGI_IDENTIFIER_SYSTEM": "https://clinic.example/id",
        "USGI_PAYER_RULES": "uk-nhs",
        "USGI_LOG_LEVEL": "debug",
    }
    s = Settings.from_env(env)
    assert s.data_dir == Path("/data")
    assert s.database_url == "postgresql+psycopg://usgi:secret@db:5432/usgi"
    assert s.image_store == "file:///mnt/images" and s.image_store_path == Path("/mnt/images")
    assert (s.http_host, s.http_port) == ("0.0.0.0", 9000)
    assert (s.dicom_host, s.dicom_port) == ("10.0.0.5", 104)
    assert s.ae_title == "USGI_EAST"
    assert s.dicom_peers == ("CART1", "SONOSITE_2")
    assert s.dicom_max_associations == 8
    assert s.dicom_max_pdu == 0
    assert s.dicom_processes == 4
    assert s.dicom_network_timeout == 15
    assert s.dicom_store_lane is False
    assert s.shutdown_grace_seconds == 5
    assert s.ehr_fhir_base == "https://ehr.example/fhir"
    assert s.payer_rules == "uk-nhs"
    assert s.log_level == "DEBUG"


def test_from_env_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("USGI_HTTP_PORT", "8181")
    monkeypatch.setenv("USGI_AE_TITLE", "FROMENV")
    s = Settings.from_env()
    assert s.http_port == 8181 and s.ae_title == "FROMENV"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("USGI_HTTP_PORT", "70000"),
        ("USGI_HTTP_PORT", "-1"),
        ("USGI_HTTP_PORT", "abc"),
        ("USGI_HTTP_PORT", "80.5"),
        ("USGI_DICOM_PORT", "65536"),
        ("USGI_DICOM_PORT", "eleven"),
        ("USGI_DICOM_MAX_ASSOCIATIONS", "0"),
        ("USGI_DICOM_MAX_PDU", "-5"),
        ("USGI_DICOM_PROCESSES", "65"),
        ("USGI_DICOM_NETWORK_TIMEOUT", "0"),
        ("USGI_DICOM_STORE_LANE", "sometimes"),
        ("USGI_SHUTDOWN_GRACE_SECONDS", "forever"),
        ("USGI_AE_TITLE", "A" * 17),
        ("USGI_AE_TITLE", "US\\GI"),
        ("USGI_AE_TITLE", "   "),
        ("USGI_AE_TITLE", "US\tGI"),
        ("USGI_DICOM_PEERS", "CART1,THIS_TITLE_IS_TOO_LONG"),
        ("USGI_DICOM_PEERS", "CART\\1"),
        ("USGI_PAYER_RULES", "de-gkv"),
        ("USGI_PAYER_RULES", "US-CMS"),
        ("USGI_EHR_FHIR_BASE", "ftp://ehr.example/fhir"),
        ("USGI_EHR_FHIR_BASE", "ehr.example/fhir"),
        ("USGI_IMAGE_STORE", "s3://bucket/prefix"),
        ("USGI_LOG_LEVEL", "TRACE"),
        ("USGI_LOG_LEVEL", "verbose"),
    ],
)
def test_a_bad_value_raises_config_error_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({variable: value})
    assert variable in str(exc.value)
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize("value", ["0", "65535", "1"])
def test_port_bounds_are_inclusive(value):
    assert Settings.from_env({"USGI_HTTP_PORT": value}).http_port == int(value)


def test_ae_title_of_sixteen_characters_is_accepted():
    assert Settings.from_env({"USGI_AE_TITLE": "A" * 16}).ae_title == "A" * 16


def test_describe_masks_the_password_of_a_postgres_url():
    s = Settings.from_env({"USGI_DATABASE_URL": "postgresql+psycopg://usgi:s3cr%40t-pw@db.example:5432/usgi"})
    described = s.describe()
    assert "s3cr" not in described["database_url"] and "t-pw" not in described["database_url"]
    assert described["database_url"].startswith("postgresql+psycopg://")
    assert described["database_url"].endswith("db.example:5432/usgi")
    assert "s3cr" not in repr(described)
    # Everything else is shown as configured, as strings.
    assert described["http_port"] == "8080" and described["ae_title"] == "USGI"
    assert "extra" not in described
    assert set(described) == {
        "data_dir", "database_url", "image_store", "http_host", "http_port", "dicom_host", "dicom_port",
        "ae_title", "dicom_peers", "dicom_max_associations", "dicom_max_pdu", "dicom_processes",
        "dicom_network_timeout", "dicom_store_lane", "ehr_fhir_base", "payer_rules", "log_level",
        "shutdown_grace_seconds",
        "public_url", "identifier_system", "link_window_hours", "timezone", "role_keywords",
        "push_timeout_seconds", "push_backoff_seconds", "push_backoff_max_seconds",
        "push_max_entries",
    }  # fmt: skip


def test_describe_leaves_a_url_without_credentials_alone():
    s = Settings.from_env({"USGI_DATA_DIR": "/srv/usgi", "USGI_DICOM_PEERS": "A,B"})
    described = s.describe()
    assert described["database_url"] == "sqlite:////srv/usgi/usgi.db"
    assert described["dicom_peers"] == "A,B"


def test_describe_masks_a_password_given_as_a_url_query_parameter():
    # libpq (psycopg) takes the password from the query string as well: it is just as secret there.
    s = Settings.from_env({"USGI_DATABASE_URL": "postgresql+psycopg://usgi@db.example/usgi?password=s3cret"})
    assert "s3cret" not in s.describe()["database_url"]


def test_several_receiver_processes_need_a_fixed_port():
    with pytest.raises(ConfigError, match="USGI_DICOM_PROCESSES"):
        Settings.from_env({"USGI_DICOM_PROCESSES": "4", "USGI_DICOM_PORT": "0"})
    assert Settings.from_env({"USGI_DICOM_PROCESSES": "4", "USGI_DICOM_PORT": "11112"}).dicom_processes == 4


def test_linking_settings_are_read_and_checked():
    s = Settings.from_env(
        {"USGI_LINK_WINDOW_HOURS": "6", "USGI_TIMEZONE": "Europe/London", "USGI_ROLE_KEYWORDS": "VOR=pre,NACH=post"}
    )
    assert s.link_window_hours == 6 and str(s.local_zone) == "Europe/London"
    assert dict(s.image_role_keywords) == {"VOR": "pre", "NACH": "post"}
    defaults = Settings.from_env({})
    assert defaults.link_window_hours == 12 and defaults.local_zone is None
    assert defaults.image_role_keywords["POST"] == "post"
    with pytest.raises(ConfigError, match="USGI_TIMEZONE"):
        Settings.from_env({"USGI_TIMEZONE": "Mars/Olympus"})
    with pytest.raises(ConfigError, match="USGI_ROLE_KEYWORDS"):
        Settings.from_env({"USGI_ROLE_KEYWORDS": "PRE=before"})
    with pytest.raises(ConfigError, match="USGI_LINK_WINDOW_HOURS"):
        Settings.from_env({"USGI_LINK_WINDOW_HOURS": "-1"})


def test_public_url_and_identifier_system_default_from_the_http_address():
    s = Settings.from_env({"USGI_HTTP_HOST": "10.0.0.5", "USGI_HTTP_PORT": "9000"})
    assert s.public_url == "http://10.0.0.5:9000" and s.identifier_system == "http://10.0.0.5:9000/id"
    given = Settings.from_env(
        {"USGI_PUBLIC_URL": "https://usgi.clinic.example/", "USGI_IDENTIFIER_SYSTEM": "urn:oid:1.2.3.4"}
    )
    assert given.public_url == "https://usgi.clinic.example" and given.identifier_system == "urn:oid:1.2.3.4"
    with pytest.raises(ConfigError, match="USGI_PUBLIC_URL"):
        Settings.from_env({"USGI_PUBLIC_URL": "usgi.clinic.example"})
    with pytest.raises(ConfigError, match="USGI_IDENTIFIER_SYSTEM"):
        Settings.from_env({"USGI_IDENTIFIER_SYSTEM": "clinic"})


def test_pushing_to_an_ehr_needs_an_identifier_system_of_our_own():
    # The EHR matches our resources by identifiers in that system: it must not follow the listening address.
    with pytest.raises(ConfigError, match="USGI_EHR_FHIR_BASE needs USGI_IDENTIFIER_SYSTEM"):
        Settings.from_env({"USGI_EHR_FHIR_BASE": "https://ehr.example/fhir"})
    s = Settings.from_env({"USGI_EHR_FHIR_BASE": "https://ehr.example/fhir", "USGI_IDENTIFIER_SYSTEM": "urn:oid:1.2.3"})
    assert s.ehr_fhir_base == "https://ehr.example/fhir" and s.push_max_entries == 8


@pytest.mark.parametrize(("value", "expected"), [("", True), ("on", True), ("1", True), ("no", False), ("0", False)])
def test_the_store_lane_switch(value, expected):
    assert Settings.from_env({"USGI_DICOM_STORE_LANE": value}).dicom_store_lane is expected
