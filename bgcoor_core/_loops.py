"""The event loop a worker process runs on: uvloop when installed (the ``uvloop`` extra)
and not declined by ``BGCOOR_EVENT_LOOP=asyncio``, else asyncio's own."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._errors import ConfigurationError

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (``auto``, ``asyncio``,
    ``uvloop``; see ``Settings.event_loop``)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                main.close()
                raise ConfigurationError(
                    "BGCOOR_EVENT_LOOP=uvloop, but uvloop is not installed: "
                    "pip install 'bgcoor[uvloop]'"
                ) from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)
