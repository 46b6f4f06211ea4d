"""Minimal valid inputs for each validated model, and a helper to assert a rejection."""

import uuid
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel, ValidationError

from skill_store import (
    AgentBoundaries,
    AgentCreate,
    AgentMemoryConfig,
    AgentModelConfig,
    AgentPersonality,
    AgentUpdate,
    ConversationCreate,
    ConversationUpdate,
    MemoryCreate,
    MemoryTagCreate,
    MemoryUpdate,
    MessageCreate,
    MessageUpdate,
    RetrievalWeights,
    TeamCreate,
    TeamMembershipCreate,
    TeamUpdate,
    UserCreate,
    UserUpdate,
    VoiceExample,
)

TEAM_ID = uuid.UUID(int=1)
USER_ID = uuid.UUID(int=2)
AGENT_ID = uuid.UUID(int=3)

M = TypeVar("M", bound=BaseModel)

PERSONALITY = {"system_prompt_template": "You are Kyra. {memory_context}"}

# The fewest fields each model needs to validate; tests add or override one field at a time.
MINIMAL: dict[type[BaseModel], dict[str, Any]] = {
    UserCreate: {"email": "ada@example.com", "display_name": "Ada", "password": "correct horse"},
    UserUpdate: {},
    TeamCreate: {"name": "Acme", "slug": "acme", "owner_id": USER_ID},
    TeamUpdate: {},
    TeamMembershipCreate: {"user_id": USER_ID, "team_id": TEAM_ID},
    AgentCreate: {"team_id": TEAM_ID, "name": "Kyra", "slug": "kyra", "personality": PERSONALITY},
    AgentUpdate: {},
    AgentPersonality: PERSONALITY,
    VoiceExample: {"user_message": "Hi!", "agent_response": "Hey there!"},
    AgentModelConfig: {},
    AgentMemoryConfig: {},
    RetrievalWeights: {},
    AgentBoundaries: {},
    ConversationCreate: {"team_id": TEAM_ID, "agent_id": AGENT_ID, "user_id": USER_ID},
    ConversationUpdate: {},
    MessageCreate: {"role": "user", "content": "Hello"},
    MessageUpdate: {},
    MemoryCreate: {"team_id": TEAM_ID, "memory_type": "semantic", "content": "Likes green tea"},
    MemoryUpdate: {},
    MemoryTagCreate: {"team_id": TEAM_ID, "memory_id": uuid.UUID(int=4), "tag": "drinks"},
}


def build(model: type[M], /, **fields: Any) -> M:
    """Validate the minimal input of `model` with `fields` added or overridden."""
    return model.model_validate({**MINIMAL[model], **fields})


def assert_rejected(model: type[BaseModel], loc: tuple[str | int, ...], /, **fields: Any) -> None:
    """Assert that `fields` make `model` fail validation with one error, located at `loc`."""
    with pytest.raises(ValidationError) as info:
        build(model, **fields)
    assert [error["loc"] for error in info.value.errors()] == [loc]
