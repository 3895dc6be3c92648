"""What the command modules share from neoleads_provider/cli/events.py: argument types and error text."""

from __future__ import annotations

import argparse

import pytest
from sqlalchemy.exc import OperationalError

from neoleads_provider.cli.events import http_url, positive_int
from neoleads_provider.cli.inboxes import parse_inbox_id
from neoleads_provider.store.errors import error_text as db_error_text


def test_a_database_error_is_shown_as_its_type_and_the_drivers_first_line() -> None:
    exc = OperationalError(
        "INSERT INTO connection (extra) VALUES (?)",
        {"extra": '{"webhook_secrets": ["hunter2"]}'},
        Exception("database is locked\nDETAIL: while writing"),
    )
    assert db_error_text(exc) == "OperationalError: database is locked"
    assert "hunter2" in str(exc)  # what SQLAlchemy itself would have shown


def test_an_error_without_a_driver_error_is_shown_by_its_own_first_line() -> None:
    assert db_error_text(RuntimeError("no row\nsecond line")) == "RuntimeError: no row"
    assert db_error_text(RuntimeError()) == "RuntimeError: "


def test_positive_int_names_what_it_expected() -> None:
    assert positive_int(" 12 ") == 12
    with pytest.raises(argparse.ArgumentTypeError, match=r"^'x' is not a whole number$"):
        positive_int("x")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^'x' is not an inbox id \(a whole number\)$"):
        parse_inbox_id("x")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^'0' must be at least 1$"):
        parse_inbox_id("0")


@pytest.mark.parametrize("text", ["ftp://example.com/x", "example.com/x", "https://", ""])
def test_http_url_refuses_what_is_not_an_absolute_http_url(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not an http\\(s\\) URL"):
        http_url(text)


def test_http_url_keeps_the_url_without_surrounding_spaces() -> None:
    assert http_url("  https://airflow.example.com/neoleads/webhooks/c?token=t ") == (
        "https://airflow.example.com/neoleads/webhooks/c?token=t"
    )
