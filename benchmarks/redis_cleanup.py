"""Removing what a benchmark left on the shared Redis: every key under its prefix."""

from __future__ import annotations

from typing import Any

_DELETE_PREFIX = """
local cursor, n = "0", 0
repeat
  local page = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do redis.call("DEL", key); n = n + 1 end
until cursor == "0"
return n
"""


async def drop_prefix(broker: Any) -> int:
    """Delete every key of a Redis backend's prefix (``broker.prefix``); how many."""
    return int(await broker.command("EVAL", _DELETE_PREFIX, 0, f"{broker.prefix}:*"))
