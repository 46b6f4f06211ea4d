"""Behaviour that needs committed data: concurrent writers and filtered vector search at scale.

These tests commit, so they run in a database of their own.
"""

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
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
    get_engine,
    get_session_factory,
    migrate,
)
from skill_store.repositories import memory as memory_module
from skill_store.settings import get_settings

from .conftest import create_database, drop_database

DIMENSIONS = get_settings().embedding_dimensions
OTHER_TEAMS_MEMORIES = 5_000


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
    url = await create_database(server_url, "skill_store_committed")
    engine = await get_engine(url)
    await migrate(engine)
    yield engine
    await engine.dispose()
    await drop_database(server_url, "skill_store_committed")


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


def random_vector(rng: random.Random) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(DIMENSIONS)]


def near(vector: list[float], rng: random.Random, noise: float) -> list[float]:
    return [value + rng.uniform(-noise, noise) for value in vector]


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
        "INSERT INTO message (conversation_id, role, content, token_count)"
        " SELECT id, 'user', 'hello', 3 FROM unnest(CAST(:ids AS uuid[])) AS id"
    )

    async def write(writer: int) -> None:
        rng = random.Random(writer)
        async with world.factory() as session:
            for _ in range(MESSAGES_PER_WRITER // MESSAGES_PER_STATEMENT):
                await session.exec(
                    insert, params={"ids": rng.choices(ids, k=MESSAGES_PER_STATEMENT)}
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
        old = await MemoryRepository(session).get_or_raise(memory.id)
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
            await MemoryRepository(session).relate(first, second)
            await session.commit()

    await asyncio.gather(*(link(writer) for writer in range(WRITERS)))
    async with world.factory() as session:
        linked = await MemoryRepository(session).get_or_raise(a.id)
    assert linked.related_to == [b.id]


async def test_concurrent_access_updates_are_exact(world: World) -> None:
    async with world.factory() as session:
        memory = await MemoryRepository(session).create(
            MemoryCreate(team_id=world.team_id, memory_type=MemoryType.SEMANTIC, content="Tea")
        )
        await session.commit()

    async def touch() -> None:
        async with world.factory() as session:
            assert await MemoryRepository(session).update_access([memory.id]) == 1
            await session.commit()

    await asyncio.gather(*(touch() for _ in range(50)))
    async with world.factory() as session:
        reloaded = await MemoryRepository(session).get_or_raise(memory.id)
    assert reloaded.access_count == 50


@pytest.fixture(scope="module")
async def crowded(world: World) -> tuple[list[float], list[uuid.UUID]]:
    """A query, and a cluster around it: five memories of the small team among 5,000 of another.

    Almost every near neighbour of the query belongs to the other team, so an index scan that
    stopped after `ef_search` candidates would find few or none of the small team's memories.
    """
    rng = random.Random(7)
    query = random_vector(rng)
    async with world.factory() as session:
        memories = MemoryRepository(session)
        own = [
            await memories.create(
                MemoryCreate(
                    team_id=world.team_id,
                    memory_type=MemoryType.SEMANTIC,
                    content=f"own {index}",
                    embedding=near(query, rng, noise=0.3),
                )
            )
            for index in range(5)
        ]
        rows = [
            {
                "team_id": world.other_team_id,
                "content": f"other {index}",
                "embedding": near(query, rng, noise=0.3),
            }
            for index in range(OTHER_TEAMS_MEMORIES)
        ]
        await session.exec(
            text(
                "INSERT INTO memory (team_id, memory_type, content, embedding)"
                " VALUES (:team_id, 'semantic', :content, CAST(:embedding AS vector))"
            ),
            params=rows,
        )
        await session.commit()
        await session.exec(text("ANALYZE memory"))
        await session.commit()
    return query, [memory.id for memory in own]


async def exact_order(session: AsyncSession, query: list[float], team_id: uuid.UUID) -> list[Any]:
    """The team's memory ids by a sequential scan, the ground truth."""
    await session.exec(text("SET LOCAL enable_indexscan = off"))
    await session.exec(text("SET LOCAL enable_bitmapscan = off"))
    result = await session.exec(
        text(
            "SELECT id FROM memory WHERE team_id = :team_id AND embedding IS NOT NULL"
            " ORDER BY embedding <=> CAST(:query AS vector)"
        ),
        params={"team_id": team_id, "query": query},
    )
    return [row[0] for row in result.all()]


def plan_uses_hnsw(plan: list[Any]) -> bool:
    return "idx_memory_embedding" in "\n".join(str(line[0]) for line in plan)


async def explain(session: AsyncSession, statement: Any) -> list[Any]:
    compiled = statement.compile(
        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
    )
    return list((await session.exec(text(f"EXPLAIN {compiled}"))).all())


@pytest.mark.parametrize("exact", [True, False], ids=["exact-scan", "hnsw-iterative-scan"])
async def test_filtered_search_finds_all_of_a_small_team_in_exact_order(
    world: World,
    crowded: tuple[list[float], list[uuid.UUID]],
    monkeypatch: pytest.MonkeyPatch,
    exact: bool,
) -> None:
    query, own_ids = crowded
    async with world.factory() as session:
        expected = await exact_order(session, query, world.team_id)
    async with world.factory() as session:
        if not exact:
            # Make a five-memory team take the HNSW path, and check the search still finds all.
            monkeypatch.setattr(memory_module, "EXACT_SEARCH_MAX_ROWS", 0)
        repository = MemoryRepository(session)
        hits = await repository.search_by_embedding(query, world.team_id, limit=10)
        conditions = repository._retrievable(world.team_id, None, None, None)
        if not exact:
            # The search turns sorting off while it runs, so the planner reads the index.
            await session.exec(text("SET LOCAL enable_sort = off"))
        plan = await explain(
            session, repository._search_statement(query, conditions, 10, None, exact)
        )
    assert plan_uses_hnsw(plan) is not exact
    assert [hit.id for hit in hits] == expected
    assert sorted(expected) == sorted(own_ids)
    similarities = [hit.similarity for hit in hits]
    assert similarities == sorted(similarities, reverse=True)


@pytest.mark.parametrize("exact", [True, False], ids=["exact-scan", "hnsw-iterative-scan"])
async def test_search_statement_shape(
    world: World, crowded: tuple[list[float], list[uuid.UUID]], exact: bool
) -> None:
    """The exact statement never touches the HNSW index; the other one uses it."""
    query, _ = crowded
    async with world.factory() as session:
        repository = MemoryRepository(session)
        conditions = repository._retrievable(world.other_team_id, None, None, None)
        statement = repository._search_statement(query, conditions, 10, None, exact)
        plan = await explain(session, statement)
    assert plan_uses_hnsw(plan) is not exact


async def test_unmet_min_similarity_returns_nothing_from_a_large_team(
    world: World, crowded: tuple[list[float], list[uuid.UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    query, _ = crowded
    monkeypatch.setattr(memory_module, "EXACT_SEARCH_MAX_ROWS", 0)
    opposite = [-value for value in query]
    async with world.factory() as session:
        hits = await MemoryRepository(session).search_by_embedding(
            opposite, world.other_team_id, min_similarity=0.99
        )
    assert hits == []


async def test_index_settings_last_only_for_the_search(
    world: World, crowded: tuple[list[float], list[uuid.UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    query, own_ids = crowded
    monkeypatch.setattr(memory_module, "EXACT_SEARCH_MAX_ROWS", 0)
    names = ("hnsw.ef_search", "hnsw.iterative_scan", "enable_sort")
    async with world.factory() as session:
        await session.exec(text("SET LOCAL hnsw.ef_search = 77"))

        hits = await MemoryRepository(session).search_by_embedding(query, world.team_id)

        after = [(await session.exec(text(f"SHOW {name}"))).one()[0] for name in names]
    assert sorted(hit.id for hit in hits) == sorted(own_ids)
    assert after == ["77", "off", "on"]


async def test_a_plan_made_for_any_team_still_reads_the_team_index(world: World) -> None:
    """Prepared statements may get one plan for every team; it must not scan the table."""
    async with world.factory() as session:
        repository = MemoryRepository(session)
        conditions = repository._retrievable(world.team_id, None, None, None)
        statement = select(Memory.id).where(*conditions).limit(501)
        connection = await session.connection()
        compiled = statement.compile(
            dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
        )
        parameters = compiled.construct_params()
        values = ", ".join(
            f"'{getattr(parameters[name], 'value', parameters[name])}'"
            for name in compiled.positiontup or ()
        )
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.execute(f"PREPARE candidates AS {compiled}")
        await driver.execute("SET plan_cache_mode = force_generic_plan")
        try:
            plan = [row[0] for row in await driver.fetch(f"EXPLAIN EXECUTE candidates({values})")]
        finally:
            await driver.execute("RESET plan_cache_mode; DEALLOCATE candidates")
    assert any("idx_memory_team_type" in line for line in plan), plan
