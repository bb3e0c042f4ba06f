"""The protocol code of the pipelined connection: packing commands and parsing replies."""

from __future__ import annotations

import pytest
from bgcoor_redis._resp import INCOMPLETE, Replies, pack
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError

from bgcoor_core import TaskStatus

REPLIES = (
    b"+OK\r\n"
    b":-42\r\n"
    b"$5\r\nhello\r\n"
    b"$0\r\n\r\n"
    b"$-1\r\n"
    b"*-1\r\n"
    b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n*0\r\n"
    b"$7\r\nx\r\ny\r\nz\r\n"  # a bulk string holding the separator itself
    b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
    b"-ERR unknown command\r\n"
)
EXPECTED = [b"OK", -42, b"hello", b"", None, None, [1, [b"a", None], []], b"x\r\ny\r\nz"]


def test_pack_matches_redis_py() -> None:
    command = ("EVALSHA", "abc", 0, -7, 2.5, b"\x00\xff\r\n", "ü", TaskStatus.RUNNING)
    expected = b"".join(Connection().pack_command(*command[:-1], "running"))
    assert pack(command) == expected


@pytest.mark.parametrize("bad", [None, True, [1], {"a": 1}])
def test_pack_refuses_what_redis_cannot_take(bad: object) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        pack(("SET", "k", bad))


def _drain(replies: Replies) -> list[object]:
    out = []
    while (reply := replies.next()) is not INCOMPLETE:
        out.append(reply)
    return out


@pytest.mark.parametrize("chunk", [len(REPLIES), 7, 1], ids=["whole", "chunks", "bytes"])
def test_replies_parse_across_any_chunking(chunk: int) -> None:
    replies = Replies()
    parsed: list[object] = []
    for start in range(0, len(REPLIES), chunk):
        replies.feed(REPLIES[start : start + chunk])
        parsed += _drain(replies)
    assert parsed[: len(EXPECTED)] == EXPECTED
    noscript, other = parsed[len(EXPECTED) :]
    assert isinstance(noscript, NoScriptError)
    assert isinstance(other, ResponseError)
    assert not isinstance(other, NoScriptError)
    assert str(other) == "ERR unknown command"


def test_an_incomplete_reply_is_not_consumed() -> None:
    replies = Replies()
    replies.feed(b"*2\r\n:1\r\n")
    assert replies.next() is INCOMPLETE
    assert replies.next() is INCOMPLETE
    replies.feed(b":2\r\n")
    assert replies.next() == [1, 2]
