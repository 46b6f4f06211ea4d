"""Configuration read from the environment and an optional `.env` file."""

import math
import re
from collections.abc import Iterator
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EMBEDDING_BASE_URL = "https://api.openai.com/v1"
_ASYNC_SCHEME = "postgresql+asyncpg"
_ACCEPTED_SCHEMES = ("postgres", "postgresql", _ASYNC_SCHEME)
_MAX_TIMEOUT_MS = 2**31 - 1  # PostgreSQL's limit for statement_timeout
_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")


MAX_EMBEDDING_DIMENSIONS = 2000
"""The longest embedding the store takes: the most an HNSW index on `vector` takes."""


def normalize_database_url(url: str) -> str:
    """Return `url` with the asyncpg driver, the only one this package uses.

    Args:
        url: A PostgreSQL URL: `postgres://`, `postgresql://` or `postgresql+asyncpg://`.

    Returns:
        The same URL with the scheme `postgresql+asyncpg`.

    Raises:
        ValueError: If the URL is not a PostgreSQL URL.
    """
    scheme = urlsplit(url).scheme
    _, separator, rest = url.partition("://")
    if not separator or scheme not in _ACCEPTED_SCHEMES:
        accepted = ", ".join(f"{name}://" for name in _ACCEPTED_SCHEMES)
        raise ValueError(f"database URL must start with one of {accepted}; got scheme {scheme!r}")
    # Rebuilt by hand: urlunsplit drops the `//` of an empty host (`postgresql:///db`).
    return f"{_ASYNC_SCHEME}://{rest}"


def mask_password(url: str) -> str:
    """Return `url` with its password, if any, replaced by `***`.

    Args:
        url: A database URL.

    Returns:
        The URL, safe to print.
    """
    parts = urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class Settings(BaseSettings):
    """Settings of the store, from environment variables (case-insensitive) or `.env`.

    The repr masks the database URL's password; validation errors never echo a value.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL; unset means the embedded server in `embedded_data_dir`.",
    )
    database_pool_size: int = Field(default=5, ge=1, le=50)
    database_pool_overflow: int = Field(default=10, ge=0, le=100)
    statement_timeout: timedelta | None = Field(
        default=None,
        description="Longest a statement may run: milliseconds or a timedelta; 0 or unset: none.",
    )
    connection_lost_timeout: timedelta = Field(
        default=timedelta(seconds=30),
        ge=timedelta(seconds=1),
        le=timedelta(hours=1),
        description="How long a TCP connection's server may stay silent before the connection"
        " counts as lost: seconds or a timedelta.",
    )
    embedding_model: str = Field(default="text-embedding-3-small")
    embedding_api_key: SecretStr | None = Field(default=None)
    embedding_base_url: str = Field(
        default=DEFAULT_EMBEDDING_BASE_URL,
        description="An OpenAI-compatible embeddings service; local servers work too.",
    )
    embedding_dimensions: int = Field(
        default=1536,
        ge=1,
        le=MAX_EMBEDDING_DIMENSIONS,
        description="Length of every embedding; 2000 is the most an HNSW index on `vector` takes.",
    )
    recency_half_life: timedelta = Field(
        default=timedelta(days=30),
        gt=timedelta(0),
        description="Retrieval's recency signal halves with every such span since last use:"
        " seconds or a timedelta.",
    )
    index_builds: Literal["background", "maintain"] = Field(
        default="background",
        description="Who builds the teams' vector indexes: the process that wrote, in the"
        " background after its commit; or only `skill-store maintain` and `db index`.",
    )
    embedded_data_dir: Path = Field(
        default_factory=lambda: platformdirs.user_data_path("skill_store") / "pgdata",
        description="Data directory of the embedded PostgreSQL server.",
    )

    @field_validator("database_url")
    @classmethod
    def _normalize_url(cls, value: str | None) -> str | None:
        return normalize_database_url(value) if value else None

    @field_validator("statement_timeout", mode="before")
    @classmethod
    def _milliseconds(cls, value: Any) -> Any:
        """A bare number is milliseconds (as in PostgreSQL), not pydantic's seconds."""
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(milliseconds=value)
        return value

    @field_validator("connection_lost_timeout", "recency_half_life", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        """A bare number from the environment is seconds, as pydantic reads a number."""
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
        return value

    @field_validator("statement_timeout")
    @classmethod
    def _check_timeout(cls, value: timedelta | None) -> timedelta | None:
        if value is None or value == timedelta(0):
            return None
        if value < timedelta(0) or value > timedelta(milliseconds=_MAX_TIMEOUT_MS):
            raise ValueError(f"must be between 0 and {_MAX_TIMEOUT_MS} milliseconds")
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (mask_password(value) if name == "database_url" and value else value)

    @property
    def statement_timeout_ms(self) -> int:
        """`statement_timeout` in whole milliseconds (rounded up), 0 for no limit."""
        if self.statement_timeout is None:
            return 0
        return math.ceil(self.statement_timeout / timedelta(milliseconds=1))


def load_settings() -> Settings:
    """Read the settings afresh from the environment and `.env`.

    Returns:
        A new `Settings`.
    """
    return Settings()


@cache
def get_settings() -> Settings:
    """Return the settings read once per process (clear with `get_settings.cache_clear()`).

    Returns:
        The cached `Settings`.
    """
    return load_settings()
