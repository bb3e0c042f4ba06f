"""The ``postgresql://`` URL: connection part for the driver, query options for us.

``postgresql://user:pw@host:5432/db?schema=jobs&pool_size=20`` connects with
``postgresql://user:pw@host:5432/db`` and validates ``schema`` and ``pool_size`` with
:class:`PostgresOptions` (unknown options are errors). A few libpq connection parameters
(:data:`DRIVER_PARAMS`, e.g. ``sslmode``) are passed through to the driver unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bgcoor_core import ConfigurationError
from bgcoor_core.kit import redact

SCHEMES = ("postgresql", "postgres")

#: Query parameters that belong to the connection, not to bg-coor.
DRIVER_PARAMS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "sslpassword",
        "target_session_attrs",
        "passfile",
        "application_name",
    }
)

#: Lower case, so the name never needs case-sensitive quoting; short enough that the
#: NOTIFY channel ``<schema>_wake`` stays within PostgreSQL's 63-byte identifiers.
SCHEMA_PATTERN = r"^[a-z_][a-z0-9_]{0,49}$"


class PostgresOptions(BaseModel):
    """Options in the URL query string, e.g. ``postgresql://host/db?schema=jobs``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    #: Schema holding the tables (created by the migrations).
    schema_name: str = Field(default="bgcoor", alias="schema", pattern=SCHEMA_PATTERN)
    #: Connections the pool opens at once, and at most.
    pool_min_size: int = Field(default=1, ge=0, le=1000)
    pool_size: int = Field(default=10, ge=1, le=1000)
    #: Apply pending migrations when the backend first connects (else ``bgcoor migrate``).
    auto_migrate: bool = True
    #: Safety-net poll of an idle consumer, in seconds; LISTEN/NOTIFY wakes it earlier.
    poll_interval: float = Field(default=1.0, gt=0, le=3600)
    #: ``result()`` is woken when the task's record is written final (NOTIFY), and reads
    #: the record this often (seconds) anyway, in case a notice was lost.
    result_safety_poll: float = Field(default=1.0, gt=0, le=3600)
    #: How long an operation keeps retrying while the server is unreachable.
    reconnect_timeout: float = Field(default=60.0, ge=0)
    #: Most items one coalesced statement (concurrent saves, completions) carries.
    max_batch: int = Field(default=500, ge=1, le=10_000)
    #: Reserve, lease extension and "running" marks commit without waiting for the WAL
    #: flush (``synchronous_commit = off`` for those transactions only): a server crash
    #: may forget the last fraction of a second of them, and the task is delivered again.
    #: Enqueues and outcomes always wait.
    fast_lease_commits: bool = True
    #: Drop the schema when the backend closes: for tests' throw-away schemas.
    temporary: bool = False

    def model_post_init(self, context: object) -> None:
        if self.schema_name.startswith("pg_"):
            raise ValueError("schema names starting with 'pg_' are reserved by PostgreSQL")
        if self.pool_min_size > self.pool_size:
            raise ValueError("pool_min_size must not exceed pool_size")


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """Where to connect (``dsn``, which may hold a password: never log it unredacted)."""

    dsn: str
    options: PostgresOptions

    @property
    def schema(self) -> str:
        return self.options.schema_name

    @property
    def safe_dsn(self) -> str:
        return redact(self.dsn)


def parse_postgres_url(url: str) -> PostgresTarget:
    """Split ``url`` into the driver's DSN and validated :class:`PostgresOptions`."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigurationError(
            f"invalid PostgreSQL URL {redact(url)!r}: use postgresql://user@host:port/database"
        )
    driver: list[tuple[str, str]] = []
    ours: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in DRIVER_PARAMS:
            driver.append((key, value))
        elif key in ours:
            raise ConfigurationError(f"PostgreSQL URL option {key!r} is given twice")
        else:
            ours[key] = value
    try:
        options = PostgresOptions.model_validate(ours)
    except ValidationError as exc:
        raise ConfigurationError(
            f"invalid PostgreSQL URL options in {redact(url)!r}: {_describe(exc)}"
        ) from None
    dsn = parts._replace(scheme="postgresql", query=urlencode(driver)).geturl()
    return PostgresTarget(dsn, options)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        name = ".".join(map(str, error["loc"])) or "options"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown option"
        problems.append(f"{name}: {message}")
    return "; ".join(problems)
