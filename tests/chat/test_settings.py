"""Settings from the environment: offline defaults, normalized URLs, errors that name the
variable."""

from __future__ import annotations

import pytest

from unbroken.chat.settings import DEFAULT_DATABASE_URL, Settings, SettingsError, mask_url


def test_defaults_run_offline() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite+aiosqlite:///./unbroken.sqlite3"
    assert settings.redis_url is None and settings.secret_key is None
    assert settings.model == "demo" and settings.demo_tokens_per_second == 20.0
    assert settings.max_concurrent_answers == 3 and settings.answers_per_minute == 20
    assert settings.is_sqlite


def test_values_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgres://u:p@db.example/chat",
            "REDIS_URL": "redis://cache:6379/1",
            "UNBROKEN_SECRET_KEY": "s" * 32,
            "UNBROKEN_MODEL": "gpt-4o-mini",
            "OPENAI_API_KEY": "sk-x",
            "OPENAI_BASE_URL": "http://localhost:11434/v1",
            "UNBROKEN_DEMO_TOKENS_PER_SECOND": "50",
            "UNBROKEN_ALLOWED_ORIGINS": "https://a.example, https://b.example/",
            "UNBROKEN_REDIS_WRITE_GATHER": "0.01",
            "UNBROKEN_REDIS_PLACEMENT": "worker",
        }
    )
    assert settings.database_url == "postgresql+asyncpg://u:p@db.example/chat"
    assert settings.redis_url == "redis://cache:6379/1"
    assert settings.model == "gpt-4o-mini" and settings.openai_base_url.endswith("/v1")  # type: ignore[union-attr]
    assert settings.demo_tokens_per_second == 50.0
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.redis_write_gather == 0.01
    assert settings.redis_placement == "worker"
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"DATABASE_URL": "nonsense"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"UNBROKEN_MODEL": "gpt-4o"}, "OPENAI_API_KEY"),
        ({"UNBROKEN_SECRET_KEY": "short"}, "UNBROKEN_SECRET_KEY"),
        ({"UNBROKEN_DEMO_TOKENS_PER_SECOND": "fast"}, "UNBROKEN_DEMO_TOKENS_PER_SECOND"),
        ({"UNBROKEN_DEMO_TOKENS_PER_SECOND": "0"}, "UNBROKEN_DEMO_TOKENS_PER_SECOND"),
        ({"UNBROKEN_ALLOWED_ORIGINS": "chat.example"}, "UNBROKEN_ALLOWED_ORIGINS"),
        ({"UNBROKEN_FLUSH_INTERVAL": "-0.1"}, "UNBROKEN_FLUSH_INTERVAL"),
        ({"UNBROKEN_FLUSH_INTERVAL": "5"}, "UNBROKEN_FLUSH_INTERVAL"),
        ({"UNBROKEN_FLUSH_INTERVAL": "nan"}, "UNBROKEN_FLUSH_INTERVAL"),
        ({"UNBROKEN_REDIS_WRITE_GATHER": "-1"}, "UNBROKEN_REDIS_WRITE_GATHER"),
        ({"UNBROKEN_REDIS_WRITE_GATHER": "2"}, "UNBROKEN_REDIS_WRITE_GATHER"),
        ({"UNBROKEN_REDIS_PLACEMENT": "master"}, "UNBROKEN_REDIS_PLACEMENT"),
        ({"UNBROKEN_MAX_CONCURRENT_ANSWERS": "-1"}, "UNBROKEN_MAX_CONCURRENT_ANSWERS"),
        ({"UNBROKEN_ANSWERS_PER_MINUTE": "1.5"}, "UNBROKEN_ANSWERS_PER_MINUTE"),
        ({"UNBROKEN_LEASE_TTL": "nan"}, "UNBROKEN_LEASE_TTL"),
        ({"UNBROKEN_RETENTION": "inf"}, "UNBROKEN_RETENTION"),
        ({"UNBROKEN_DRAIN_TIMEOUT": "-inf"}, "UNBROKEN_DRAIN_TIMEOUT"),
        ({"UNBROKEN_MAX_ANSWER_SECONDS": "-5"}, "UNBROKEN_MAX_ANSWER_SECONDS"),
        ({"UNBROKEN_MAX_ANSWER_SECONDS": "nan"}, "UNBROKEN_MAX_ANSWER_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_passwords_are_masked() -> None:
    assert (
        mask_url("postgresql+asyncpg://u:secret@h:5432/db")
        == "postgresql+asyncpg://u:***@h:5432/db"
    )
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
