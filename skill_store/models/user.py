"""Users, teams (the tenants) and team memberships."""

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import sqlalchemy as sa
from pydantic import AfterValidator, EmailStr, SecretStr
from pydantic import Field as PydanticField
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, Relationship

from skill_store.models._types import (
    EMPTY_JSON,
    EMPTY_TEXT_ARRAY,
    INPUT,
    INT4_MAX,
    LANGUAGE_PATTERN,
    SLUG_PATTERN,
    TEXT_ARRAY,
    CreatedAt,
    Identified,
    JSONObject,
    Language,
    Model,
    PgStr,
    Slug,
    TeamRowId,
    Timestamps,
    UUIDPrimaryKey,
    team_primary_key,
    with_message,
)
from skill_store.models.enums import UserRole, pg_enum

if TYPE_CHECKING:
    from skill_store.models.agent import Agent

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 1024


def _check_password(value: SecretStr) -> SecretStr:
    if not PASSWORD_MIN_LENGTH <= len(value.get_secret_value()) <= PASSWORD_MAX_LENGTH:
        raise ValueError(
            f"a password must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters long"
        )
    return value


# Checked by a validator of its own: a length constraint on a `SecretStr` speaks of "items".
Password = Annotated[
    SecretStr,
    AfterValidator(_check_password),
    PydanticField(
        json_schema_extra={"minLength": PASSWORD_MIN_LENGTH, "maxLength": PASSWORD_MAX_LENGTH}
    ),
]
HIDE_INPUT = INPUT | {"hide_input_in_errors": True}
"""For the inputs that take a password or a secret: errors name the field, never its value."""


# Shared properties
class UserBase(Model):
    email: EmailStr = Field(max_length=320, sa_type=sa.Text)
    display_name: PgStr = Field(min_length=1, max_length=200, sa_type=sa.Text)
    is_active: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})


# Database model
class User(Timestamps, UserBase, UUIDPrimaryKey, table=True):
    """A person who signs in; emails are unique regardless of case."""

    __tablename__ = "user"
    __table_args__ = (
        sa.CheckConstraint(r"email ~* '^[^@]+@[^@]+\.[^@]+$'", name="ck_user_email_format"),
        with_message(
            sa.Index("uq_user_email", sa.func.lower(sa.column("email")), unique=True),
            "a user with email {email} already exists",
        ),
    )

    password_hash: str = Field(sa_type=sa.Text, repr=False)

    memberships: list["TeamMembership"] = Relationship(back_populates="user")
    owned_teams: list["Team"] = Relationship(back_populates="owner")


# Properties to receive on creation: a password, never a hash
class UserCreate(UserBase):
    model_config = HIDE_INPUT

    password: Password


# Properties to return
class UserRead(UserBase, Identified):
    created_at: datetime
    updated_at: datetime


# Properties to receive on update, all optional
class UserUpdate(Model):
    model_config = HIDE_INPUT

    email: EmailStr | None = Field(default=None, max_length=320)
    display_name: PgStr | None = Field(default=None, min_length=1, max_length=200)
    is_active: bool | None = None
    password: Password | None = None


# Shared properties
class TeamBase(Model):
    name: PgStr = Field(min_length=1, max_length=200, sa_type=sa.Text)
    slug: Slug = Field(sa_type=sa.Text)
    owner_id: uuid.UUID = Field(foreign_key="user.id")
    settings: JSONObject = Field(
        default_factory=dict, sa_type=JSONB, sa_column_kwargs={"server_default": EMPTY_JSON}
    )
    shared_skill_names: list[PgStr] = Field(
        default_factory=list,
        sa_type=TEXT_ARRAY,
        sa_column_kwargs={"server_default": EMPTY_TEXT_ARRAY},
    )
    webhook_url: PgStr | None = Field(default=None, max_length=2048, sa_type=sa.Text)
    conversation_retention_days: int = Field(
        default=90, ge=1, le=INT4_MAX, sa_column_kwargs={"server_default": sa.text("90")}
    )
    language: Language = Field(
        default="en",
        description="ISO 639-1: the words of memories without an agent are read in it",
        sa_type=sa.Text,
        sa_column_kwargs={"server_default": "en"},
    )


# Database model
class Team(Timestamps, TeamBase, UUIDPrimaryKey, table=True):
    """A tenant: agents, conversations and memories all belong to one team."""

    __tablename__ = "team"
    __table_args__ = (
        with_message(
            sa.UniqueConstraint("slug", name="uq_team_slug"),
            "a team with slug '{slug}' already exists",
        ),
        sa.CheckConstraint(f"slug ~ '{SLUG_PATTERN}'", name="ck_team_slug_format"),
        sa.CheckConstraint(f"language ~ '{LANGUAGE_PATTERN}'", name="ck_team_language_format"),
    )

    webhook_secret: str | None = Field(default=None, sa_type=sa.Text, repr=False)

    owner: User = Relationship(back_populates="owned_teams")
    memberships: list["TeamMembership"] = Relationship(back_populates="team")
    agents: list["Agent"] = Relationship(back_populates="team")


# Properties to receive on creation
class TeamCreate(TeamBase):
    model_config = HIDE_INPUT

    webhook_secret: PgStr | None = Field(default=None, repr=False)


# Properties to return: never the webhook secret
class TeamRead(TeamBase, Identified):
    created_at: datetime
    updated_at: datetime


# Properties to receive on update, all optional
class TeamUpdate(Model):
    model_config = HIDE_INPUT

    name: PgStr | None = Field(default=None, min_length=1, max_length=200)
    slug: Slug | None = None
    owner_id: uuid.UUID | None = None
    settings: JSONObject | None = None
    shared_skill_names: list[PgStr] | None = None
    webhook_url: PgStr | None = Field(default=None, max_length=2048)
    webhook_secret: PgStr | None = Field(default=None, repr=False)
    conversation_retention_days: int | None = Field(default=None, ge=1, le=INT4_MAX)
    language: Language | None = None


# Shared properties
class TeamMembershipBase(Model):
    user_id: uuid.UUID = Field(foreign_key="user.id", ondelete="CASCADE")
    team_id: uuid.UUID = Field(foreign_key="team.id", ondelete="CASCADE")
    role: UserRole = Field(
        default=UserRole.MEMBER,
        sa_type=pg_enum(UserRole, "user_role"),
        sa_column_kwargs={"server_default": UserRole.MEMBER.value},
    )


# Database model
class TeamMembership(CreatedAt, TeamMembershipBase, TeamRowId, table=True):
    """A user's role in a team; one membership per user and team."""

    __tablename__ = "team_membership"
    __table_args__ = (
        team_primary_key("team_membership"),
        with_message(
            sa.UniqueConstraint("user_id", "team_id", name="uq_team_membership"),
            "user {user_id} is already a member of team {team_id}",
        ),
        sa.Index("idx_team_membership_team", "team_id"),
    )

    user: User = Relationship(back_populates="memberships")
    team: Team = Relationship(back_populates="memberships")


# Properties to receive on creation
class TeamMembershipCreate(TeamMembershipBase):
    model_config = INPUT


# Properties to return
class TeamMembershipRead(TeamMembershipBase, Identified):
    created_at: datetime


# Properties to receive on update
class TeamMembershipUpdate(Model):
    model_config = INPUT
    role: UserRole | None = None
