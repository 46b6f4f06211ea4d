"""Counts over the store (StatsRepository, TeamRepository.with_counts) and listing newest first."""

import pytest
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentCreate,
    AgentRepository,
    MemoryCreate,
    MemoryRepository,
    MemoryType,
    NotFoundError,
    StatsRepository,
    Team,
    TeamRepository,
)
from skill_store.repositories.stats import MemoryGroup

from ..support import TABLES, unit_vector


async def remember(session: AsyncSession, team: Team, agent: Agent) -> None:
    await MemoryRepository(session).create(
        MemoryCreate(
            team_id=team.id,
            agent_id=agent.id,
            memory_type=MemoryType.SEMANTIC,
            content="Ada likes tea.",
            embedding=unit_vector(0),
        )
    )


async def test_rows_per_table_counts_every_table(
    session: AsyncSession, team: Team, agent: Agent
) -> None:
    stats = StatsRepository(session)
    before = await stats.rows_per_table()
    await remember(session, team, agent)
    after = await stats.rows_per_table()
    assert tuple(after) == TABLES
    changed = {table: after[table] - before[table] for table in TABLES}
    assert {table: n for table, n in changed.items() if n} == {"memory": 1, "memory_log": 1}


async def test_memory_groups_count_per_team_type_tier_and_status(
    session: AsyncSession, team: Team, agent: Agent
) -> None:
    await remember(session, team, agent)
    await remember(session, team, agent)
    memory = (await MemoryRepository(session).list(team_id=team.id))[0]
    groups = [
        group for group in await StatsRepository(session).memory_groups() if group.team == "acme"
    ]
    assert groups == [MemoryGroup("acme", MemoryType.SEMANTIC, memory.tier, memory.status, 2)]


async def test_index_sizes_name_the_indexes_largest_first(session: AsyncSession) -> None:
    sizes = await StatsRepository(session).index_sizes()
    assert sizes["uq_team_slug"] > 0
    assert list(sizes.values()) == sorted(sizes.values(), reverse=True)


async def test_teams_with_counts(session: AsyncSession, team: Team, agent: Agent) -> None:
    await remember(session, team, agent)
    counted = [c for c in await TeamRepository(session).with_counts() if c.team.id == team.id]
    assert [(c.team.slug, c.members, c.agents, c.memories) for c in counted] == [("acme", 1, 1, 1)]


async def test_get_by_slug_or_raise(session: AsyncSession, team: Team) -> None:
    teams = TeamRepository(session)
    assert await teams.get_by_slug_or_raise("acme") is team
    with pytest.raises(NotFoundError) as caught:
        await teams.get_by_slug_or_raise("nobody")
    assert str(caught.value) == "team 'nobody' does not exist"


async def test_list_newest_first(session: AsyncSession, team: Team, agent: Agent) -> None:
    agents = AgentRepository(session)
    await agents.create(
        AgentCreate(team_id=team.id, name="Zed", slug="zed", personality=agent.personality)
    )
    await session.exec(  # type: ignore[call-overload]
        text("UPDATE agent SET created_at = created_at - interval '1 day' WHERE id = :id"),
        params={"id": agent.id},
    )
    session.expunge_all()
    oldest_first = await agents.list(team_id=team.id)
    newest_first = await agents.list(team_id=team.id, newest_first=True)
    assert [a.slug for a in oldest_first] == ["kyra", "zed"]
    assert [a.slug for a in newest_first] == ["zed", "kyra"]
