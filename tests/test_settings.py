"""Settings from BGCOOR_* variables and keyword overrides; every problem names its variable."""

from __future__ import annotations

import pytest

from bgcoor_core import (
    ConfigurationError,
    Settings,
    SettingsError,
    TaskManager,
    load_settings,
)


def test_defaults() -> None:
    settings = load_settings()
    # the embedded default: one SQLite file shared by every process in this directory
    assert settings.broker_url == "sqlite:///bgcoor.db"
    assert settings.storage_url == "sqlite:///bgcoor.db"
    assert settings.concurrency == 10
    assert settings.queues == ["default"]
    assert settings.lease_seconds == 30.0
    assert settings.heartbeat_seconds is None
    assert settings.heartbeat_interval == pytest.approx(10.0)
    assert settings.max_retries == 3
    assert settings.timeout is None
    assert settings.max_payload_bytes == 1024 * 1024
    assert settings.serializer == "application/json"
    assert settings.accept_content is None  # every installed format but pickle
    assert settings.disable_plugins == []
    assert Settings() == settings


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_BROKER_URL", "memory://broker")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "memory://storage")
    monkeypatch.setenv("BGCOOR_CONCURRENCY", "7")
    monkeypatch.setenv("BGCOOR_QUEUES", "a,b")
    monkeypatch.setenv("BGCOOR_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("BGCOOR_MAX_RETRIES", "5")
    monkeypatch.setenv("BGCOOR_TIMEOUT", "9")
    monkeypatch.setenv("BGCOOR_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("BGCOOR_DISABLE_PLUGINS", "foo")
    settings = load_settings()
    assert settings.broker_url == "memory://broker"
    assert settings.storage_url == "memory://storage"
    assert settings.concurrency == 7
    assert settings.queues == ["a", "b"]
    assert settings.lease_seconds == 2.5
    assert settings.max_retries == 5
    assert settings.timeout == 9.0
    assert settings.heartbeat_interval == 0.5
    assert settings.disable_plugins == ["foo"]


def test_comma_lists_ignore_blanks_and_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_QUEUES", " high , default,,low ")
    assert load_settings().queues == ["high", "default", "low"]


def test_heartbeat_defaults_to_a_third_of_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_LEASE_SECONDS", "0.3")
    assert load_settings().heartbeat_interval == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("BGCOOR_CONCURRENCY", "abc", "valid integer"),
        ("BGCOOR_CONCURRENCY", "0", "0 is out of range: use 1 to 10000"),
        ("BGCOOR_LEASE_SECONDS", "-1", "-1 is out of range: use 0.1 to 86400 seconds (1 day)"),
        ("BGCOOR_LEASE_SECONDS", "soon", "valid number"),
        ("BGCOOR_QUEUES", "bad queue", "invalid queue name 'bad queue'"),
        ("BGCOOR_QUEUES", ",", "at least 1 item"),
        ("BGCOOR_MAX_RETRIES", "-3", "-3 is out of range: use 0 to 10000"),
        ("BGCOOR_TIMEOUT", "0", "0 is out of range: use 0.001 to 31536000 seconds (1 year)"),
        ("BGCOOR_MAX_PAYLOAD_BYTES", "10", "10 is out of range: use 1024 to 268435456 bytes"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert f"{variable}:" in message
    assert problem in message


def test_several_problems_are_all_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_CONCURRENCY", "x")
    monkeypatch.setenv("BGCOOR_LEASE_SECONDS", "-1")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "BGCOOR_CONCURRENCY" in str(info.value)
    assert "BGCOOR_LEASE_SECONDS" in str(info.value)


def test_heartbeat_not_shorter_than_lease_names_the_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BGCOOR_LEASE_SECONDS", "10")
    monkeypatch.setenv("BGCOOR_HEARTBEAT_SECONDS", "10")
    with pytest.raises(SettingsError, match="BGCOOR_HEARTBEAT_SECONDS") as info:
        load_settings()
    assert "shorter than" in str(info.value)
    assert "BGCOOR_LEASE_SECONDS" in str(info.value)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("BGCOOR_CONCURENCY", "BGCOOR_CONCURRENCY"),
        ("BGCOOR_LEASE_SECOND", "BGCOOR_LEASE_SECONDS"),
        ("BGCOOR_BROKER_ULR", "BGCOOR_BROKER_URL"),
        ("BGCOOR_QUEUE", "BGCOOR_QUEUES"),
    ],
)
def test_unknown_variable_suggests_the_right_name(
    monkeypatch: pytest.MonkeyPatch, typo: str, meant: str
) -> None:
    monkeypatch.setenv(typo, "4")
    with pytest.raises(SettingsError, match=f"unknown setting {typo}; did you mean {meant}\\?"):
        load_settings()


def test_unknown_variable_far_from_any_name_has_no_guess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BGCOOR_ZZZZZZZZZZZZZZZZZZZZ", "1")
    with pytest.raises(SettingsError, match="unknown setting BGCOOR_ZZZZZZZZZZZZZZZZZZZZ") as info:
        load_settings()
    assert "did you mean" not in str(info.value)


def test_keyword_overrides() -> None:
    settings = load_settings(concurrency=3, queues="x,y", lease_seconds=0.5, max_retries=0)
    assert settings.concurrency == 3
    assert settings.queues == ["x", "y"]
    assert settings.lease_seconds == 0.5
    assert settings.max_retries == 0
    assert load_settings(queues=["p", "q"]).queues == ["p", "q"]


def test_keyword_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_CONCURRENCY", "7")
    monkeypatch.setenv("BGCOOR_QUEUES", "from_env")
    settings = load_settings(concurrency=2)
    assert settings.concurrency == 2
    assert settings.queues == ["from_env"]


def test_invalid_keyword_override_names_the_keyword() -> None:
    with pytest.raises(SettingsError, match="concurrency=: 0 is out of range: use 1 to 10000"):
        load_settings(concurrency=0)


def test_unknown_keyword_override_is_an_error() -> None:
    with pytest.raises(SettingsError, match="concurency=: unknown setting"):
        load_settings(concurency=2)


def test_settings_errors_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        load_settings(lease_seconds=0)


def test_task_manager_reads_settings_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_QUEUES", "one,two")
    monkeypatch.setenv("BGCOOR_CONCURRENCY", "4")
    manager = TaskManager(concurrency=6)
    assert manager.settings.queues == ["one", "two"]
    assert manager.settings.concurrency == 6
    monkeypatch.setenv("BGCOOR_CONCURRENCY", "many")
    with pytest.raises(SettingsError, match="BGCOOR_CONCURRENCY"):
        TaskManager()


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.concurrency = 3


def test_variables_under_an_installed_plugins_prefix_are_left_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``BGCOOR_<PLUGIN>_*`` belongs to the plugin named so in the ``bgcoor`` entry points
    (its own settings model checks it); anything else unknown is still refused."""
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="bgcoor") if ep.dist and ep.dist.name != "bgcoor"}
    if "redis" not in names:
        pytest.skip("the bgcoor-redis plugin is not installed")
    monkeypatch.setenv("BGCOOR_REDIS_POOL_SIZE", "3")
    load_settings()
    monkeypatch.setenv("BGCOOR_MEMORY_SIZE", "3")  # a built-in's name: the core's own
    with pytest.raises(SettingsError, match="unknown setting BGCOOR_MEMORY_SIZE"):
        load_settings()
