"""Secrets stay out of reprs and validation errors: password hashes, webhook secrets, URLs."""

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from skill_store import (
    Settings,
    Team,
    TeamCreate,
    TeamUpdate,
    User,
    UserCreate,
    UserUpdate,
)
from tests.unit.helpers import MINIMAL

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$known-hash"
WEBHOOK_SECRET = "whsec_known_secret_42"
URL_PASSWORD = "url-pass-42"


def shown(value: object) -> str:
    return f"{value!r}\n{value!s}"


def test_user_repr_hides_the_password_hash() -> None:
    user = User.model_validate(
        {**MINIMAL[UserCreate], "email": "ada@example.com"}, update={"password_hash": HASH}
    )
    assert user.password_hash == HASH
    assert "ada@example.com" in shown(user)
    assert HASH not in shown(user)
    assert "password_hash" not in shown(user)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Team.model_validate(TeamCreate.model_validate(team_input())),
        lambda: TeamCreate.model_validate(team_input()),
        lambda: TeamUpdate(slug="acme", webhook_secret=WEBHOOK_SECRET),
    ],
    ids=["Team", "TeamCreate", "TeamUpdate"],
)
def test_team_reprs_hide_the_webhook_secret(make: Callable[[], Any]) -> None:
    team = make()
    assert team.webhook_secret == WEBHOOK_SECRET
    assert "acme" in shown(team)
    assert WEBHOOK_SECRET not in shown(team)


def team_input() -> dict[str, Any]:
    return {**MINIMAL[TeamCreate], "slug": "acme", "webhook_secret": WEBHOOK_SECRET}


@pytest.mark.parametrize(
    ("model", "data", "secret", "field"),
    [
        (UserCreate, {**MINIMAL[UserCreate], "password": "short7!"}, "short7!", "password"),
        (
            UserCreate,
            {**MINIMAL[UserCreate], "password": "long-secret-" + "y" * 1013},
            "long-secret-",
            "password",
        ),
        (UserUpdate, {"password": "short7!"}, "short7!", "password"),
        (
            TeamCreate,
            {**MINIMAL[TeamCreate], "webhook_secret": "whsec_\x00_nul"},
            "whsec_",
            "webhook_secret",
        ),
        (TeamUpdate, {"webhook_secret": "whsec_\x00_nul"}, "whsec_", "webhook_secret"),
    ],
)
def test_rejected_secrets_are_not_echoed_in_errors(
    model: type[BaseModel], data: dict[str, Any], secret: str, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    assert [error["loc"] for error in info.value.errors()] == [(field,)]
    assert secret not in shown(info.value)


def test_settings_repr_masks_the_database_password() -> None:
    settings = Settings(database_url=f"postgresql://app:{URL_PASSWORD}@db.internal/skills")
    assert "app:***@db.internal" in shown(settings)
    assert URL_PASSWORD not in shown(settings)
    assert settings.database_url == f"postgresql+asyncpg://app:{URL_PASSWORD}@db.internal/skills"


def test_settings_errors_do_not_echo_the_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"mysql://app:{URL_PASSWORD}@db.internal/skills")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "'mysql'" in str(info.value)
    assert URL_PASSWORD not in shown(info.value)
