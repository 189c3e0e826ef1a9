"""Settings from the environment: defaults, parsing of each type, clear errors, range checks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gql.config import ConfigError, Settings


def test_empty_environment_gives_the_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.workers == 1
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.redis_timeout == 0.1
    assert settings.redis_retry_seconds == 5.0
    assert settings.data_dir is None
    assert settings.cache_enabled is True
    assert settings.cache_prefix == "gql"
    assert settings.chart_ttl == 3600.0
    assert settings.yield_ttl == 43200.0
    assert settings.local_cache_entries == 256
    assert settings.compute_threads == 2
    assert settings.admin_token is None
    assert settings.graphiql is True
    assert settings.log_level == "info"


def test_unrelated_variables_are_ignored():
    assert Settings.from_env({"PATH": "/usr/bin", "GQL_NO_SUCH_SETTING": "x", "PORT": "1"}) == Settings()


def test_none_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch):
    # conftest removes every GQL_* variable and REDIS_URL first, so only this one is seen.
    monkeypatch.setenv("GQL_PORT", "9123")
    assert Settings.from_env().port == 9123
    assert Settings.from_env(None).port == 9123


# --- each type ------------------------------------------------------------------------------------


def test_strings_are_taken_as_given():
    settings = Settings.from_env(
        {"GQL_HOST": "0.0.0.0", "GQL_CACHE_PREFIX": "prod", "GQL_ADMIN_TOKEN": "s3cret", "GQL_LOG_LEVEL": "debug"}
    )
    assert (settings.host, settings.cache_prefix, settings.admin_token, settings.log_level) == (
        "0.0.0.0", "prod", "s3cret", "debug",
    )


def test_ints_are_parsed():
    settings = Settings.from_env(
        {"GQL_PORT": "8080", "GQL_WORKERS": "4", "GQL_LOCAL_CACHE_ENTRIES": "1000", "GQL_COMPUTE_THREADS": "8"}
    )
    assert (settings.port, settings.workers, settings.local_cache_entries, settings.compute_threads) == (
        8080, 4, 1000, 8,
    )
    assert isinstance(settings.port, int)


def test_floats_are_parsed():
    settings = Settings.from_env(
        {"GQL_REDIS_TIMEOUT": "0.25", "GQL_REDIS_RETRY_SECONDS": "0", "GQL_CHART_TTL": "60",
         "GQL_YIELD_TTL": "1e3"}
    )
    assert settings.redis_timeout == 0.25
    assert settings.redis_retry_seconds == 0.0
    assert settings.chart_ttl == 60.0 and isinstance(settings.chart_ttl, float)
    assert settings.yield_ttl == 1000.0


@pytest.mark.parametrize("raw", ["true", "TRUE", "True", "1", "yes", "Yes", "on"])
def test_bool_true_spellings(raw: str):
    settings = Settings.from_env({"GQL_CACHE_ENABLED": raw, "GQL_GRAPHIQL": raw})
    assert settings.cache_enabled is True and settings.graphiql is True


@pytest.mark.parametrize("raw", ["false", "FALSE", "False", "0", "no", "NO", "off"])
def test_bool_false_spellings(raw: str):
    settings = Settings.from_env({"GQL_CACHE_ENABLED": raw, "GQL_GRAPHIQL": raw})
    assert settings.cache_enabled is False and settings.graphiql is False


def test_data_dir_is_a_path(tmp_path: Path):
    settings = Settings.from_env({"GQL_DATA_DIR": str(tmp_path / "prices")})
    assert settings.data_dir == tmp_path / "prices"
    assert isinstance(settings.data_dir, Path)


def test_data_dir_expands_the_home_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings.from_env({"GQL_DATA_DIR": "~/prices"}).data_dir == tmp_path / "prices"


def test_redis_url_has_its_conventional_name():
    assert Settings.from_env({"REDIS_URL": "redis://cache:6380/2"}).redis_url == "redis://cache:6380/2"
    # The prefixed spelling is not the documented name and is not read.
    assert Settings.from_env({"GQL_REDIS_URL": "redis://elsewhere/1"}).redis_url == Settings().redis_url


def test_surrounding_whitespace_is_ignored():
    settings = Settings.from_env({"GQL_PORT": " 8081 ", "GQL_CACHE_ENABLED": " no\n", "GQL_HOST": " ::1 "})
    assert (settings.port, settings.cache_enabled, settings.host) == (8081, False, "::1")


@pytest.mark.parametrize("raw", ["", "   ", "\t\n"])
def test_empty_value_means_the_default(raw: str):
    names = ["GQL_HOST", "GQL_PORT", "GQL_REDIS_TIMEOUT", "GQL_CACHE_ENABLED", "GQL_DATA_DIR", "REDIS_URL",
             "GQL_ADMIN_TOKEN", "GQL_CACHE_PREFIX"]
    assert Settings.from_env({name: raw for name in names}) == Settings()


# --- bad values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "allowed"),
    [
        ("GQL_PORT", "eighty", "whole number"),
        ("GQL_PORT", "80.5", "whole number"),
        ("GQL_WORKERS", "two", "whole number"),
        ("GQL_LOCAL_CACHE_ENTRIES", "1k", "whole number"),
        ("GQL_COMPUTE_THREADS", "0x2", "whole number"),
        ("GQL_CHART_TTL", "1h", "number"),
        ("GQL_YIELD_TTL", "soon", "number"),
        ("GQL_REDIS_TIMEOUT", "100ms", "number"),
        ("GQL_REDIS_RETRY_SECONDS", "5s", "number"),
        ("GQL_CACHE_ENABLED", "maybe", "true/false"),
        ("GQL_GRAPHIQL", "enabled", "true/false"),
    ],
)
def test_unparsable_value_names_the_variable_and_what_is_allowed(name: str, raw: str, allowed: str):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: raw})
    message = str(caught.value)
    assert name in message
    assert repr(raw) in message
    assert allowed in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- range checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("GQL_PORT", "0"),
        ("GQL_PORT", "-1"),
        ("GQL_PORT", "65536"),
        ("GQL_WORKERS", "0"),
        ("GQL_WORKERS", "-3"),
        ("GQL_REDIS_TIMEOUT", "0"),
        ("GQL_REDIS_TIMEOUT", "-0.5"),
        ("GQL_REDIS_RETRY_SECONDS", "-1"),
        ("GQL_CHART_TTL", "0"),
        ("GQL_CHART_TTL", "-60"),
        ("GQL_CHART_TTL", "nan"),
        ("GQL_YIELD_TTL", "0"),
        ("GQL_LOCAL_CACHE_ENTRIES", "-1"),
        ("GQL_COMPUTE_THREADS", "0"),
        ("GQL_WS_MAX_CONNECTIONS_PER_CLIENT", "0"),
        ("GQL_WS_MAX_SUBSCRIPTIONS", "0"),
        ("GQL_WS_IDLE_SECONDS", "0"),
        ("GQL_WS_INIT_TIMEOUT", "-1"),
    ],
)
def test_out_of_range_value_is_rejected_naming_the_variable(name: str, raw: str):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("GQL_PORT", "1"),
        ("GQL_PORT", "65535"),
        ("GQL_WORKERS", "1"),
        ("GQL_REDIS_RETRY_SECONDS", "0"),
        ("GQL_REDIS_TIMEOUT", "0.001"),
        ("GQL_LOCAL_CACHE_ENTRIES", "0"),
        ("GQL_COMPUTE_THREADS", "1"),
        ("GQL_WS_MAX_CONNECTIONS_PER_CLIENT", "1"),
        ("GQL_WS_MAX_SUBSCRIPTIONS", "1"),
        ("GQL_WS_IDLE_SECONDS", "0.5"),
    ],
)
def test_boundary_values_are_accepted(name: str, raw: str):
    Settings.from_env({name: raw})


def test_range_messages_say_what_is_allowed():
    with pytest.raises(ConfigError, match="between 1 and 65535"):
        Settings.from_env({"GQL_PORT": "0"})
    with pytest.raises(ConfigError, match="at least 1"):
        Settings.from_env({"GQL_WORKERS": "0"})
    with pytest.raises(ConfigError, match="positive"):
        Settings.from_env({"GQL_CHART_TTL": "0"})


@pytest.mark.parametrize(
    "changes",
    [
        {"port": 0},
        {"port": 70000},
        {"workers": 0},
        {"redis_timeout": 0.0},
        {"redis_retry_seconds": -0.1},
        {"chart_ttl": 0.0},
        {"yield_ttl": -1.0},
        {"local_cache_entries": -1},
        {"compute_threads": 0},
        {"cache_prefix": ""},
        {"redis_url": "bogus://"},
    ],
)
def test_validate_rejects_settings_built_in_code(changes: dict):
    with pytest.raises(ConfigError):
        replace(Settings(), **changes).validate()


def test_defaults_are_valid():
    Settings().validate()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"GQL_REDIS_MODE": "replicated"}, "GQL_REDIS_MODE='replicated' is not a mode; expected one of standalone, cluster, sentinel"),
        ({"GQL_REDIS_MODE": "sentinel", "GQL_REDIS_SENTINEL_SERVICE": "m"}, "GQL_REDIS_SENTINELS='': no sentinel given"),
        ({"GQL_REDIS_MODE": "sentinel", "GQL_REDIS_SENTINELS": "s1:26379,s2", "GQL_REDIS_SENTINEL_SERVICE": "m"}, "'s2' is not host:port"),
        ({"GQL_REDIS_MODE": "sentinel", "GQL_REDIS_SENTINELS": "s1:26379"}, "GQL_REDIS_SENTINEL_SERVICE is not set"),
        ({"GQL_REDIS_MODE": "cluster", "REDIS_URL": "unix:///run/redis.sock"}, "needs REDIS_URL as redis:// or rediss://"),
        ({"GQL_REDIS_REFRESH_REPLICAS": "-1"}, "GQL_REDIS_REFRESH_REPLICAS must be >= 0"),
        ({"GQL_CACHE_PREFIX": "a{b}"}, "must not hold { or }"),
    ],
)
def test_redis_mode_settings_say_what_is_missing_or_wrong(env: dict[str, str], says: str):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert says in str(refused.value)


def test_redis_modes_read_their_settings():
    sentinel = Settings.from_env({
        "GQL_REDIS_MODE": "Sentinel", "GQL_REDIS_SENTINELS": "s1:26379, [::1]:26380", "GQL_REDIS_SENTINEL_SERVICE": "gql",
    })
    topology = sentinel.redis_topology()
    assert topology.mode.value == "sentinel" and topology.sentinels == (("s1", 26379), ("::1", 26380))
    assert sentinel.refresh_replicas == 1
    assert Settings().refresh_replicas == 0  # standalone: nothing to wait for
    assert Settings.from_env({"GQL_REDIS_MODE": "cluster", "GQL_REDIS_REFRESH_REPLICAS": "0"}).refresh_replicas == 0


def test_every_setting_is_in_the_readme_table_and_in_the_configuration_docs():
    from dataclasses import fields
    from pathlib import Path

    from gql.config import _ENV_NAMES

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Configuration"):]
    docs = (root / "docs" / "configuration.md").read_text()
    for field in fields(Settings):
        name = _ENV_NAMES.get(field.name, "GQL_" + field.name.upper())
        assert f"| `{name}` |" in table, f"{name} is missing from the README's configuration table"
        assert f"| `{name}` |" in docs, f"{name} is missing from docs/configuration.md"


# --- REDIS_URL: read by redis-py, as the cache reads it ---------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("bogus://", "must specify one of the following schemes (redis://, rediss://, unix://)"),
        ("http://127.0.0.1:6379", "must specify one of the following schemes"),
        ("redis://127.0.0.1:99999/0", "Port out of range"),
        ("redis://127.0.0.1:port/0", "Port could not be cast to integer"),
        ("redis://127.0.0.1/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("redis://127.0.0.1/0?no_such_option=1", "no_such_option"),
    ],
)
def test_unusable_redis_url_is_refused_naming_the_variable(raw: str, problem: str):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": raw})
    message = str(caught.value)
    assert message.startswith("REDIS_URL is not usable: ") and problem in message
    assert "expected e.g. redis://127.0.0.1:6379/0" in message


def test_unusable_redis_url_message_never_shows_the_password():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": "redis://user:s3cret-pw@127.0.0.1:99999/0"})
    assert "s3cret-pw" not in str(caught.value)


@pytest.mark.parametrize(
    "raw", ["redis://127.0.0.1:6379/0", "redis://:pw@cache.internal:6380/2", "rediss://cache:6379/0", "unix:///run/redis.sock"]
)
def test_usable_redis_urls_are_accepted(raw: str):
    assert Settings.from_env({"REDIS_URL": raw}).redis_url == raw
