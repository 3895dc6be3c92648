"""Fixtures of the sandbox tests: a webhook receiver, and an API client on the session's sandbox."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.testing._client import Api, Receiver

if TYPE_CHECKING:
    from collections.abc import Iterator

    from neoleads_provider.testing import NeoleadsSandbox


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def api(neoleads_sandbox: NeoleadsSandbox) -> Api:
    return Api(neoleads_sandbox)
