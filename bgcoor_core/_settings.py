"""Settings, read from ``BGCOOR_*`` environment variables (and keyword overrides)."""

from __future__ import annotations

import difflib
import os
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, JSON
from ._errors import SettingsError
from ._task import validate_queue_name

ENV_PREFIX = "BGCOOR_"
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Everything the core reads from the environment. Unknown ``BGCOOR_*`` names are errors.

    Backend-specific options belong in the backend URL's query string, validated by the
    plugin that owns the scheme.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_parse_none_str="none"
    )

    broker_url: str = "sqlite:///bgcoor.db"
    storage_url: str = "sqlite:///bgcoor.db"
    concurrency: int = Field(default=10, ge=1, le=10_000)
    queues: CommaList = Field(default_factory=lambda: ["default"], min_length=1)
    lease_seconds: float = Field(default=30.0, gt=0)
    heartbeat_seconds: float | None = Field(default=None, gt=0)
    prefetch: int = Field(default=0, ge=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    timeout: float | None = Field(default=None, gt=0)
    retry_backoff: float = Field(default=1.0, ge=0)
    retry_backoff_max: float = Field(default=300.0, ge=0)
    result_ttl: float | None = Field(default=7 * 24 * 3600.0, gt=0)
    cleanup_seconds: float | None = Field(default=300.0, gt=0)
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, ge=1024)
    max_worker_lost: int = Field(default=3, ge=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    serializer: str = JSON
    accept_content: CommaList = Field(default_factory=lambda: [JSON])
    disable_plugins: CommaList = Field(default_factory=list)

    @field_validator("queues", "accept_content", "disable_plugins", mode="before")
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

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        if self.heartbeat_seconds is not None and self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"{ENV_PREFIX}HEARTBEAT_SECONDS (heartbeat_seconds) must be shorter than "
                f"{ENV_PREFIX}LEASE_SECONDS (lease_seconds)"
            )
        return self

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


def _check_unknown_env() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for key in os.environ:
        upper = key.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SettingsError(f"unknown setting {key}{hint}")


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
        problems.append(f"{where}: {msg}")
    return "invalid settings: " + "; ".join(problems)
