"""NeoleadsConnectionSettings.from_connection: the host field, as Airflow reads it from the environment."""

from __future__ import annotations

import pytest
from airflow.sdk import BaseHook

from neoleads_provider.connection import NeoleadsConnectionSettings
from neoleads_provider.exceptions import NeoleadsConfigError
from tests._helpers import use_connection

CONN_ID = "neoleads_default"
EXPECTED = "must be an http:// or https:// URL"


def settings_for(monkeypatch: pytest.MonkeyPatch, host: str, **kwargs: object) -> NeoleadsConnectionSettings:
    use_connection(monkeypatch, CONN_ID, host=host, password="tok-123")
    return NeoleadsConnectionSettings.from_connection(BaseHook.get_connection(CONN_ID), **kwargs)


@pytest.mark.parametrize(
    ("host", "base_url"),
    [
        ("https://app.neoleads.com", "https://app.neoleads.com"),
        ("https://app.neoleads.com/", "https://app.neoleads.com"),
        ("HTTPS://app.neoleads.com", "https://app.neoleads.com"),
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("app.neoleads.com", "https://app.neoleads.com"),
        ("localhost:3000", "https://localhost:3000"),
        ("https://chat.example.com/neoleads/", "https://chat.example.com/neoleads"),
    ],
)
def test_http_hosts_are_accepted(monkeypatch, host, base_url):
    assert settings_for(monkeypatch, host).base_url == base_url


@pytest.mark.parametrize(
    ("host", "scheme"),
    [
        ("ftp://files.example.com", "ftp"),
        ("ftp://admin:hunter2@files.example.com/pub", "ftp"),
        ("file:///etc/passwd", "file"),
        ("file:/etc/passwd", "file"),
        ("FILE:///tmp/x", "file"),
        ("ws://app.neoleads.com", "ws"),
        ("wss://app.neoleads.com", "wss"),
        ("gopher://example.com", "gopher"),
    ],
)
def test_other_schemes_are_refused_naming_the_field_and_scheme(monkeypatch, host, scheme):
    with pytest.raises(NeoleadsConfigError) as excinfo:
        settings_for(monkeypatch, host)
    assert str(excinfo.value) == (
        f"Connection 'neoleads_default': field 'host' must be an http:// or https:// URL, got scheme {scheme!r}"
    )
    assert "hunter2" not in str(excinfo.value)
    assert "admin" not in str(excinfo.value)


@pytest.mark.parametrize("host", ["https://", "http://", "https:///api", "https://user:pw@", "https:"])
def test_a_url_without_a_host_name_is_refused(monkeypatch, host):
    with pytest.raises(NeoleadsConfigError) as excinfo:
        settings_for(monkeypatch, host)
    scheme = host.split(":", 1)[0]
    assert str(excinfo.value) == (
        "Connection 'neoleads_default': field 'host' must be an http:// or https:// URL with a host name, "
        f"got '{scheme}://' with none"
    )
    assert "pw" not in str(excinfo.value)


def test_a_scheme_that_is_not_one_is_not_echoed(monkeypatch):
    # Whatever stands before "://" may be credentials pasted in the wrong place.
    with pytest.raises(NeoleadsConfigError) as excinfo:
        settings_for(monkeypatch, "admin:hunter2@ftp://files.example.com")
    assert str(excinfo.value) == (
        "Connection 'neoleads_default': field 'host' must be an http:// or https:// URL, "
        "e.g. https://app.neoleads.com"
    )


@pytest.mark.parametrize("host", ["https://app.neoleads.com:99999", "https://app.neoleads.com:0"])
def test_a_bad_port_is_refused(monkeypatch, host):
    with pytest.raises(
        NeoleadsConfigError, match="field 'host' has a port that is not a number from 1 to 65535"
    ):
        settings_for(monkeypatch, host)


def test_the_receiver_reading_the_connection_refuses_the_scheme_too(monkeypatch):
    with pytest.raises(NeoleadsConfigError, match="got scheme 'ftp'"):
        settings_for(monkeypatch, "ftp://files.example.com", require_token=False)
