"""Fixtures for the CBOR plugin's tests: a serializer and a codec of it.

Server tests (Redis, PostgreSQL) use the URL factories of the installed backend plugins;
they skip when a server is down, and fail instead under ``CI=true``.
"""

from __future__ import annotations

import os

import pytest
from bgcoor_cbor import CONTENT_TYPE, CborSerializer

from bgcoor_core import Codec


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own BGCOOR_* variables must not leak into the tests."""
    for key in list(os.environ):
        if key.upper().startswith("BGCOOR_"):
            monkeypatch.delenv(key)


@pytest.fixture
def cbor() -> CborSerializer:
    return CborSerializer()


@pytest.fixture
def codec(cbor: CborSerializer) -> Codec:
    """Writes CBOR, reads CBOR only."""
    return Codec({CONTENT_TYPE: cbor}, content_type=CONTENT_TYPE)
