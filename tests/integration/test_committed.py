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
from sqlalchemy import event, text
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
    MemorySearchResult,
    MemoryStatus,
    MemoryType,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    get_session_factory,
)
from skill_store.repositories import memory as memory_module
from skill_store.settings import get_settings

from .conftest import migrated_database

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


async def index_counters(session: AsyncSession) -> dict[str, tuple[int, int]]:
    """Per index of `memory`: scans, and entries they returned, counted by this backend.

    The counts are those not yet reported to the statistics system, which happens only
    between transactions: only differences within one transaction are meaningful.
    """
    rows = await session.exec(
        text(
            "SELECT indexrelid::regclass::text, pg_stat_get_xact_numscans(indexrelid),"
            " pg_stat_get_xact_tuples_returned(indexrelid)"
            " FROM pg_index WHERE indrelid = 'memory'::regclass"
        )
    )
    return {name: (int(scans), int(entries)) for name, scans, entries in rows.all()}


async def search_counting_index_use(
    session: AsyncSession, *args: Any, **options: Any
) -> tuple[list[MemorySearchResult], dict[str, tuple[int, int]]]:
    """A search, and the scans and entries returned of each index of `memory` during it."""
    before = await index_counters(session)
    hits = await MemoryRepository(session).search_by_embedding(*args, **options)
    after = await index_counters(session)
    used = {
        name: (scans - before[name][0], entries - before[name][1])
        for name, (scans, entries) in after.items()
    }
    return hits, used


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
        hits, used = await search_counting_index_use(session, query, world.team_id, limit=10)
    assert used["idx_memory_team_type"][0] > 0  # the candidates are counted through it
    assert (used["idx_memory_embedding"][0] > 0) is not exact
    assert [hit.id for hit in hits] == expected
    assert sorted(expected) == sorted(own_ids)
    similarities = [hit.similarity for hit in hits]
    assert similarities == sorted(similarities, reverse=True)


@pytest.mark.parametrize("plans", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("small", [True, False], ids=["small-team", "large-team"])
async def test_plans_for_any_team_read_the_right_index(
    world: World, crowded: tuple[list[float], list[uuid.UUID]], plans: str, small: bool
) -> None:
    """After five calls PostgreSQL may plan the function's queries once for every team."""
    query, own_ids = crowded
    team_id = world.team_id if small else world.other_team_id
    async with world.factory() as session:
        await session.exec(text(f"SET LOCAL plan_cache_mode = {plans}"))
        hits, used = await search_counting_index_use(session, query, team_id, limit=10)
    if small:
        assert used["idx_memory_team_type"][0] > 0
        assert used["idx_memory_embedding"][0] == 0
        assert sorted(hit.id for hit in hits) == sorted(own_ids)
    else:
        assert used["idx_memory_embedding"][0] > 0
        # Counting the candidates stopped at the bound, not after all 5,000 of the team.
        assert 0 < used["idx_memory_team_type"][1] <= memory_module.EXACT_SEARCH_MAX_ROWS + 1
        assert len(hits) == 10
        assert {hit.team_id for hit in hits} == {team_id}


@pytest.mark.parametrize("exact", [True, False], ids=["exact-scan", "hnsw-iterative-scan"])
async def test_a_search_is_one_statement(
    world: World,
    crowded: tuple[list[float], list[uuid.UUID]],
    monkeypatch: pytest.MonkeyPatch,
    exact: bool,
) -> None:
    query, own_ids = crowded
    if not exact:
        monkeypatch.setattr(memory_module, "EXACT_SEARCH_MAX_ROWS", 0)
    statements: list[str] = []
    async with world.factory() as session:
        connection = await session.connection()

        def record(*args: Any) -> None:
            statements.append(args[2])

        event.listen(connection.sync_connection, "before_cursor_execute", record)
        hits = await MemoryRepository(session).search_by_embedding(query, world.team_id)
        event.remove(connection.sync_connection, "before_cursor_execute", record)
    assert len(statements) == 1, statements
    assert sorted(hit.id for hit in hits) == sorted(own_ids)


async def test_min_similarity_cuts_the_same_hits_on_both_paths(
    world: World, crowded: tuple[list[float], list[uuid.UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    query, _ = crowded
    async with world.factory() as session:
        everything = await MemoryRepository(session).search_by_embedding(query, world.team_id)
    threshold = everything[2].similarity
    found = {}
    for exact in (True, False):
        monkeypatch.setattr(memory_module, "EXACT_SEARCH_MAX_ROWS", 500 if exact else 0)
        async with world.factory() as session:
            hits = await MemoryRepository(session).search_by_embedding(
                query, world.team_id, min_similarity=threshold
            )
        found[exact] = [hit.id for hit in hits]
    assert found[True] == found[False] == [hit.id for hit in everything[:3]]


async def test_unmet_min_similarity_stops_the_index_scan_at_once(
    world: World, crowded: tuple[list[float], list[uuid.UUID]]
) -> None:
    """Not a walk through the other team's 5,000 memories for nothing."""
    query, _ = crowded
    opposite = [-value for value in query]
    async with world.factory() as session:
        hits, used = await search_counting_index_use(
            session, opposite, world.other_team_id, limit=10, min_similarity=0.99
        )
    scans, entries = used["idx_memory_embedding"]
    assert hits == []
    assert scans == 1
    assert entries <= 100


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
