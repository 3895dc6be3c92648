"""What every Neoleads operator shares: the connection argument, the hook, id casting."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, overload

from airflow.sdk import BaseOperator

from neoleads_provider.connection import DEFAULT_CONN_ID
from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.hooks.neoleads import NeoleadsHook
from neoleads_provider.whole_numbers import parse_whole_number

if TYPE_CHECKING:
    from airflow.sdk import Context


# Overloads: a required id is never None, so callers need no check of their own.
@overload
def as_id(name: str, value: Any, *, required: Literal[True] = ...) -> int: ...
@overload
def as_id(name: str, value: Any, *, required: bool) -> int | None: ...
def as_id(name: str, value: Any, *, required: bool = True) -> int | None:
    """Cast a rendered id to ``int``: templates render to strings, XCom may give ints.

    :raises NeoleadsConfigError: naming the argument and what it got.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise NeoleadsConfigError(f"{name} is required (a positive integer id)")
        return None
    return parse_whole_number(value, name, minimum=1)


class NeoleadsBaseOperator(BaseOperator):
    """Base for operators that make one call through :class:`NeoleadsHook`.

    Results are small dicts and ``multiple_outputs`` defaults to True, so ``task.output["key"]``
    feeds the next operator directly.

    :param neoleads_conn_id: the ``neoleads`` connection. (templated)
    """

    template_fields: tuple[str, ...] = ("neoleads_conn_id",)
    ui_color = "#1f93ff"

    def __init__(self, *, neoleads_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.neoleads_conn_id = neoleads_conn_id

    @cached_property
    def hook(self) -> NeoleadsHook:
        return NeoleadsHook(neoleads_conn_id=self.neoleads_conn_id)

    def push_link(self, context: Context, key: str, url: str) -> None:
        """Record a web-app URL for the task's extra link, and in XCom under ``key``."""
        from neoleads_provider.links import remember_link

        remember_link(self, key, url)
        context["ti"].xcom_push(key=key, value=url)
