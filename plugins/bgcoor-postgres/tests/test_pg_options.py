"""URL options: validated strictly, stripped before the DSN reaches the driver."""

from __future__ import annotations

import pytest
from bgcoor_postgres import PostgresBackend, parse_postgres_url
from bgcoor_postgres._sql import _allowed_pairs

from bgcoor_core import ALLOWED_TRANSITIONS, ConfigurationError, build_plugin_host


def test_options_are_stripped_from_the_dsn() -> None:
    target = parse_postgres_url(
        "postgres://u:secret@db.local:6543/jobs?schema=work&pool_size=3&sslmode=require"
        "&poll_interval=0.25&auto_migrate=false"
    )
    assert target.dsn == "postgresql://u:secret@db.local:6543/jobs?sslmode=require"
    assert target.schema == "work"
    assert target.options.pool_size == 3
    assert target.options.poll_interval == 0.25
    assert target.options.auto_migrate is False
    assert target.safe_dsn == "postgresql://u:***@db.local:6543/jobs?sslmode=require"


def test_defaults() -> None:
    options = parse_postgres_url("postgresql://localhost/db").options
    assert (options.schema_name, options.auto_migrate, options.temporary) == (
        "bgcoor",
        True,
        False,
    )


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("colour=blue", "colour: unknown option"),
        ("schema=Bad-Name", "schema"),
        ("schema=pg_catalog", "reserved"),
        ("schema=" + "x" * 60, "schema"),
        ("pool_size=0", "pool_size"),
        ("pool_min_size=5&pool_size=2", "pool_min_size"),
        ("poll_interval=-1", "poll_interval"),
        ("auto_migrate=perhaps", "auto_migrate"),
        ("schema=a&schema=b", "given twice"),
    ],
)
def test_bad_options_are_named(query: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        parse_postgres_url(f"postgresql://user:hunter2@localhost/db?{query}")
    assert "hunter2" not in str(caught.value)


def test_other_schemes_refused() -> None:
    with pytest.raises(ConfigurationError, match="invalid PostgreSQL URL"):
        parse_postgres_url("mysql://localhost/db")


def test_both_schemes_registered_for_broker_and_storage() -> None:
    host = build_plugin_host()
    for registry in (host.brokers, host.storages):
        for scheme in ("postgresql", "postgres"):
            assert registry.entries[scheme].plugin == "postgres"
        # only one of the aliases runs the conformance suite
        assert registry.entries["postgresql"].test_url is not None
        assert registry.entries["postgres"].test_url is None


def test_sql_transitions_are_generated_from_the_python_table() -> None:
    expected = {(o.value, n.value) for o, news in ALLOWED_TRANSITIONS.items() for n in news}
    literal = _allowed_pairs()
    pairs = {tuple(p.strip("()").replace("'", "").split(", ")) for p in literal.split("), (")}
    assert pairs == expected


def test_repr_hides_the_password() -> None:
    backend = PostgresBackend(
        parse_postgres_url("postgresql://u:hunter2@localhost/db"),
        codec=None,  # type: ignore[arg-type]
    )
    assert "hunter2" not in repr(backend)
