"""Fixtures of the notification tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.notifications.receiver import SECRET, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 that verifies signatures with ``SECRET``."""
    server = Receiver()
    server.secret = SECRET
    yield server
    server.close()
