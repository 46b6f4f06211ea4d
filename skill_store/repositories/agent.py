"""Agents and their identity documents."""

import uuid
from collections.abc import Sequence

from sqlmodel import col, select

from skill_store.models import Agent, AgentCreate, AgentDNA, AgentStatus, AgentUpdate, Team
from skill_store.models._types import check_text
from skill_store.repositories.base import TeamRowRepository, translated_errors


class AgentRepository(TeamRowRepository[Agent, AgentCreate, AgentUpdate]):
    """Agents; their sub-configs load as the typed AgentDNA models."""

    model = Agent
    create_model = AgentCreate
    update_model = AgentUpdate

    async def get_by_slug(self, team_id: uuid.UUID, slug: str) -> Agent | None:
        """The team's agent with this slug, or None."""
        statement = select(Agent).where(Agent.team_id == team_id, Agent.slug == check_text(slug))
        async with translated_errors():
            return (await self.session.exec(statement)).first()

    async def list_for_team(
        self, team_id: uuid.UUID, status: AgentStatus | None = None
    ) -> Sequence[Agent]:
        """The team's agents, optionally only those with `status`, by name."""
        statement = select(Agent).where(Agent.team_id == team_id)
        if status is not None:
            statement = statement.where(Agent.status == status)
        async with translated_errors():
            return (await self.session.exec(statement.order_by(col(Agent.name)))).all()

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
