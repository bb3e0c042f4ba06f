"""Secrets are never shown and never silently lost: URLs are redacted wherever shown or
logged, a pydantic secret argument is refused at enqueue, and validation errors name the
argument and what is wrong, never its value."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, Secret, SecretBytes, SecretStr

from bgcoor_core import (
    ConfigurationError,
    PayloadError,
    Task,
    TaskManager,
    TaskStatus,
    UnknownSchemeError,
    load_settings,
)
from bgcoor_core._backend_registry import redact
from bgcoor_core._plugins import build_plugin_host

SECRET = "PIN-SECRET-99"

# -- redact ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://app:p%40ss@db/jobs", "postgresql://app:***@db/jobs"),
        ("postgresql://app:@db/jobs", "postgresql://app:***@db/jobs"),
        ("redis://h/0?password=hunter2", "redis://h/0?password=***"),
        ("redis://h/0?prefix=shop&password=hunter2", "redis://h/0?prefix=shop&password=***"),
        (
            "postgresql://root@h/test?sslpassword=hunter2&schema=s",
            "postgresql://root@h/test?sslpassword=***&schema=s",
        ),
        ("x://h/?PassWord=a&TOKEN=b&api_key=c", "x://h/?PassWord=***&TOKEN=***&api_key=***"),
        (
            "x://h/?aws_secret_access_key=a&auth_token=b",
            "x://h/?aws_secret_access_key=***&auth_token=***",
        ),
        ("x://h/?pass%77ord=a", "x://h/?pass%77ord=***"),  # an encoded key name is a key name
        (
            "x://u:p@h/?passwd=a&pwd=b&access_key=c",
            "x://u:***@h/?passwd=***&pwd=***&access_key=***",
        ),
    ],
)
def test_redact_hides_userinfo_passwords_and_secret_query_keys(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "hunter2" not in redact(url)


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "sqlite:///bgcoor.db",
        "sqlite:////abs/path.db?busy_timeout=5",
        "redis://user@h:6379/0?prefix=shop",
        "redis://h/0?password",  # a key without a value hides nothing
    ],
)
def test_redact_leaves_urls_without_secrets_alone(url: str) -> None:
    assert redact(url) == url


def test_redact_never_raises_and_changes_nothing_else() -> None:
    assert redact("redis://[::1/0?password=hunter2") == "redis://[::1/0?password=***"
    assert redact("memory://?password=hunter2&x=1") == "memory://?password=***&x=1"
    assert redact("redis://u:pa/ss@h/0") == "redis://u:***@h/0"  # "/" in a password
    assert redact("x://h/p#frag?token=t") == "x://h/p#frag?token=t"  # a fragment, no query
    assert redact("sqlite:////data/a@b.db?password=p") == "sqlite:////data/a@b.db?password=***"
    assert redact("not a url at all") == "not a url at all"


def test_unknown_scheme_error_redacts_the_url() -> None:
    host = build_plugin_host()
    with pytest.raises(UnknownSchemeError) as info:
        host.brokers.lookup("bogus://u:hunter2@h/0?token=hunter3")
    assert "'bogus://u:***@h/0?token=***'" in str(info.value)
    assert "hunter" not in str(info.value)


def test_settings_repr_redacts_the_urls() -> None:
    settings = load_settings(
        broker_url="redis://:hunter2@h/0?password=hunter3",
        storage_url="postgresql://u:hunter4@h/db?sslpassword=hunter5",
    )
    for text in (repr(settings), str(settings)):
        assert "hunter" not in text
        assert "redis://:***@h/0?password=***" in text


def test_the_backends_log_line_redacts_the_urls(caplog: pytest.LogCaptureFixture) -> None:
    host = build_plugin_host()
    settings = load_settings(
        broker_url="memory://u:hunter2@x/?password=hunter3", storage_url="memory://?token=hunter4"
    )
    with caplog.at_level(logging.DEBUG, logger="bgcoor"):
        host.make_backends(settings)
    assert "memory://u:***@x/?password=***" in caplog.text
    assert "hunter" not in caplog.text


def test_sqlite_url_errors_redact_the_url(tmp_path: Any) -> None:
    from bgcoor_core.backends.sqlite import parse_sqlite_url

    with pytest.raises(ConfigurationError) as info:
        parse_sqlite_url(f"sqlite:///{tmp_path}/x.db?password=hunter2")
    assert "password=***" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_redis_url_errors_redact_the_url() -> None:
    options = pytest.importorskip("bgcoor_redis._options")
    with pytest.raises(ConfigurationError) as info:
        options.parse_redis_url("redis://:hunter2@h/0?password=hunter3&no_such_option=1")
    assert "hunter" not in str(info.value)
    target = options.parse_redis_url("redis://:hunter2@h/0")
    assert "hunter2" not in target.safe_url


def test_postgres_url_errors_redact_the_url() -> None:
    options = pytest.importorskip("bgcoor_postgres._options")
    with pytest.raises(ConfigurationError) as info:
        options.parse_postgres_url("postgresql://u:hunter2@h/db?sslpassword=hunter3&nope=1")
    assert "hunter" not in str(info.value)


# -- pydantic secrets ----------------------------------------------------------------------


class Credentials(BaseModel):
    user: str
    password: SecretStr


class Order(BaseModel):
    items: list[int]


@dataclass
class Wrapped:
    token: SecretBytes


@pytest.fixture
async def manager() -> AsyncIterator[TaskManager]:
    manager = TaskManager(broker_url="memory://", storage_url="memory://")
    yield manager
    await manager.close()


async def assert_nothing_enqueued(manager: TaskManager) -> None:
    assert (await manager.broker.stats("default")).ready == 0
    assert await manager.storage.counts() == {status: 0 for status in TaskStatus}


async def test_a_secret_str_argument_is_refused_at_enqueue_naming_it(
    manager: TaskManager,
) -> None:
    @manager.task(name="login")
    def login(user: str, pin: SecretStr) -> None: ...

    with pytest.raises(PayloadError) as info:
        await login.enqueue("ann", SecretStr(SECRET))
    message = str(info.value)
    assert "task 'login': argument 'pin' is a pydantic SecretStr" in message
    assert "'**********'" in message  # says what the task would have received
    assert SECRET not in message
    await assert_nothing_enqueued(manager)


@pytest.mark.parametrize(
    ("annotation", "value", "where"),
    [
        (
            Credentials,
            Credentials(user="u", password=SecretStr(SECRET)),
            "argument 'arg' at password",
        ),
        (list[str | SecretStr], ["a", SecretStr(SECRET)], "argument 'arg' at [1]"),
        (dict[str, Any], {"k": {"deep": SecretStr(SECRET)}}, "argument 'arg' at [0][0]"),
        (dict, {"k": SecretStr(SECRET)}, "argument 'arg' at [0]"),
        (Wrapped, Wrapped(token=SecretBytes(SECRET.encode())), "argument 'arg' at token"),
        (SecretBytes, SecretBytes(SECRET.encode()), "argument 'arg' is a pydantic SecretBytes"),
        (Secret[int], Secret[int](1234), "argument 'arg' is a pydantic Secret"),
        (SecretStr | None, SecretStr(SECRET), "argument 'arg' is a pydantic SecretStr"),
    ],
)
async def test_a_secret_anywhere_in_an_argument_is_refused(
    manager: TaskManager, annotation: Any, value: Any, where: str
) -> None:
    def task(arg: Any) -> None: ...

    task.__annotations__["arg"] = annotation
    function = manager.task(name="holder")(task)
    with pytest.raises(PayloadError, match="pydantic Secret") as info:
        await function.enqueue(value)
    assert where in str(info.value)
    assert SECRET not in str(info.value)
    await assert_nothing_enqueued(manager)


async def test_a_secret_in_an_unannotated_argument_or_raw_payload_is_refused(
    manager: TaskManager,
) -> None:
    @manager.task(name="loose")
    def loose(first, second=None):  # type: ignore[no-untyped-def]
        ...

    with pytest.raises(PayloadError, match="positional argument 0 is a pydantic SecretStr"):
        await loose.enqueue(SecretStr(SECRET))
    with pytest.raises(PayloadError, match=r"positional argument 1 at \[0\] is a pydantic Secret"):
        await loose.enqueue(1, second=[SecretStr(SECRET)])
    with pytest.raises(PayloadError, match=r"the payload at \[0\] is a pydantic SecretStr"):
        await manager.submit(Task.new("raw", payload={"nested": SecretStr(SECRET)}))
    await assert_nothing_enqueued(manager)


async def test_arguments_without_secrets_still_pass(manager: TaskManager) -> None:
    received: list[Any] = []

    @manager.task(name="fine")
    def fine(
        pin: SecretStr | None = None, note: str = "", extra: dict[str, Any] | None = None
    ) -> None:
        received.append((pin, note, extra))

    await fine.enqueue(None, "**********", {"mask": "**********"})  # the text itself is fine
    await fine.enqueue()
    assert await manager.drain(raise_errors=True) == 2
    assert received == [(None, "**********", {"mask": "**********"}), (None, "", None)]


# -- validation errors name the argument, not its value -----------------------------------


async def test_a_bad_argument_at_enqueue_is_named_without_its_value(
    manager: TaskManager,
) -> None:
    @manager.task(name="charge")
    def charge(pin: Annotated[str, Field(pattern=r"^\d{4}$")], amount: int) -> None: ...

    @manager.task(name="count")
    def count(amount: int) -> None: ...

    with pytest.raises(PayloadError) as info:
        await charge.enqueue(SECRET, 5)
    assert str(info.value).startswith("task 'charge': argument 'pin': String should match")
    assert SECRET not in str(info.value)
    with pytest.raises(PayloadError) as info:
        await count.enqueue(SECRET)  # type: ignore[arg-type]
    assert str(info.value) == (
        "task 'count': argument 'amount': Input should be a valid integer, "
        "unable to parse string as an integer"
    )

    @manager.task(name="order")
    def order(o: Order) -> None: ...

    with pytest.raises(PayloadError) as info:
        await order.enqueue({"items": [1, SECRET]})  # type: ignore[arg-type]
    assert str(info.value).startswith("task 'order': argument 'o' at items.1: Input should be")
    assert SECRET not in str(info.value)


async def test_a_bad_argument_at_the_worker_is_dead_lettered_without_its_value(
    manager: TaskManager, caplog: pytest.LogCaptureFixture
) -> None:
    @manager.task(name="count")
    def count(pin: int) -> None: ...

    # A producer that did not validate (another language, an older version) sent it.
    await manager.submit(Task.new("count", payload={"args": [SECRET], "kwargs": {}}))
    with caplog.at_level(logging.INFO, logger="bgcoor"):
        assert await manager.drain() == 1
    [letter] = await manager.broker.dead_letters("default")
    assert "argument 'pin': Input should be a valid integer" in letter.reason
    record = await manager.storage.get(letter.id)
    assert record is not None
    assert record.status is TaskStatus.DEAD
    for text in (letter.reason, record.error or "", record.traceback or "", caplog.text):
        assert SECRET not in text
    assert "argument 'pin'" in caplog.text
