"""Behaviour that needs committed data: concurrent writers.

These tests commit, so they run in a database of their own. Filtered vector search among
many memories of other teams is in test_team_search.py.
"""

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    ConflictError,
    ConversationCreate,
    ConversationRepository,
    Memory,
    MemoryCreate,
    MemoryRepository,
    MemoryStatus,
    MemoryType,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    get_session_factory,
)

from ..support import migrated_database


@dataclass
class World:
    factory: async_sessionmaker[AsyncSession]
    team_id: uuid.UUID
    other_team_id: uuid.UUID
    conversation_id: uuid.UUID
    agent_id: uuid.UUID
    user_id: uuid.UUID


@pytest.fixture(scope="module")
async def engine(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_database(server_url, "skill_store_committed") as engine:
        yield engine


@pytest.fixture(scope="module")
async def world(engine: AsyncEngine) -> World:
    factory = get_session_factory(engine)
    async with factory() as session:
        owner = await UserRepository(session).create(
            UserCreate(email="owner@example.com", display_name="Owner", password="correct horse")
        )
        teams = TeamRepository(session)
        team = await teams.create(TeamCreate(name="Small", slug="small", owner_id=owner.id))
        other = await teams.create(TeamCreate(name="Big", slug="big", owner_id=owner.id))
        agent = await AgentRepository(session).create(
            AgentCreate(
                team_id=team.id,
                name="Kyra",
                slug="kyra",
                personality=AgentPersonality(system_prompt_template="You are Kyra."),
            )
        )
        conversation = await ConversationRepository(session).create(
            ConversationCreate(team_id=team.id, agent_id=agent.id, user_id=owner.id)
        )
        await session.commit()
    return World(factory, team.id, other.id, conversation.id, agent.id, owner.id)


WRITERS = 8
MESSAGES_PER_WRITER = 500
MESSAGES_PER_STATEMENT = 10


async def test_concurrent_writers_count_every_message(world: World) -> None:
    """8 writers, 500 messages each, over 4 conversations; each statement spans all 4 at random.

    The stats trigger locks a statement's conversations in id order, so these overlapping
    statements cannot deadlock (in arbitrary order they do).
    """
    async with world.factory() as session:
        created = [
            await ConversationRepository(session).create(
                ConversationCreate(
                    team_id=world.team_id, agent_id=world.agent_id, user_id=world.user_id
                )
            )
            for _ in range(3)
        ]
        await session.commit()
    ids = [world.conversation_id, *(conversation.id for conversation in created)]
    before = await message_counts(world, ids)
    insert = text(
        "INSERT INTO message (team_id, conversation_id, role, content, token_count)"
        " SELECT :team, id, 'user', 'hello', 3 FROM unnest(CAST(:ids AS uuid[])) AS id"
    )

    async def write(writer: int) -> None:
        rng = random.Random(writer)
        async with world.factory() as session:
            for _ in range(MESSAGES_PER_WRITER // MESSAGES_PER_STATEMENT):
                await session.exec(
                    insert,
                    params={
                        "team": world.team_id,
                        "ids": rng.choices(ids, k=MESSAGES_PER_STATEMENT),
                    },
                )
                await session.commit()

    await asyncio.gather(*(write(writer) for writer in range(WRITERS)))
    after = await message_counts(world, ids)
    added = {
        id: [now - then for now, then in zip(after[id], before[id], strict=True)] for id in ids
    }
    assert sum(rows for _, _, rows in added.values()) == WRITERS * MESSAGES_PER_WRITER
    for counter, tokens, rows in added.values():
        assert (counter, tokens) == (rows, 3 * rows)


async def message_counts(
    world: World, ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, int, int]]:
    """Per conversation: its message counter, its input tokens, and its messages counted."""
    async with world.factory() as session:
        rows = (
            await session.exec(
                text(
                    "SELECT c.id, c.message_count, c.total_input_tokens,"
                    " (SELECT count(*) FROM message m WHERE m.conversation_id = c.id)"
                    " FROM conversation c WHERE c.id = ANY(CAST(:ids AS uuid[]))"
                ),
                params={"ids": ids},
            )
        ).all()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def test_concurrent_supersedes_of_one_memory_leave_one_winner(world: World) -> None:
    async with world.factory() as session:
        memory = await MemoryRepository(session).create(
            MemoryCreate(team_id=world.team_id, memory_type=MemoryType.SEMANTIC, content="v1")
        )
        await session.commit()

    async def supersede(writer: int) -> Memory:
        async with world.factory() as session:
            new = await MemoryRepository(session).supersede(
                memory.id,
                MemoryCreate(
                    team_id=world.team_id,
                    memory_type=MemoryType.SEMANTIC,
                    content=f"v2 by {writer}",
                ),
            )
            await session.commit()
            return new

    results = await asyncio.gather(
        *(supersede(writer) for writer in range(WRITERS)), return_exceptions=True
    )
    winners = [result for result in results if isinstance(result, Memory)]
    losers = [result for result in results if isinstance(result, ConflictError)]
    assert (len(winners), len(losers)) == (1, WRITERS - 1), results
    async with world.factory() as session:
        old = await MemoryRepository(session).get_or_raise(memory.id, team_id=world.team_id)
        versions = (
            await session.exec(select(Memory).where(col(Memory.content).startswith("v2 by ")))
        ).all()
    assert (old.status, old.superseded_by) == (MemoryStatus.SUPERSEDED, winners[0].id)
    assert [version.id for version in versions] == [winners[0].id]


async def test_concurrent_links_in_both_directions_do_not_deadlock(world: World) -> None:
    async with world.factory() as session:
        repository = MemoryRepository(session)
        a, b = [
            await repository.create(
                MemoryCreate(team_id=world.team_id, memory_type=MemoryType.SEMANTIC, content=name)
            )
            for name in ("link a", "link b")
        ]
        await session.commit()

    async def link(writer: int) -> None:
        first, second = (a.id, b.id) if writer % 2 else (b.id, a.id)
        async with world.factory() as session:
            await MemoryRepository(session).relate(first, second, team_id=world.team_id)
            await session.commit()

    await asyncio.gather(*(link(writer) for writer in range(WRITERS)))
    async with world.factory() as session:
        linked = await MemoryRepository(session).get_or_raise(a.id, team_id=world.team_id)
    assert linked.related_to == [b.id]


async def test_concurrent_access_updates_are_exact(world: World) -> None:
    async with world.factory() as session:
        memory = await MemoryRepository(session).create(
            MemoryCreate(team_id=world.team_id, memory_type=MemoryType.SEMANTIC, content="Tea")
        )
        await session.commit()

    async def touch() -> None:
        async with world.factory() as session:
            assert (
                await MemoryRepository(session).update_access([memory.id], team_id=world.team_id)
                == 1
            )
            await session.commit()

    await asyncio.gather(*(touch() for _ in range(50)))
    async with world.factory() as session:
        reloaded = await MemoryRepository(session).get_or_raise(memory.id, team_id=world.team_id)
    assert reloaded.access_count == 50
