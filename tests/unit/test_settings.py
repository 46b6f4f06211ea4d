"""Settings from the environment and `.env`, and the database URL helpers."""

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import platformdirs
import pytest
from pydantic import SecretStr, ValidationError

from skill_store.settings import (
    Settings,
    get_settings,
    load_settings,
    mask_password,
    normalize_database_url,
)

SETTINGS_VARIABLES = {name.upper() for name in Settings.model_fields}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No settings in the environment, no `.env` file, and an empty `get_settings` cache."""
    for name in list(os.environ):
        if name.upper() in SETTINGS_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults() -> None:
    settings = load_settings()
    assert settings.database_url is None
    assert settings.database_pool_size == 5
    assert settings.database_pool_overflow == 10
    assert settings.embedding_model == "text-embedding-3-small"
    assert settings.embedding_api_key is None
    assert settings.embedding_dimensions == 1536
    assert settings.embedded_data_dir == platformdirs.user_data_path("skill_store") / "pgdata"


def test_read_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://app:pw@db.internal:5432/skills")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "20")
    monkeypatch.setenv("DATABASE_POOL_OVERFLOW", "0")
    monkeypatch.setenv("EMBEDDING_MODEL", "text-embedding-3-large")
    monkeypatch.setenv("EMBEDDING_API_KEY", "sk-test-123")
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "768")
    monkeypatch.setenv("EMBEDDED_DATA_DIR", str(tmp_path / "pg"))

    settings = load_settings()

    assert settings.database_url == "postgresql+asyncpg://app:pw@db.internal:5432/skills"
    assert (settings.database_pool_size, settings.database_pool_overflow) == (20, 0)
    assert settings.embedding_model == "text-embedding-3-large"
    assert isinstance(settings.embedding_api_key, SecretStr)
    assert settings.embedding_api_key.get_secret_value() == "sk-test-123"
    assert "sk-test-123" not in repr(settings)
    assert settings.embedding_dimensions == 768
    assert settings.embedded_data_dir == tmp_path / "pg"


def test_read_from_dotenv_file_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("EMBEDDING_MODEL=from-dotenv\nDATABASE_POOL_SIZE=7\n")
    settings = load_settings()
    assert (settings.embedding_model, settings.database_pool_size) == ("from-dotenv", 7)


def test_empty_database_url_means_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    assert load_settings().database_url is None


def test_database_url_of_another_database_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://app:pw@db/skills")
    with pytest.raises(ValidationError, match="'mysql'") as info:
        load_settings()
    assert [error["loc"] for error in info.value.errors()] == [("database_url",)]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_POOL_SIZE", 1),
        ("DATABASE_POOL_SIZE", 50),
        ("DATABASE_POOL_OVERFLOW", 0),
        ("DATABASE_POOL_OVERFLOW", 100),
        ("EMBEDDING_DIMENSIONS", 1),
        ("EMBEDDING_DIMENSIONS", 2000),
    ],
)
def test_range_bounds_accepted(monkeypatch: pytest.MonkeyPatch, variable: str, value: int) -> None:
    monkeypatch.setenv(variable, str(value))
    assert getattr(load_settings(), variable.lower()) == value


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_POOL_SIZE", 0),
        ("DATABASE_POOL_SIZE", 51),
        ("DATABASE_POOL_OVERFLOW", -1),
        ("DATABASE_POOL_OVERFLOW", 101),
        ("EMBEDDING_DIMENSIONS", 0),
        ("EMBEDDING_DIMENSIONS", 2001),
    ],
)
def test_range_just_outside_rejected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: int
) -> None:
    monkeypatch.setenv(variable, str(value))
    with pytest.raises(ValidationError) as info:
        load_settings()
    assert [error["loc"] for error in info.value.errors()] == [(variable.lower(),)]


@pytest.mark.parametrize(
    ("value", "milliseconds"),
    [("250", 250), ("1.2", 2), ("PT5S", 5000), ("0", 0), ("", 0), ("2147483647", 2**31 - 1)],
)
def test_statement_timeout_from_environment_in_milliseconds(
    monkeypatch: pytest.MonkeyPatch, value: str, milliseconds: int
) -> None:
    monkeypatch.setenv("STATEMENT_TIMEOUT", value)
    settings = load_settings()
    assert settings.statement_timeout_ms == milliseconds
    assert (settings.statement_timeout is None) == (milliseconds == 0)


def test_statement_timeout_as_timedelta_or_number() -> None:
    assert Settings(statement_timeout=timedelta(seconds=2)).statement_timeout_ms == 2000
    assert Settings(statement_timeout=1500).statement_timeout == timedelta(seconds=1.5)
    assert Settings().statement_timeout is None


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("86400", timedelta(days=1)),
        (" 90.5 ", timedelta(seconds=90.5)),
        ("P7D", timedelta(days=7)),
        ("PT12H", timedelta(hours=12)),
    ],
)
def test_recency_half_life_from_environment_in_seconds(
    monkeypatch: pytest.MonkeyPatch, value: str, span: timedelta
) -> None:
    monkeypatch.setenv("RECENCY_HALF_LIFE", value)
    assert load_settings().recency_half_life == span


@pytest.mark.parametrize("value", ["0", "-86400", "soon", "P-1D"])
def test_recency_half_life_not_positive_rejected(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RECENCY_HALF_LIFE", value)
    with pytest.raises(ValidationError) as info:
        load_settings()
    assert [error["loc"] for error in info.value.errors()] == [("recency_half_life",)]


@pytest.mark.parametrize("value", ["-1", "2147483648", "soon", "P-1D"])
def test_statement_timeout_out_of_range_rejected(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("STATEMENT_TIMEOUT", value)
    with pytest.raises(ValidationError) as info:
        load_settings()
    assert [error["loc"] for error in info.value.errors()] == [("statement_timeout",)]


def test_get_settings_is_cached_and_load_settings_is_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = get_settings()
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "3")

    assert get_settings() is first
    assert get_settings().embedding_dimensions == 1536
    assert load_settings().embedding_dimensions == 3

    get_settings.cache_clear()
    assert get_settings().embedding_dimensions == 3


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@host:5432/db", "postgresql+asyncpg://u:p@host:5432/db"),
        ("postgresql://u:p@host/db", "postgresql+asyncpg://u:p@host/db"),
        ("postgresql+asyncpg://u:p@host/db", "postgresql+asyncpg://u:p@host/db"),
        ("postgresql://host/db?sslmode=require", "postgresql+asyncpg://host/db?sslmode=require"),
        ("POSTGRES://u@host/db", "postgresql+asyncpg://u@host/db"),
    ],
)
def test_normalize_database_url(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("mysql://u:p@host/db", "mysql"),
        ("sqlite:///skills.db", "sqlite"),
        ("postgresql+psycopg://u:p@host/db", "postgresql+psycopg"),
        ("host:5432/db", "host"),
        ("localhost/db", ""),
    ],
)
def test_normalize_database_url_rejects_other_schemes(url: str, scheme: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"got scheme {scheme!r}")):
        normalize_database_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql:///skills", "postgresql+asyncpg:///skills"),
        ("postgres:///skills?host=/run/pg", "postgresql+asyncpg:///skills?host=/run/pg"),
    ],
)
def test_normalize_database_url_keeps_empty_host(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:secret@host/db", "postgresql://u:***@host/db"),
        ("postgresql+asyncpg://u:p%40ss@host:5432/db", "postgresql+asyncpg://u:***@host:5432/db"),
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:secret@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://u:@host/db", "postgresql://u:@host/db"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),
        ("postgresql://host/db", "postgresql://host/db"),
    ],
)
def test_mask_password(url: str, expected: str) -> None:
    assert mask_password(url) == expected
