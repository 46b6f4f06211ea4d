"""The eight enumerations, as Python `str` enums mirroring native PostgreSQL enum types.

Each member's value is the database label; `pg_enum` builds the column type that stores
values (not member names) under the type name the migration creates.
"""

from enum import StrEnum

import sqlalchemy as sa


class UserRole(StrEnum):
    """A member's role in a team (PostgreSQL type `user_role`)."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class AgentStatus(StrEnum):
    """Lifecycle of an agent (PostgreSQL type `agent_status`)."""

    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    ARCHIVED = "archived"


class ConversationStatus(StrEnum):
    """State of a conversation (PostgreSQL type `conversation_status`)."""

    ACTIVE = "active"
    IDLE = "idle"
    CLOSED = "closed"


class MessageRole(StrEnum):
    """Author of a message (PostgreSQL type `message_role`)."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class MemoryType(StrEnum):
    """Kind of a memory (PostgreSQL type `memory_type_enum`)."""

    SEMANTIC = "semantic"
    EPISODIC = "episodic"
    PROCEDURAL = "procedural"
    AGENT_PRIVATE = "agent_private"
    SHARED = "shared"
    IDENTITY = "identity"
    USER_PROFILE = "user_profile"


class MemoryStatus(StrEnum):
    """Lifecycle of a memory (PostgreSQL type `memory_status`)."""

    ACTIVE = "active"
    SUPERSEDED = "superseded"
    ARCHIVED = "archived"
    DISPUTED = "disputed"


class MemoryTier(StrEnum):
    """Storage temperature of a memory (PostgreSQL type `memory_tier`)."""

    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


class MemorySource(StrEnum):
    """How a memory came to be (PostgreSQL type `memory_source`)."""

    EXTRACTION = "extraction"
    EXPLICIT = "explicit"
    SYSTEM = "system"
    FEEDBACK = "feedback"
    CONSOLIDATION = "consolidation"
    COMPACTION = "compaction"


def pg_enum(enum_class: type[StrEnum], name: str) -> sa.Enum:
    """Column type for `enum_class`, stored by value in the native enum type `name`."""
    return sa.Enum(
        enum_class,
        name=name,
        values_callable=lambda members: [member.value for member in members],
    )
