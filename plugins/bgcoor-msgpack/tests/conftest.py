"""Fixtures for the msgpack plugin's tests: fast manager settings and a clean environment.

Server tests (Redis, PostgreSQL) take their URLs from the backend plugins' own test
helpers, which skip when the server is down and fail instead under ``CI=true``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

#: Settings that keep worker tests fast (as the core and backend plugin suites use).
FAST: dict[str, Any] = {
    "lease_seconds": 5.0,
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.05,
    "poll_seconds": 0.2,
    "shutdown_grace": 2.0,
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own BGCOOR_* variables must not leak into the tests."""
    for key in list(os.environ):
        if key.upper().startswith("BGCOOR_"):
            monkeypatch.delenv(key)


@pytest.fixture
def fast() -> dict[str, Any]:
    return dict(FAST)
