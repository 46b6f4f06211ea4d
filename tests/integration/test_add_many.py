"""Bulk ingestion with `MemoryRepository.add_many` (PostgreSQL COPY) and file imports."""

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    ConflictError,
    HashingEmbedder,
    MemoryCreate,
    MemoryFileError,
    MemoryRepository,
    MemoryType,
    Team,
    User,
)
from skill_store.errors import EmbeddingDimensionError
from skill_store.portability import ImportCounts, import_memories
from skill_store.settings import get_settings

from ..support import unit_vector


def items(team_id: uuid.UUID, count: int, **fields: Any) -> Iterator[dict[str, Any]]:
    for number in range(count):
        yield {
            "team_id": team_id,
            "memory_type": MemoryType.SEMANTIC,
            "content": f"fact {number}",
            "embedding": unit_vector(number % 50, 100),
            "tags": [f"n{number}", "bulk"],
            **fields,
        }


async def rows(session: AsyncSession, sql: str, **params: Any) -> list[Any]:
    connection = await session.connection()
    return list((await connection.execute(text(sql), params)).all())


async def memory_count(session: AsyncSession) -> int:
    [row] = await rows(session, "SELECT count(*) FROM memory")
    return int(row[0])


async def log_count(session: AsyncSession) -> int:
    [row] = await rows(session, "SELECT count(*) FROM memory_log")
    return int(row[0])


async def tag_count(session: AsyncSession) -> int:
    [row] = await rows(session, "SELECT count(*) FROM memory_tag")
    return int(row[0])


async def test_add_many_inserts_memories_tags_and_audit_rows(
    session: AsyncSession, team: Team, agent: Agent, user: User
) -> None:
    expires = datetime.now(UTC) + timedelta(days=3)
    special = MemoryCreate(
        team_id=team.id,
        agent_id=agent.id,
        user_id=user.id,
        memory_type=MemoryType.AGENT_PRIVATE,
        content="Ada prefers tea",
        subject="Ada",
        embedding=unit_vector(7),
        importance=9,
        confidence=0.5,
        is_pinned=True,
        source_message_ids=[uuid.UUID(int=1)],
        extraction_model="small-model",
        metadata_json={"lang": "en", "scores": [1, 2.5]},
        expires_at=expires,
        tags=["  drinks ", "drinks", "ada"],
    )
    repository = MemoryRepository(session)

    added = await repository.add_many(
        [special, *items(team.id, 24)], actor="importer", reason="initial load"
    )

    assert added == 25
    assert await repository.count(team_id=team.id) == 25
    assert await memory_count(session) == 25
    [row] = await rows(
        session,
        "SELECT id, agent_id, user_id, memory_type::text, subject, importance, confidence,"
        " is_pinned, source_type::text, source_message_ids, extraction_model, metadata,"
        " tier::text, expires_at, status::text, version, access_count, created_at, updated_at,"
        " last_accessed_at FROM memory WHERE content = 'Ada prefers tea'",
    )
    assert row.agent_id == agent.id
    assert row.user_id == user.id
    assert row.memory_type == "agent_private"
    assert (row.subject, row.importance, row.confidence, row.is_pinned) == ("Ada", 9, 0.5, True)
    assert row.source_type == "extraction"
    assert row.source_message_ids == [uuid.UUID(int=1)]
    assert row.extraction_model == "small-model"
    assert row.metadata == {"lang": "en", "scores": [1, 2.5]}
    assert row.tier == "warm"
    assert row.expires_at == expires
    # Columns not copied take their server defaults.
    assert (row.status, row.version, row.access_count) == ("active", 1, 0)
    assert row.created_at is not None
    assert row.updated_at == row.created_at
    assert row.last_accessed_at is not None

    memory = await repository.get(row.id, team_id=team.id)
    assert memory.embedding == unit_vector(7)
    assert await repository.tags(row.id, team_id=team.id) == ["ada", "drinks"]
    [plain] = await rows(session, "SELECT id FROM memory WHERE content = 'fact 3'")
    assert await repository.tags(plain.id, team_id=team.id) == ["bulk", "n3"]
    assert await tag_count(session) == 2 + 24 * 2

    log = await rows(session, "SELECT memory_id, action, changed_by, reason FROM memory_log")
    assert len(log) == 25
    assert {entry.action for entry in log} == {"created"}
    assert {(entry.changed_by, entry.reason) for entry in log} == {("importer", "initial load")}
    history = await repository.history(row.id, team_id=team.id)
    assert [(entry.action, entry.new_content) for entry in history] == [
        ("created", "Ada prefers tea")
    ]

    hits = await repository.search_by_embedding(unit_vector(7), team_id=team.id, limit=1)
    assert [hit.content for hit in hits] == ["fact 7"]  # team-wide; the other is private
    hits = await repository.search_by_embedding(
        unit_vector(7), team_id=team.id, agent_id=agent.id, limit=1
    )
    assert [hit.id for hit in hits] == [row.id]

    # The attribution ends with the call.
    await repository.add_many(items(team.id, 1))
    later = await rows(session, "SELECT changed_by, reason FROM memory_log ORDER BY created_at")
    assert (later[-1].changed_by, later[-1].reason) == ("system", None)


async def test_every_item_is_validated_before_any_sql(session: AsyncSession, team: Team) -> None:
    data = list(items(team.id, 30))
    data[0]["team_id"] = uuid.uuid4()  # would fail in the database, were anything sent
    data[17]["content"] = ""
    data[23]["tags"] = ["ok", "x" * 101]
    repository = MemoryRepository(session)

    with pytest.raises(ValidationError) as raised:
        await repository.add_many(data, batch_size=5)

    locations = [problem["loc"] for problem in raised.value.errors()]
    assert locations == [(17, "content"), (23, "tags", 1)]
    assert "17.content" in str(raised.value)
    assert await memory_count(session) == 0
    assert await tag_count(session) == 0
    assert await log_count(session) == 0
    # The session is still usable.
    assert await repository.add_many(items(team.id, 3)) == 3
    assert await memory_count(session) == 3


async def test_wrong_dimension_raises_and_writes_nothing(
    session: AsyncSession, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The settings say 8 dimensions (they pass validation); the column has another length.
    column = get_settings().embedding_dimensions
    data = list(items(team.id, 5, embedding=None))
    data[3]["embedding"] = [1.0] + [0.0] * 7
    monkeypatch.setattr(get_settings(), "embedding_dimensions", 8)

    with pytest.raises(EmbeddingDimensionError) as raised:
        await MemoryRepository(session).add_many(data)

    assert (raised.value.expected, raised.value.got) == (column, 8)
    assert raised.value.__notes__ == ["item 3 of the items to add"]
    assert await memory_count(session) == 0
    assert await log_count(session) == 0


async def test_no_items_insert_nothing(session: AsyncSession, team: Team) -> None:
    repository = MemoryRepository(session)

    assert await repository.add_many([]) == 0
    assert await repository.add_many(iter(())) == 0

    assert await memory_count(session) == 0


async def test_batch_size_must_be_positive(session: AsyncSession, team: Team) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        await MemoryRepository(session).add_many(items(team.id, 2), batch_size=0)
    assert await memory_count(session) == 0


async def test_several_batches_form_one_transaction(
    session: AsyncSession, team: Team, agent: Agent
) -> None:
    repository = MemoryRepository(session)

    assert await repository.add_many(items(team.id, 30), batch_size=7) == 30

    assert await memory_count(session) == 30
    assert await tag_count(session) == 60
    assert await log_count(session) == 30
    contents = await rows(session, "SELECT content FROM memory ORDER BY content")
    assert sorted(row.content for row in contents) == sorted(f"fact {n}" for n in range(30))

    # A failure in the fifth batch takes the first four with it; earlier writes stay.
    data = list(items(team.id, 30))
    data[29]["agent_id"] = uuid.uuid4()
    with pytest.raises(ConflictError):
        await repository.add_many(data, batch_size=7)

    assert await memory_count(session) == 30
    assert await tag_count(session) == 60
    assert await log_count(session) == 30


async def test_unknown_team_is_a_conflict_and_keeps_the_session(
    session: AsyncSession, team: Team
) -> None:
    repository = MemoryRepository(session)
    kept = await repository.create(next(items(team.id, 1)))
    missing = uuid.uuid4()
    data = [*items(team.id, 4), *items(missing, 1)]

    with pytest.raises(ConflictError) as raised:
        await repository.add_many(data, actor="importer")

    assert raised.value.constraint == "fk_memory_team_id_team"
    assert str(raised.value) == f"team {missing} does not exist (referenced by memory.team_id)"
    assert isinstance(raised.value.__cause__, Exception)
    assert [row.id for row in await rows(session, "SELECT id FROM memory")] == [kept.id]
    assert await log_count(session) == 1
    assert await tag_count(session) == 2
    # The session is usable, and the failed call's attribution is gone.
    assert await repository.add_many(items(team.id, 2)) == 2
    log = await rows(session, "SELECT changed_by FROM memory_log")
    assert [entry.changed_by for entry in log] == ["system"] * 3


async def test_a_file_import_refused_in_a_later_batch_writes_nothing(
    session: AsyncSession, team: Team, tmp_path: Path
) -> None:
    lines = [{"memory_type": "semantic", "content": f"line {n}"} for n in range(3)]
    lines[2]["agent_id"] = str(uuid.uuid4())
    path = tmp_path / "memories.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    embedder = HashingEmbedder(get_settings().embedding_dimensions)

    with pytest.raises(MemoryFileError, match="line 3: agent_id names no agent of team acme"):
        await import_memories(session, path, team.id, embedder, batch_size=1)

    assert await memory_count(session) == 0
    assert await log_count(session) == 0
    # The session is still usable.
    lines[2].pop("agent_id")
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    counts = await import_memories(session, path, team.id, embedder, batch_size=1)
    assert counts == ImportCounts(added=3, embedded=3)
