"""Typed CRUD for every entity; the caller owns the transaction."""

from skill_store.repositories.agent import AgentRepository
from skill_store.repositories.base import Repository, TeamRowRepository
from skill_store.repositories.conversation import ConversationRepository
from skill_store.repositories.memory import MemoryRepository, TokenCounter, approximate_tokens
from skill_store.repositories.stats import StatsRepository
from skill_store.repositories.team import TeamRepository
from skill_store.repositories.user import UserRepository

__all__ = [
    "AgentRepository",
    "ConversationRepository",
    "MemoryRepository",
    "Repository",
    "StatsRepository",
    "TeamRepository",
    "TeamRowRepository",
    "TokenCounter",
    "UserRepository",
    "approximate_tokens",
]
