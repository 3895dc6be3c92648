"""Reading whole numbers (neoleads_provider/whole_numbers.py) for operators, the sensor and connections."""

from __future__ import annotations

import json

import pytest
from airflow.sdk import Connection

from neoleads_provider.connection import NeoleadsConnectionSettings
from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.operators.base import as_id
from neoleads_provider.whole_numbers import parse_whole_number


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 5), ("5", 5), (" 7 ", 7), ("0012", 12), (3.0, 3), (-4, -4), ("0", 0)],
)
def test_whole_numbers_are_read_from_ints_text_and_integral_floats(value: object, expected: int) -> None:
    assert parse_whole_number(value, "inbox_id") == expected


@pytest.mark.parametrize("value", [True, False, 1.5, "1.5", "abc", "", None, [1], float("nan"), float("inf")])
def test_anything_else_is_refused_naming_the_value(value: object) -> None:
    with pytest.raises(NeoleadsConfigError) as info:
        parse_whole_number(value, "inbox_id")
    assert str(info.value) == f"inbox_id must be a whole number, got {value!r}"


def test_the_minimum_is_checked_after_reading() -> None:
    assert parse_whole_number("1", "after_message_id", minimum=1) == 1
    with pytest.raises(NeoleadsConfigError, match=r"^after_message_id must be >= 1, got 0$"):
        parse_whole_number(" 0 ", "after_message_id", minimum=1)


@pytest.mark.parametrize(
    ("value", "expected"), [("12", 12), (12, 12), (12.0, 12), (None, None), ("  ", None)]
)
def test_an_optional_operator_id(value: object, expected: int | None) -> None:
    assert as_id("inbox_id", value, required=False) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "inbox_id is required (a positive integer id)"),
        ("", "inbox_id is required (a positive integer id)"),
        ("0", "inbox_id must be >= 1, got 0"),
        ("x1", "inbox_id must be a whole number, got 'x1'"),
        (True, "inbox_id must be a whole number, got True"),
    ],
)
def test_a_required_operator_id_names_the_argument(value: object, message: str) -> None:
    with pytest.raises(NeoleadsConfigError) as info:
        as_id("inbox_id", value)
    assert str(info.value) == message


def _connection(**extra: object) -> Connection:
    return Connection(
        conn_id="neoleads_numbers",
        conn_type="neoleads",
        host="https://app.example.com",
        password="token",
        extra=json.dumps(extra),
    )


def test_connection_fields_are_read_the_same_way() -> None:
    settings = NeoleadsConnectionSettings.from_connection(
        _connection(account_id="3", max_retries=0, webhook_tolerance_seconds=60.0, inbox_id=" 9 ")
    )
    assert (settings.account_id, settings.max_retries, settings.webhook_tolerance_seconds) == (3, 0, 60)
    assert settings.inbox_id == 9


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"account_id": "abc"},
            "Connection 'neoleads_numbers': field 'account_id' must be a whole number, got 'abc'",
        ),
        ({"account_id": 0}, "Connection 'neoleads_numbers': field 'account_id' must be >= 1, got 0"),
        (
            {"account_id": 1, "max_retries": -1},
            "Connection 'neoleads_numbers': field 'max_retries' must be >= 0, got -1",
        ),
        (
            {"account_id": 1, "inbox_id": 2.5},
            "Connection 'neoleads_numbers': field 'inbox_id' must be a whole number, got 2.5",
        ),
    ],
)
def test_a_bad_connection_field_is_named_with_its_connection(extra: dict[str, object], message: str) -> None:
    with pytest.raises(NeoleadsConfigError) as info:
        NeoleadsConnectionSettings.from_connection(_connection(**extra))
    assert str(info.value) == message
