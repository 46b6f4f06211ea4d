"""Agents and their identity documents."""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col, func, select

from skill_store.errors import ConflictError
from skill_store.models import (
    Agent,
    AgentCreate,
    AgentDNA,
    AgentStatus,
    AgentUpdate,
    Conversation,
    Memory,
    Team,
)
from skill_store.models._types import PgStr
from skill_store.repositories.base import TeamRowRepository, translated_errors


class AgentRepository(TeamRowRepository[Agent, AgentCreate, AgentUpdate]):
    """Agents; their sub-configs load as the typed AgentDNA models."""

    model = Agent
    create_model = AgentCreate
    update_model = AgentUpdate

    async def get_by_slug(self, slug: PgStr, *, team_id: uuid.UUID) -> Agent | None:
        """The team's agent with this slug, or None."""
        statement = select(Agent).where(Agent.team_id == team_id, Agent.slug == slug)
        async with translated_errors():
            return (await self.session.exec(statement)).first()

    async def list_for_team(
        self, *, team_id: uuid.UUID, status: AgentStatus | None = None
    ) -> Sequence[Agent]:
        """The team's agents, optionally only those with `status`, by name."""
        statement = select(Agent).where(Agent.team_id == team_id)
        if status is not None:
            statement = statement.where(Agent.status == status)
        async with translated_errors():
            return (await self.session.exec(statement.order_by(col(Agent.name)))).all()

    async def delete(self, id: uuid.UUID, *, team_id: uuid.UUID, cascade: bool = False) -> bool:
        """Delete the team's agent; to keep its data, archive it instead (`set_status`).

        Args:
            id: The agent.
            team_id: Its team.
            cascade: Also delete the agent's memories (their history stays in `memory_log`)
                and its conversations with their messages. Without it, an agent that still
                has any is not deleted.

        Returns:
            Whether an agent was deleted.

        Raises:
            ConflictError: If the agent still has memories or conversations and `cascade` is
                false (the message counts them).
        """
        owned = [
            (table, col(table.team_id) == team_id, col(table.agent_id) == id)
            for table in (Memory, Conversation)
        ]
        async with self.writing():
            if cascade:
                for table, *conditions in owned:
                    await self.session.exec(sa.delete(table).where(*conditions))
            else:
                memories, conversations = [
                    (await self.session.exec(select(func.count()).where(*conditions))).one()
                    for _table, *conditions in owned
                ]
                if memories or conversations:
                    raise ConflictError(
                        f"agent {id} still has {memories} memories and {conversations}"
                        " conversations: archive the agent to keep them, or delete it with"
                        " cascade=True to delete them too",
                        "fk_memory_agent_team" if memories else "fk_conversation_agent_team",
                    )
            return await super().delete(id, team_id=team_id)

    async def set_status(
        self, agent_id: uuid.UUID, status: AgentStatus, *, team_id: uuid.UUID
    ) -> Agent:
        """Move the team's agent to `status`.

        Raises:
            NotFoundError: If the team has no such agent.
        """
        return await self.update(agent_id, {"status": status}, team_id=team_id)

    async def dna(self, agent_id: uuid.UUID, *, team_id: uuid.UUID) -> AgentDNA:
        """The identity document of the team's agent, its shared skills preceded by its team's.

        Raises:
            NotFoundError: If the team has no such agent.
        """
        agent = await self.get_or_raise(agent_id, team_id=team_id)
        async with translated_errors():
            team = await self.session.get_one(Team, agent.team_id)
        shared = list(dict.fromkeys([*team.shared_skill_names, *agent.shared_skill_names]))
        return AgentDNA.model_validate(agent, update={"shared_skill_names": shared})
