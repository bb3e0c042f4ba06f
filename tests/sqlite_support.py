"""Helpers shared by the SQLite tests that race real processes on one database file
(``tests/test_sqlite_limits.py``, ``tests/test_sqlite_queue_limits.py``)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path


async def race_processes(
    script: str, path: str, folder: Path, extras: Sequence[Sequence[str]], timeout: float = 60
) -> list[str]:
    """Run the Python ``script`` once per entry of ``extras``, each as
    ``python <script> <path> <go> *extra``, and let them go at the same moment: each prints
    ``ready`` once set up, then waits for the file ``go`` (in ``folder``) to appear, which
    is created once all are ready. Returns what each printed after ``ready``, once all
    exited with status 0 within ``timeout`` seconds (any left are killed)."""
    source, go = folder / "racer.py", folder / "go"
    source.write_text(script)
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(source),
            path,
            str(go),
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for extra in extras
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert (await racer.stdout.readline()).strip() == b"ready"
        go.write_text("")
        results = await asyncio.wait_for(
            asyncio.gather(*(racer.communicate() for racer in racers)), timeout
        )
    finally:
        for racer in racers:
            if racer.returncode is None:
                racer.kill()
                await racer.wait()
    assert [racer.returncode for racer in racers] == [0] * len(racers), [e for _, e in results]
    return [out.decode() for out, _ in results]
