"""Conversations between a user and an agent, and their messages.

A database trigger keeps each conversation's `message_count`, `last_message_at` and token
totals current as messages are inserted: assistant tokens count as output, all others
as input.
"""

import uuid
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, Relationship

from skill_store.models._types import (
    INPUT,
    INT4_MAX,
    CreatedAt,
    Identified,
    JSONObject,
    JSONValue,
    Model,
    PgStr,
    TeamRowId,
    Timestamps,
    metadata_field,
    team_foreign_key,
    team_primary_key,
    with_message,
)
from skill_store.models.enums import ConversationStatus, MessageRole, pg_enum

FeedbackRating = Literal["positive", "negative"]

MAX_MESSAGE_LENGTH = 1_000_000
"""Longest message content accepted, in characters: a long pasted document fits, a runaway
payload does not."""


# Shared properties
class ConversationBase(Model):
    team_id: uuid.UUID = Field(foreign_key="team.id", ondelete="CASCADE")
    agent_id: uuid.UUID
    user_id: uuid.UUID = Field(foreign_key="user.id")
    title: PgStr | None = Field(default=None, max_length=500, sa_type=sa.Text)
    status: ConversationStatus = Field(
        default=ConversationStatus.ACTIVE,
        sa_type=pg_enum(ConversationStatus, "conversation_status"),
        sa_column_kwargs={"server_default": ConversationStatus.ACTIVE.value},
    )
    summary: PgStr | None = Field(default=None, sa_type=sa.Text)
    metadata_json: JSONObject = metadata_field(column=True)


# Database model
class Conversation(Timestamps, ConversationBase, TeamRowId, table=True):
    """A conversation of a user with an agent, inside one team."""

    __tablename__ = "conversation"
    __table_args__ = (
        team_primary_key("conversation"),
        with_message(
            team_foreign_key("fk_conversation_agent_team", "agent_id", "agent"),
            "agent {agent_id} is not an agent of team {team_id}, the team of the conversation",
        ),
        sa.Index("idx_conversation_team_user", "team_id", "user_id", "last_message_at"),
        sa.Index("idx_conversation_agent", "agent_id"),
    )

    message_count: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})
    total_input_tokens: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": sa.text("0")}
    )
    total_output_tokens: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": sa.text("0")}
    )
    token_count: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger,
            sa.Computed("total_input_tokens + total_output_tokens", persisted=True),
            nullable=False,
        ),
    )
    last_message_at: datetime | None = Field(
        default=None, nullable=False, sa_column_kwargs={"server_default": sa.func.now()}
    )

    messages: list["Message"] = Relationship(back_populates="conversation")


# Properties to receive on creation
class ConversationCreate(ConversationBase):
    model_config = INPUT


# Properties to return, in the table's order
class ConversationRead(ConversationBase, Identified):
    created_at: datetime
    updated_at: datetime
    message_count: int
    total_input_tokens: int
    total_output_tokens: int
    token_count: int
    last_message_at: datetime


# Properties to receive on update, all optional
class ConversationUpdate(Model):
    model_config = INPUT
    title: PgStr | None = Field(default=None, max_length=500)
    status: ConversationStatus | None = None
    summary: PgStr | None = None
    metadata_json: JSONObject | None = metadata_field(column=False)


# Shared properties
class MessageBase(Model):
    agent_id: uuid.UUID | None = None
    role: MessageRole = Field(sa_type=pg_enum(MessageRole, "message_role"))
    content: PgStr = Field(max_length=MAX_MESSAGE_LENGTH, sa_type=sa.Text)
    tool_calls: JSONValue | None = Field(default=None, sa_type=JSONB)
    tool_results: JSONValue | None = Field(default=None, sa_type=JSONB)
    token_count: int | None = Field(default=None, ge=0, le=INT4_MAX)
    model: PgStr | None = Field(default=None, max_length=200, sa_type=sa.Text)
    feedback_rating: FeedbackRating | None = Field(default=None, sa_type=sa.Text)
    feedback_comment: PgStr | None = Field(default=None, sa_type=sa.Text)


# Database model
class Message(CreatedAt, MessageBase, TeamRowId, table=True):
    """One message of a conversation, in the conversation's team."""

    __tablename__ = "message"
    __table_args__ = (
        team_primary_key("message"),
        with_message(
            team_foreign_key(
                "fk_message_conversation_team", "conversation_id", "conversation", "CASCADE"
            ),
            "conversation {conversation_id} is not a conversation of team {team_id}",
        ),
        with_message(
            team_foreign_key("fk_message_agent_team", "agent_id", "agent", "SET NULL (agent_id)"),
            "agent {agent_id} is not an agent of team {team_id},"
            " the team of the message's conversation",
        ),
        sa.CheckConstraint(
            "feedback_rating IN ('positive', 'negative') OR feedback_rating IS NULL",
            name="ck_message_feedback_rating",
        ),
        sa.Index("idx_message_conversation", "conversation_id", "created_at"),
    )

    team_id: uuid.UUID
    conversation_id: uuid.UUID
    # The clock, not the transaction start, so messages written together keep their order.
    created_at: datetime | None = Field(
        default=None, nullable=False, sa_column_kwargs={"server_default": sa.func.clock_timestamp()}
    )

    conversation: Conversation = Relationship(back_populates="messages")


# Properties to receive on creation (the caller names the conversation and its team)
class MessageCreate(MessageBase):
    model_config = INPUT


# Properties to return, in the table's order
class MessageRead(MessageBase, Identified):
    created_at: datetime
    team_id: uuid.UUID
    conversation_id: uuid.UUID


# Properties to receive on update: feedback only, messages are otherwise immutable
class MessageUpdate(Model):
    model_config = INPUT
    feedback_rating: FeedbackRating | None = None
    feedback_comment: PgStr | None = None
