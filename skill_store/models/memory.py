"""Long-term memory: one table for every memory type, its append-only log, and tags.

Every insert, update and delete of a memory writes a `memory_log` row from a database
trigger (so raw SQL is audited too); `memory_log` itself rejects UPDATE, DELETE and
TRUNCATE.
"""

import uuid
from datetime import UTC, datetime
from typing import Annotated

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from pydantic import AfterValidator, AwareDatetime, StringConstraints, field_validator
from sqlalchemy.dialects.postgresql import REGCONFIG, TSVECTOR
from sqlmodel import Field, Relationship

from skill_store.models._types import (
    INPUT,
    UUID_ARRAY,
    CreatedAt,
    Embedding,
    Identified,
    JSONObject,
    Model,
    Moment,
    PgStr,
    TeamRowId,
    Timestamps,
    Vector,
    check_text,
    metadata_field,
    team_foreign_key,
    team_primary_key,
    with_message,
)
from skill_store.models.agent import Agent
from skill_store.models.enums import MemorySource, MemoryStatus, MemoryTier, MemoryType, pg_enum
from skill_store.models.user import Team

MAX_CONTENT_LENGTH = 100_000
"""Longest memory content accepted, in characters."""

TEAM_INDEX_PREFIX = "memory_team_"
"""Start of the name of a team's own HNSW index on `memory`: `memory_team_<key>_<covers>`,
the key a hash of the team's id (see `skill_store.team_indexes`)."""

Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(check_text),
]


# Shared properties
class MemoryBase(Model):
    team_id: uuid.UUID = Field(foreign_key="team.id", ondelete="CASCADE")
    agent_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = Field(default=None, foreign_key="user.id")
    memory_type: MemoryType = Field(sa_type=pg_enum(MemoryType, "memory_type_enum"))
    content: PgStr = Field(min_length=1, max_length=MAX_CONTENT_LENGTH, sa_type=sa.Text)
    subject: PgStr | None = Field(default=None, max_length=500, sa_type=sa.Text)
    # The column's dimension is EMBEDDING_DIMENSIONS when the migration ran; the validator
    # checks lengths against the setting, the repository against the column.
    embedding: Embedding | None = Field(default=None, sa_type=Vector(), repr=False)
    # The `model` of the embedder that made `embedding` (None: not known); vectors of
    # different models are not comparable. Every vector has the column's dimension.
    embedding_model: PgStr | None = Field(default=None, max_length=200, sa_type=sa.Text)
    importance: int = Field(
        default=5, ge=1, le=10, sa_column_kwargs={"server_default": sa.text("5")}
    )
    confidence: float = Field(
        default=1.0, ge=0.0, le=1.0, sa_column_kwargs={"server_default": sa.text("1.0")}
    )
    is_pinned: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    source_type: MemorySource = Field(
        default=MemorySource.EXTRACTION,
        sa_type=pg_enum(MemorySource, "memory_source"),
        sa_column_kwargs={"server_default": MemorySource.EXTRACTION.value},
    )
    source_conversation_id: uuid.UUID | None = None
    source_message_ids: list[uuid.UUID] | None = Field(default=None, sa_type=UUID_ARRAY)
    extraction_model: PgStr | None = Field(default=None, max_length=200, sa_type=sa.Text)
    contradicts: list[uuid.UUID] | None = Field(default=None, sa_type=UUID_ARRAY)
    related_to: list[uuid.UUID] | None = Field(default=None, sa_type=UUID_ARRAY)
    metadata_json: JSONObject = metadata_field(column=True)
    tier: MemoryTier = Field(
        default=MemoryTier.WARM,
        sa_type=pg_enum(MemoryTier, "memory_tier"),
        sa_column_kwargs={"server_default": MemoryTier.WARM.value},
    )
    expires_at: Moment | None = None

    @property
    def embedding_array(self) -> NDArray[np.float32] | None:
        """The embedding as a float32 NumPy array (the array itself if it is one), or None.

        Memories loaded from the database hold lists, as pgvector returns them.
        """
        return None if self.embedding is None else np.asarray(self.embedding, dtype=np.float32)


# Database model
class Memory(Timestamps, MemoryBase, TeamRowId, table=True):
    """One memory of a team, optionally owned by an agent and about a user."""

    __tablename__ = "memory"
    __table_args__ = (
        team_primary_key("memory"),
        with_message(
            team_foreign_key("fk_memory_agent_team", "agent_id", "agent"),
            "agent {agent_id} is not an agent of team {team_id}, the team of the memory",
        ),
        with_message(
            team_foreign_key(
                "fk_memory_source_conversation_team",
                "source_conversation_id",
                "conversation",
                "SET NULL (source_conversation_id)",
            ),
            "conversation {source_conversation_id} is not a conversation of team {team_id},"
            " the team of the memory",
        ),
        with_message(
            team_foreign_key("fk_memory_superseded_by_team", "superseded_by", "memory"),
            "memory {superseded_by} is not a memory of team {team_id},"
            " the team of the memory it replaces",
        ),
        sa.CheckConstraint("importance BETWEEN 1 AND 10", name="ck_memory_importance"),
        sa.CheckConstraint("confidence BETWEEN 0.0 AND 1.0", name="ck_memory_confidence"),
        sa.Index("idx_memory_agent", "agent_id"),
        sa.Index("idx_memory_user", "user_id"),
        sa.Index("idx_memory_superseded_by", "superseded_by"),
        sa.Index("idx_memory_source_conversation", "source_conversation_id"),
        sa.Index("idx_memory_embedder", "team_id", "embedding_model"),
    )

    access_count: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})
    version: int = Field(default=1, sa_column_kwargs={"server_default": sa.text("1")})
    superseded_by: uuid.UUID | None = None
    status: MemoryStatus = Field(
        default=MemoryStatus.ACTIVE,
        sa_type=pg_enum(MemoryStatus, "memory_status"),
        sa_column_kwargs={"server_default": MemoryStatus.ACTIVE.value},
    )
    last_accessed_at: datetime | None = Field(
        default=None, nullable=False, sa_column_kwargs={"server_default": sa.func.now()}
    )

    team: Team = Relationship()
    # Both set team_id, to the same team: the agent's key includes it.
    agent: Agent | None = Relationship(sa_relationship_kwargs={"overlaps": "team"})


# Derived by the database and not loaded with memories: the text-search configuration of
# the memory's agent's language (else its team's), set on insert, and the `tsvector` of
# content and subject in it; the bulk load that wrote the memory beside its team's index,
# if one did (see `skill_store.team_indexes`).
Memory.__table__.append_column(  # type: ignore[attr-defined]
    sa.Column(
        "text_config", REGCONFIG, nullable=False, server_default=sa.text("'simple'::regconfig")
    )
)
Memory.__table__.append_column(  # type: ignore[attr-defined]
    sa.Column(
        "search_text",
        TSVECTOR,
        sa.Computed("to_tsvector(text_config, content || ' ' || coalesce(subject, ''))"),
    )
)
Memory.__table__.append_column(  # type: ignore[attr-defined]
    sa.Column("load_batch", sa.BigInteger)
)


def _not_in_future(moment: datetime | None) -> datetime | None:
    if moment is not None and moment > datetime.now(UTC):
        raise ValueError("created_at must not be in the future")
    return moment


# Properties to receive on creation; `created_at` (default now) dates imported memories
class MemoryCreate(MemoryBase):
    model_config = INPUT
    tags: list[Tag] = Field(default_factory=list)
    created_at: Annotated[AwareDatetime | None, AfterValidator(_not_in_future)] = None


# Properties to return, in the table's order
class MemoryRead(MemoryBase, Identified):
    created_at: datetime
    updated_at: datetime
    access_count: int
    version: int
    superseded_by: uuid.UUID | None
    status: MemoryStatus
    last_accessed_at: datetime


# A search hit: the memory and the cosine similarity of its vector to the query (1 is
# identical)
class MemorySearchResult(MemoryRead):
    similarity: float


# Why a memory was retrieved: each signal's value, in [0, 1]
class MemorySignals(Model):
    semantic: float
    recency: float
    importance: float
    continuity: float
    relationship: float


# A retrieved memory: `similarity` as a search hit's (None for a memory without a vector,
# found by its words); its score is the sum of its signals weighted by the retrieval weights
class ScoredMemory(MemoryRead):
    similarity: float | None
    score: float
    signals: MemorySignals


# Memories packed for a prompt: `text` fills the `{memory_context}` of a system prompt
class MemoryContext(Model):
    memories: list[ScoredMemory]
    tokens: int
    text: str


# Properties to receive on update, all optional
class MemoryUpdate(Model):
    model_config = INPUT
    content: PgStr | None = Field(default=None, min_length=1, max_length=MAX_CONTENT_LENGTH)
    subject: PgStr | None = Field(default=None, max_length=500)
    embedding: Embedding | None = None
    # A new `embedding` without it makes the memory's embedding model unknown (None).
    embedding_model: PgStr | None = Field(default=None, max_length=200)
    importance: int | None = Field(default=None, ge=1, le=10)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    is_pinned: bool | None = None
    contradicts: list[uuid.UUID] | None = None
    related_to: list[uuid.UUID] | None = None
    metadata_json: JSONObject | None = metadata_field(column=False)
    tier: MemoryTier | None = None
    status: MemoryStatus | None = None
    expires_at: Moment | None = None

    @field_validator("status")
    @classmethod
    def _not_superseded(cls, status: MemoryStatus | None) -> MemoryStatus | None:
        if status == MemoryStatus.SUPERSEDED:
            raise ValueError("a memory becomes superseded only by MemoryRepository.supersede")
        return status


# Shared properties
class MemoryLogBase(Model):
    memory_id: uuid.UUID
    team_id: uuid.UUID
    action: PgStr = Field(min_length=1, max_length=50, sa_type=sa.Text)
    old_content: PgStr | None = Field(default=None, sa_type=sa.Text)
    new_content: PgStr | None = Field(default=None, sa_type=sa.Text)
    old_importance: int | None = None
    new_importance: int | None = None
    old_tier: PgStr | None = Field(default=None, sa_type=sa.Text)
    new_tier: PgStr | None = Field(default=None, sa_type=sa.Text)
    old_status: PgStr | None = Field(default=None, sa_type=sa.Text)
    new_status: PgStr | None = Field(default=None, sa_type=sa.Text)
    changed_by: PgStr = Field(min_length=1, max_length=200, sa_type=sa.Text)
    reason: PgStr | None = Field(default=None, sa_type=sa.Text)
    conversation_id: uuid.UUID | None = None
    related_memory_ids: list[uuid.UUID] | None = Field(default=None, sa_type=UUID_ARRAY)


# Database model: append-only, no foreign key so the history outlives the memory
class MemoryLog(CreatedAt, MemoryLogBase, TeamRowId, table=True):
    """One change of a memory, written by the database."""

    __tablename__ = "memory_log"
    __table_args__ = (
        team_primary_key("memory_log"),
        sa.Index("idx_memory_log_memory", "memory_id", "created_at"),
    )


# Properties to receive on creation: an event recorded by hand (changes log themselves)
class MemoryLogCreate(MemoryLogBase):
    model_config = INPUT


# Properties to return
class MemoryLogRead(MemoryLogBase, Identified):
    created_at: datetime


# Shared properties
class MemoryTagBase(Model):
    team_id: uuid.UUID
    memory_id: uuid.UUID
    tag: Tag = Field(sa_type=sa.Text)


# Database model
class MemoryTag(CreatedAt, MemoryTagBase, TeamRowId, table=True):
    """A label on a memory, in the memory's team; each tag once per memory."""

    __tablename__ = "memory_tag"
    __table_args__ = (
        team_primary_key("memory_tag"),
        with_message(
            sa.UniqueConstraint("team_id", "memory_id", "tag", name="uq_memory_tag"),
            "memory {memory_id} already has tag '{tag}'",
        ),
        with_message(
            team_foreign_key("fk_memory_tag_memory_team", "memory_id", "memory", "CASCADE"),
            "memory {memory_id} is not a memory of team {team_id}",
        ),
        sa.Index("idx_memory_tag_tag", "tag"),
    )

    memory: Memory = Relationship()


# Properties to receive on creation
class MemoryTagCreate(MemoryTagBase):
    model_config = INPUT


# Properties to return
class MemoryTagRead(MemoryTagBase, Identified):
    created_at: datetime
