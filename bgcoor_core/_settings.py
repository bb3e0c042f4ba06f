"""Settings, read from ``BGCOOR_*`` environment variables (and keyword overrides)."""

from __future__ import annotations

import difflib
import json
import os
import typing
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from . import _limits as limits
from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_RESULT_BYTES, JSON
from ._errors import SettingsError
from ._payload_codecs import KEY_ID, EncryptionKeys
from ._task import validate_queue_name

ENV_PREFIX = "BGCOOR_"
CommaList = Annotated[list[str], NoDecode]
#: Tasks a child process for ``isolation="process"`` runs before it is replaced.
TASKS_PER_CHILD = limits.Range(1, 1_000_000)
#: Between SIGTERM and SIGKILL to a child process: short, as a timeout waits for it.
KILL_GRACE = limits.Range(0.0, 60.0, "seconds")
#: Values smaller than this (serialised) are not compressed.
COMPRESSION_THRESHOLD = limits.Range(0, limits.MAX_PAYLOAD_BYTES, "bytes")
#: zstd's levels: 1 is fastest, 22 smallest.
ZSTD_LEVEL = limits.Range(1, 22)


def _bounded(default: Any, bounds: limits.Range) -> Any:
    """A field limited to ``bounds`` (finite: ``inf`` and ``nan`` are refused)."""
    return Field(
        default=default,
        ge=bounds.low,
        le=bounds.high,
        allow_inf_nan=False,
        description=bounds.describe(),  # what an out-of-range error says to use
    )


class Settings(BaseSettings):
    """Everything the core reads from the environment. Unknown ``BGCOOR_*`` names are errors.

    Backend-specific options belong in the backend URL's query string, validated by the
    plugin that owns the scheme.
    """

    # Inputs stay out of a ValidationError's text: a URL's password, an encryption key.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        env_parse_none_str="none",
        hide_input_in_errors=True,
    )

    broker_url: str = "sqlite:///bgcoor.db"
    storage_url: str = "sqlite:///bgcoor.db"
    concurrency: int = _bounded(10, limits.CONCURRENCY)
    queues: CommaList = Field(default_factory=lambda: ["default"], min_length=1)
    lease_seconds: float = _bounded(30.0, limits.LEASE)
    heartbeat_seconds: float | None = _bounded(None, limits.HEARTBEAT)
    prefetch: int = _bounded(0, limits.PREFETCH)
    poll_seconds: float = _bounded(1.0, limits.POLL)
    max_retries: int = _bounded(3, limits.RETRIES)
    timeout: float | None = _bounded(None, limits.TIMEOUT)
    retry_backoff: float = _bounded(1.0, limits.BACKOFF)
    retry_backoff_max: float = _bounded(300.0, limits.BACKOFF)
    result_ttl: float | None = _bounded(7 * 24 * 3600.0, limits.TTL)
    cleanup_seconds: float | None = _bounded(300.0, limits.CLEANUP)
    max_payload_bytes: int = _bounded(DEFAULT_MAX_PAYLOAD_BYTES, limits.PAYLOAD_BYTES)
    #: Largest result a task may return, JSON-encoded; a larger one fails the task.
    max_result_bytes: int = _bounded(DEFAULT_MAX_RESULT_BYTES, limits.PAYLOAD_BYTES)
    #: Claim check: a task whose message would pass ``max_payload_bytes`` is sent with a
    #: reference instead, its payload read from its record by the worker; tasks up to
    #: ``claim_check_max_bytes`` encoded are accepted (see docs/serialization.md).
    claim_check: bool = False
    claim_check_max_bytes: int = _bounded(64 * 1024 * 1024, limits.PAYLOAD_BYTES)
    max_worker_lost: int = _bounded(3, limits.WORKER_LOST)
    #: How often an enqueue whose outcome is unknown (the connection failed mid-call) is
    #: tried again with the same task ids; a duplicate found then means the first try
    #: went through.
    enqueue_retries: int = _bounded(3, limits.ENQUEUE_RETRIES)
    shutdown_grace: float = _bounded(30.0, limits.GRACE)
    #: Child processes running ``isolation="process"`` tasks at once (default: the
    #: pool's concurrency, at most the number of CPUs).
    process_pool_size: int | None = _bounded(None, limits.CONCURRENCY)
    #: Tasks a child runs before it is replaced (default: no limit).
    max_tasks_per_child: int | None = _bounded(None, TASKS_PER_CHILD)
    #: Seconds a child has after SIGTERM (a timeout, a cancel) before SIGKILL.
    process_kill_grace: float = _bounded(1.0, KILL_GRACE)
    #: Run the scheduler (periodic tasks) in every worker; ``bgcoor worker --no-scheduler``.
    scheduler: bool = True
    #: The longest a scheduler waits between passes: how soon a schedule added, changed or
    #: removed by another process is seen (pause, resume and remove are honoured at once).
    scheduler_refresh_seconds: float = _bounded(5.0, limits.POLL)
    #: Waiting tasks (ready, scheduled, or held back by a rate or concurrency limit) a queue
    #: may hold, by queue name (``BGCOOR_QUEUE_LIMITS='{"emails": 100000}'``). An enqueue
    #: that would pass it stores nothing and, by ``queue_full``, raises
    #: :class:`~bgcoor_core.QueueFullError` or waits for room.
    queue_limits: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    queue_full: Literal["reject", "wait"] = "reject"
    #: The event loop ``bgcoor worker`` runs on: ``uvloop`` (``pip install
    #: 'bgcoor[uvloop]'``), ``asyncio``, or ``auto``: uvloop when it is installed.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    #: How long an enqueue waits for room under ``queue_full="wait"``.
    queue_full_timeout: float = _bounded(30.0, limits.TIMEOUT)
    #: The format of new messages: a content type or a serializer's short name
    #: (``json``, ``msgpack``, ``cbor``, ``pickle``).
    serializer: str = JSON
    #: The content types (or short names) workers decode; unset: every installed format
    #: but pickle. A message of another type is dead-lettered unread.
    accept_content: CommaList | None = None
    #: Payload codecs new payloads and results pass through, in order (``zstd,aesgcm``:
    #: compressed, then encrypted); see :mod:`bgcoor_core._payload_codecs`.
    payload_codecs: CommaList = Field(default_factory=list)
    #: Serialised values smaller than this are not compressed.
    compression_threshold: int = _bounded(1024, COMPRESSION_THRESHOLD)
    zstd_level: int = _bounded(3, ZSTD_LEVEL)
    #: Keys of ``aesgcm`` by id, oldest first (``k1:<base64>,k2:<base64>`` or a JSON
    #: object); shown nowhere: ``repr`` and JSON dumps name the ids only.
    encryption_keys: Annotated[EncryptionKeys | None, NoDecode] = None
    #: The key new values are encrypted with (default: the last listed).
    encryption_key_id: str | None = None
    disable_plugins: CommaList = Field(default_factory=list)

    @field_validator("queues", "accept_content", "payload_codecs", "disable_plugins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("queues")
    @classmethod
    def _check_queues(cls, value: list[str]) -> list[str]:
        for name in value:
            validate_queue_name(name)
        return value

    @field_validator("queue_limits", mode="before")
    @classmethod
    def _parse_queue_limits(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError(
                    f"{ENV_PREFIX}QUEUE_LIMITS must be a JSON object of queue names to limits, "
                    """like '{"emails": 100000}'"""
                ) from None
        return value

    @field_validator("queue_limits")
    @classmethod
    def _check_queue_limits(cls, value: dict[str, int]) -> dict[str, int]:
        for name, limit in value.items():
            validate_queue_name(name)
            limits.QUEUE_LIMIT.check(f"queue limit of {name!r}", limit)
        return value

    @field_validator("payload_codecs")
    @classmethod
    def _check_payload_codecs(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a payload codec is listed twice")
        return value

    @model_validator(mode="after")
    def _check_encryption(self) -> Settings:
        keys, key_id = self.encryption_keys, self.encryption_key_id
        if "aesgcm" in self.payload_codecs and keys is None:
            raise ValueError(
                f"{ENV_PREFIX}PAYLOAD_CODECS names aesgcm, but {ENV_PREFIX}ENCRYPTION_KEYS is "
                "not set (id:<base64 of 32 bytes>, comma-separated)"
            )
        if key_id is not None and (keys is None or key_id not in keys.ids):
            held = ", ".join(keys.ids) if keys is not None else "none"
            shown = repr(key_id) if KEY_ID.fullmatch(key_id) else "given"
            raise ValueError(
                f"{ENV_PREFIX}ENCRYPTION_KEY_ID: key {shown} is not in "
                f"{ENV_PREFIX}ENCRYPTION_KEYS (ids: {held})"
            )
        return self

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        if self.heartbeat_seconds is not None and self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"{ENV_PREFIX}HEARTBEAT_SECONDS (heartbeat_seconds) must be shorter than "
                f"{ENV_PREFIX}LEASE_SECONDS (lease_seconds)"
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A URL may carry a password: a printed or logged Settings shows it redacted.
        from ._backend_registry import redact

        for name, value in super().__repr_args__():
            yield name, redact(value) if name in ("broker_url", "storage_url") else value

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings`; every problem is a :class:`SettingsError` naming its variable."""
    _check_unknown_env()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, overrides)) from None


#: ``BGCOOR_*`` variables plugins declared (the ``bgcoor worker`` options they add): their
#: settings, not unknown settings of the core.
PLUGIN_VARIABLES: set[str] = set()


def _check_unknown_env() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | PLUGIN_VARIABLES
    owned = _plugin_prefixes()
    for key in os.environ:
        upper = key.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known and not upper.startswith(owned):
            close = difflib.get_close_matches(upper, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SettingsError(f"unknown setting {key}{hint}")


def _plugin_prefixes() -> tuple[str, ...]:
    """``BGCOOR_<NAME>_`` for each installed third-party plugin (its entry point's name in
    the ``bgcoor`` group): variables under it are that plugin's settings, which its own
    settings model checks. Read from the metadata alone; nothing is imported."""
    names = {
        ep.name
        for ep in entry_points(group="bgcoor")
        if ep.dist is None or ep.dist.name != "bgcoor"
    }
    return tuple(f"{ENV_PREFIX}{name.upper().replace('-', '_')}_" for name in sorted(names))


def _describe(exc: ValidationError, overrides: dict[str, Any]) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        where = f"{field}=" if field in overrides else f"{ENV_PREFIX}{field.upper()}"
        if not field:
            where = "settings"
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif error["type"] in _RANGE_ERRORS:
            msg = _out_of_range(field, error["input"]) or msg
        problems.append(f"{where}: {msg}")
    return "invalid settings: " + "; ".join(problems)


_RANGE_ERRORS = frozenset({"greater_than_equal", "less_than_equal", "finite_number"})


def _out_of_range(field: str, value: Any) -> str | None:
    """``1e-9 is out of range: use 0.1 to 86400 seconds (1 day)`` for a bounded setting."""
    info = Settings.model_fields.get(field)
    if info is None or info.description is None:
        return None
    shown = value if isinstance(value, str) else repr(value)
    optional = ", or none" if type(None) in typing.get_args(info.annotation) else ""
    return f"{shown} is out of range: use {info.description}{optional}"
