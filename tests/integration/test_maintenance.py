"""`maintain` and `skill-store maintain`: retention, expiry, indexes and statistics, once a run.

The tests commit, so they run in a database of their own (8 dimensions); each builds the
teams it needs and measures retention from a `now` of its own.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    ConversationCreate,
    ConversationRepository,
    MaintenanceReport,
    MemoryRepository,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    get_session_factory,
    maintain,
)
from skill_store.maintenance import MAINTAINER, RETENTION_REASON
from skill_store.team_indexes import EXACT_SEARCH_MAX_ROWS

from ..support import migrated_database
from .test_cli import skill_store

DIMENSIONS = 8
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
async def engine(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_database(server_url, "skill_store_maintenance", dimensions=DIMENSIONS) as e:
        yield e


@pytest.fixture(scope="module")
def factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return get_session_factory(engine)


async def rows(factory: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> list[Any]:
    async with factory() as session:
        result = await session.exec(text(sql), params=params)  # type: ignore[call-overload]
        return list(result.all())


async def team_with_agent(
    factory: async_sessionmaker[AsyncSession], retention_days: int
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A team keeping conversations `retention_days`, its owner and an agent."""
    async with factory() as session:
        slug = f"t-{uuid.uuid4().hex[:10]}"
        owner = await UserRepository(session).create(
            UserCreate(email=f"{slug}@example.com", display_name="Ops", password="correct horse")
        )
        team = await TeamRepository(session).create(
            TeamCreate(
                name=slug, slug=slug, owner_id=owner.id, conversation_retention_days=retention_days
            )
        )
        agent = await AgentRepository(session).create(
            AgentCreate(
                team_id=team.id,
                name="Kyra",
                slug="kyra",
                personality=AgentPersonality(system_prompt_template="{memory_context}"),
            )
        )
        await session.commit()
    return team.id, owner.id, agent.id


async def conversation(
    factory: async_sessionmaker[AsyncSession],
    team: tuple[uuid.UUID, uuid.UUID, uuid.UUID],
    idle_days: int,
    messages: int,
) -> uuid.UUID:
    """A conversation with `messages` messages, its last one `idle_days` before NOW."""
    team_id, user_id, agent_id = team
    async with factory() as session:
        conversations = ConversationRepository(session)
        created = await conversations.create(
            ConversationCreate(team_id=team_id, agent_id=agent_id, user_id=user_id, title="t")
        )
        for number in range(messages):
            await conversations.add_message(
                created.id, {"role": "user", "content": f"m{number}"}, team_id=team_id
            )
        await session.exec(  # type: ignore[call-overload]
            text("UPDATE conversation SET last_message_at = :at WHERE id = :id"),
            params={"at": NOW - timedelta(days=idle_days), "id": created.id},
        )
        await session.commit()
    return created.id


async def learnt_from(
    factory: async_sessionmaker[AsyncSession], team_id: uuid.UUID, conversation_id: uuid.UUID
) -> uuid.UUID:
    async with factory() as session:
        memory = await MemoryRepository(session).create(
            {
                "team_id": team_id,
                "memory_type": "episodic",
                "content": "Ada climbs",
                "source_conversation_id": conversation_id,
                "source_message_ids": [uuid.uuid4()],
            }
        )
        await session.commit()
    return memory.id


async def test_idle_conversations_go_with_their_messages_and_their_memories_stay(
    factory: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    brief = await team_with_agent(factory, retention_days=30)
    patient = await team_with_agent(factory, retention_days=90)
    idle = await conversation(factory, brief, idle_days=40, messages=3)
    empty = await conversation(factory, brief, idle_days=31, messages=0)
    recent = await conversation(factory, brief, idle_days=10, messages=2)
    kept_elsewhere = await conversation(factory, patient, idle_days=40, messages=1)
    memory = await learnt_from(factory, brief[0], idle)

    report = await maintain(engine, now=NOW)

    assert (report.ran, report.conversations_deleted, report.messages_deleted) == (True, 2, 3)
    assert report.memories_unlinked == 1
    remaining = await rows(factory, "SELECT id FROM conversation")
    assert {idle, empty} & {row[0] for row in remaining} == set()
    assert {recent, kept_elsewhere} <= {row[0] for row in remaining}
    assert await rows(
        factory, "SELECT count(*) FROM message WHERE conversation_id = :c", c=idle
    ) == [(0,)]
    [(source, messages)] = await rows(
        factory,
        "SELECT source_conversation_id, source_message_ids FROM memory WHERE id = :m",
        m=memory,
    )
    assert (source, messages) == (None, None)
    history = await rows(
        factory,
        "SELECT action, changed_by, reason FROM memory_log WHERE memory_id = :m"
        " ORDER BY created_at",
        m=memory,
    )
    assert history[-1] == ("updated", MAINTAINER, RETENTION_REASON)

    again = await maintain(engine, now=NOW)
    assert (again.conversations_deleted, again.messages_deleted) == (0, 0)


async def test_expired_memories_are_archived_as_expire_does(
    factory: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    team_id, _owner, _agent = await team_with_agent(factory, retention_days=30)
    async with factory() as session:
        memories = MemoryRepository(session)
        gone = await memories.create(
            {
                "team_id": team_id,
                "memory_type": "semantic",
                "content": "old",
                "expires_at": NOW + timedelta(days=1),
            }
        )
        kept = await memories.create(
            {
                "team_id": team_id,
                "memory_type": "semantic",
                "content": "new",
                "expires_at": NOW + timedelta(days=3),
            }
        )
        await session.commit()

    report = await maintain(engine, now=NOW + timedelta(days=2))

    assert report.memories_expired == 1
    statuses = await rows(
        factory, "SELECT id, status::text FROM memory WHERE id IN (:a, :b)", a=gone.id, b=kept.id
    )
    assert dict(statuses) == {gone.id: "archived", kept.id: "active"}
    [(changed_by,)] = await rows(
        factory,
        "SELECT changed_by FROM memory_log WHERE memory_id = :m AND action = 'archived'",
        m=gone.id,
    )
    assert changed_by == MAINTAINER


async def test_a_team_that_no_process_indexed_gets_its_index_and_fresh_statistics(
    factory: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    team_id, _owner, _agent = await team_with_agent(factory, retention_days=30)
    async with factory() as session:  # raw SQL: no process of the package wrote them
        await session.exec(  # type: ignore[call-overload]
            text(
                "INSERT INTO memory (team_id, memory_type, content, embedding)"
                " SELECT :t, 'semantic', 'raw ' || n,"
                " CAST(array_fill(1.0, ARRAY[CAST(:d AS integer)]) AS vector)"
                " FROM generate_series(1, :rows) AS n"
            ),
            params={"t": team_id, "d": DIMENSIONS, "rows": EXACT_SEARCH_MAX_ROWS + 50},
        )
        await session.commit()

    report = await maintain(engine, now=NOW)

    assert team_id in report.indexes_built
    [(rows_counted,)] = await rows(
        factory, "SELECT row_count FROM memory_team_index(:t)", t=team_id
    )
    assert rows_counted == EXACT_SEARCH_MAX_ROWS + 50
    [(analyzed,)] = await rows(
        factory, "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'memory'"
    )
    assert analyzed
    assert "memory" in report.tables_analyzed


async def test_two_runs_at_once_do_the_work_once(
    factory: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    brief = await team_with_agent(factory, retention_days=30)
    for _ in range(3):
        await conversation(factory, brief, idle_days=40, messages=1)

    reports = await asyncio.gather(maintain(engine, now=NOW), maintain(engine, now=NOW))

    assert sorted(report.ran for report in reports) == [False, True]
    assert sum(report.conversations_deleted for report in reports) == 3
    assert MaintenanceReport(ran=False) in reports


async def test_a_naive_moment_is_refused(engine: AsyncEngine) -> None:
    with pytest.raises(ValidationError, match="timezone"):
        await maintain(engine, now=datetime(2026, 1, 1))


async def test_the_command_reports_as_json(
    engine: AsyncEngine, tmp_path: Path, factory: async_sessionmaker[AsyncSession]
) -> None:
    brief = await team_with_agent(factory, retention_days=1)
    await conversation(factory, brief, idle_days=5, messages=1)  # by the database's clock
    url = engine.url.render_as_string(hide_password=False)

    result = await asyncio.to_thread(skill_store, tmp_path, "maintain", "--json", DATABASE_URL=url)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ran"] is True
    assert report["conversations_deleted"] >= 1
    assert set(report) >= {"memories_expired", "indexes_built", "tables_analyzed", "seconds"}
