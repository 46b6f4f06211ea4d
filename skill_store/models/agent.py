"""Agents and their typed identity, AgentDNA.

The four sub-configs (personality, model, memory, boundaries) are Pydantic models stored
in `jsonb` columns and loaded back as those models. On the table the Python attributes
`model` and `memory` map to the columns `model_config` and `memory_config` (Pydantic
reserves the `model_` prefix).
"""

import json
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, computed_field
from pydantic import Field as PydanticField
from sqlmodel import Field, Relationship

from skill_store.models._types import (
    EMPTY_TEXT_ARRAY,
    INPUT,
    SLUG_PATTERN,
    TEXT_ARRAY,
    Identified,
    JSONObject,
    Language,
    Model,
    PgStr,
    PydanticJSONB,
    Slug,
    TeamRowId,
    Timestamps,
    team_primary_key,
    with_message,
)
from skill_store.models.enums import AgentStatus, pg_enum

if TYPE_CHECKING:
    from skill_store.models.user import Team

Weight = Annotated[float, PydanticField(ge=0.0, le=1.0)]


class VoiceExample(BaseModel):
    """A sample interaction that demonstrates the agent's voice."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    user_message: PgStr
    agent_response: PgStr
    context: PgStr = ""


class AgentPersonality(BaseModel):
    """How the agent thinks, speaks and behaves."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    system_prompt_template: PgStr
    tone: Literal[
        "professional",
        "friendly",
        "casual",
        "academic",
        "playful",
        "empathetic",
        "direct",
        "custom",
    ] = "friendly"
    verbosity: Literal["concise", "balanced", "detailed", "verbose"] = "balanced"
    formality: Literal["formal", "semi-formal", "informal", "adaptive"] = "adaptive"
    language: Language = PydanticField(default="en", description="ISO 639-1")
    traits: dict[PgStr, Weight] = PydanticField(default_factory=dict)
    voice_examples: list[VoiceExample] = PydanticField(default_factory=list)
    always_rules: list[PgStr] = PydanticField(default_factory=list)
    never_rules: list[PgStr] = PydanticField(default_factory=list)
    custom_instructions: PgStr = ""


class AgentModelConfig(BaseModel):
    """LLM configuration of an agent."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    model_name: PgStr = "anthropic/claude-sonnet-4.5"
    temperature: float = PydanticField(default=0.7, ge=0.0, le=2.0)
    max_output_tokens: int = PydanticField(default=4096, ge=100, le=32000)
    provider_overrides: JSONObject = PydanticField(default_factory=dict)


class RetrievalWeights(BaseModel):
    """Weights of the five signals that rank memories at retrieval."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    semantic: Weight = 0.35
    recency: Weight = 0.20
    importance: Weight = 0.20
    continuity: Weight = 0.15
    relationship: Weight = 0.10


class AgentMemoryConfig(BaseModel):
    """Memory retrieval and extraction configuration of an agent."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    token_budget: int = PydanticField(default=2000, ge=100, le=8000)
    retrieval_weights: RetrievalWeights = PydanticField(default_factory=RetrievalWeights)
    auto_extract: bool = True
    auto_pin_preferences: bool = True
    summarize_interval: int = PydanticField(default=20, ge=1)
    remember_commands: list[PgStr] = PydanticField(
        default_factory=lambda: ["remember this", "don't forget", "keep in mind", "note that"]
    )


class AgentBoundaries(BaseModel):
    """What the agent can and cannot do."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    can_do: list[PgStr] = PydanticField(default_factory=list)
    cannot_do: list[PgStr] = PydanticField(default_factory=list)
    escalates_to: Slug | None = PydanticField(default=None, description="Slug of an agent")
    max_autonomy: Literal["execute", "suggest", "ask"] = "execute"
    allowed_domains: list[PgStr] = PydanticField(
        default_factory=list, description="HTTP tool domain allowlist; empty allows all"
    )
    max_tool_calls_per_turn: int = PydanticField(default=10, ge=1, le=50)


def _json_default(value: BaseModel) -> str:
    return json.dumps(value.model_dump(mode="json"), separators=(",", ":"))


def _skill_list() -> Any:
    return Field(
        default_factory=list,
        sa_type=TEXT_ARRAY,
        sa_column_kwargs={"server_default": EMPTY_TEXT_ARRAY},
    )


# Shared properties
class AgentBase(Model):
    team_id: uuid.UUID = Field(foreign_key="team.id", ondelete="CASCADE")
    name: PgStr = Field(min_length=1, max_length=200, sa_type=sa.Text)
    slug: Slug = Field(sa_type=sa.Text)
    tagline: PgStr = Field(
        default="", max_length=500, sa_type=sa.Text, sa_column_kwargs={"server_default": ""}
    )
    avatar_emoji: PgStr = Field(
        default="", max_length=32, sa_type=sa.Text, sa_column_kwargs={"server_default": ""}
    )
    personality: AgentPersonality = Field(
        sa_type=PydanticJSONB(AgentPersonality),
        sa_column_kwargs={
            "server_default": _json_default(AgentPersonality(system_prompt_template=""))
        },
    )
    shared_skill_names: list[PgStr] = _skill_list()
    custom_skill_names: list[PgStr] = _skill_list()
    disabled_skill_names: list[PgStr] = _skill_list()
    model: AgentModelConfig = Field(
        default_factory=AgentModelConfig,
        sa_type=PydanticJSONB(AgentModelConfig),
        sa_column_kwargs={
            "name": "model_config",
            "server_default": _json_default(AgentModelConfig()),
        },
    )
    memory: AgentMemoryConfig = Field(
        default_factory=AgentMemoryConfig,
        sa_type=PydanticJSONB(AgentMemoryConfig),
        sa_column_kwargs={
            "name": "memory_config",
            "server_default": _json_default(AgentMemoryConfig()),
        },
    )
    boundaries: AgentBoundaries = Field(
        default_factory=AgentBoundaries,
        sa_type=PydanticJSONB(AgentBoundaries),
        sa_column_kwargs={"server_default": _json_default(AgentBoundaries())},
    )
    status: AgentStatus = Field(
        default=AgentStatus.DRAFT,
        sa_type=pg_enum(AgentStatus, "agent_status"),
        sa_column_kwargs={"server_default": AgentStatus.DRAFT.value},
    )
    created_by: uuid.UUID | None = Field(default=None, foreign_key="user.id")


# Database model
class Agent(Timestamps, AgentBase, TeamRowId, table=True):
    """A named agent of a team; slugs are unique within the team."""

    __tablename__ = "agent"
    __table_args__ = (
        team_primary_key("agent"),
        with_message(
            sa.UniqueConstraint("team_id", "slug", name="uq_agent_team_slug"),
            "an agent with slug '{slug}' already exists in team {team_id}",
        ),
        sa.CheckConstraint(f"slug ~ '{SLUG_PATTERN}'", name="ck_agent_slug_format"),
        sa.Index("idx_agent_team", "team_id", "status"),
    )

    # Read-only columns the database derives from the sub-configs, for SQL and dataframes.
    model_name: str | None = Field(
        default=None,
        sa_column=sa.Column(sa.Text, sa.Computed("model_config ->> 'model_name'", persisted=True)),
    )
    personality_prompt: str | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Text, sa.Computed("personality ->> 'system_prompt_template'", persisted=True)
        ),
    )

    team: "Team" = Relationship(back_populates="agents")


# Properties to receive on creation
class AgentCreate(AgentBase):
    model_config = INPUT


# Properties to return: the agent's full identity document
class AgentDNA(AgentBase, Identified):
    """Complete identity document of a named agent."""

    created_at: datetime
    updated_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def effective_skills(self) -> list[str]:
        """Skills the agent can use: shared + custom - disabled, in order, without repeats."""
        disabled = set(self.disabled_skill_names)
        skills = [*self.shared_skill_names, *self.custom_skill_names]
        return list(dict.fromkeys(skill for skill in skills if skill not in disabled))


# Properties to receive on update, all optional
class AgentUpdate(Model):
    model_config = INPUT
    name: PgStr | None = Field(default=None, min_length=1, max_length=200)
    slug: Slug | None = None
    tagline: PgStr | None = Field(default=None, max_length=500)
    avatar_emoji: PgStr | None = Field(default=None, max_length=32)
    personality: AgentPersonality | None = None
    shared_skill_names: list[PgStr] | None = None
    custom_skill_names: list[PgStr] | None = None
    disabled_skill_names: list[PgStr] | None = None
    model: AgentModelConfig | None = None
    memory: AgentMemoryConfig | None = None
    boundaries: AgentBoundaries | None = None
    status: AgentStatus | None = None
