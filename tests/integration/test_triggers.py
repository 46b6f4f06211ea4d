"""The database's own behaviour: triggers and functions, exercised through models and raw SQL."""

import uuid
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Conversation,
    ConversationCreate,
    Memory,
    MemoryCreate,
    MemoryLog,
    MemoryTier,
    MemoryType,
    Message,
    MessageCreate,
    MessageRole,
    Team,
)
from skill_store.settings import get_settings

from ..support import run, scalar, unit_vector

OLD = datetime(2000, 1, 1, tzinfo=UTC)


async def new_memory(
    session: AsyncSession, team: Team, content: str = "Ada likes tea.", **fields: Any
) -> Memory:
    memory = Memory.model_validate(
        MemoryCreate(team_id=team.id, memory_type=MemoryType.SEMANTIC, content=content, **fields)
    )
    session.add(memory)
    await session.flush()
    return memory


async def update_memory(session: AsyncSession, memory_id: uuid.UUID, assignments: str) -> None:
    await run(session, f"UPDATE memory SET {assignments} WHERE id = :id", id=memory_id)


async def log_rows(session: AsyncSession, memory_id: uuid.UUID) -> list[MemoryLog]:
    statement = (
        select(MemoryLog).where(MemoryLog.memory_id == memory_id).order_by(MemoryLog.created_at)
    )
    return list((await session.exec(statement)).all())


async def last_log(session: AsyncSession, memory_id: uuid.UUID) -> MemoryLog:
    return (await log_rows(session, memory_id))[-1]


async def act_as(session: AsyncSession, actor: str, reason: str = "") -> None:
    await run(
        session,
        "SELECT set_config('skill_store.actor', :actor, true),"
        " set_config('skill_store.reason', :reason, true)",
        actor=actor,
        reason=reason,
    )


async def now(session: AsyncSession) -> datetime:
    return await scalar(session, "SELECT now()")


# updated_at

BACKDATED_INSERTS = {
    "user": """INSERT INTO "user" (email, password_hash, display_name, updated_at)
               VALUES ('old@example.com', 'h', 'Old', :old) RETURNING id""",
    "team": """INSERT INTO team (name, slug, owner_id, updated_at)
               VALUES ('Old', 'old', :user_id, :old) RETURNING id""",
    "agent": """INSERT INTO agent (team_id, name, slug, updated_at)
                VALUES (:team_id, 'Old', 'old', :old) RETURNING id""",
    "conversation": """INSERT INTO conversation (team_id, agent_id, user_id, updated_at)
                       VALUES (:team_id, :agent_id, :user_id, :old) RETURNING id""",
    "memory": """INSERT INTO memory (team_id, memory_type, content, updated_at)
                 VALUES (:team_id, 'semantic', 'old', :old) RETURNING id""",
}


@pytest.mark.parametrize("table", BACKDATED_INSERTS)
async def test_update_sets_updated_at_to_now(
    session: AsyncSession, conversation: Conversation, table: str
) -> None:
    ids = {
        "user_id": conversation.user_id,
        "team_id": conversation.team_id,
        "agent_id": conversation.agent_id,
    }
    row_id = await scalar(session, BACKDATED_INSERTS[table], old=OLD, **ids)
    updated_at = f'SELECT updated_at FROM "{table}" WHERE id = :id'
    assert await scalar(session, updated_at, id=row_id) == OLD

    await run(session, f'UPDATE "{table}" SET created_at = created_at WHERE id = :id', id=row_id)
    assert await scalar(session, updated_at, id=row_id) == await now(session)

    # An explicit value does not win over the trigger.
    await run(session, f'UPDATE "{table}" SET updated_at = :old WHERE id = :id', id=row_id, old=OLD)
    assert await scalar(session, updated_at, id=row_id) == await now(session)


# Conversation statistics


async def stats(session: AsyncSession, conversation_id: uuid.UUID) -> tuple[int, int, int, int]:
    row = (
        await run(
            session,
            "SELECT message_count, total_input_tokens, total_output_tokens, token_count"
            " FROM conversation WHERE id = :id",
            id=conversation_id,
        )
    ).one()
    return (row[0], row[1], row[2], row[3])


def message(conversation: Conversation, role: MessageRole, token_count: int | None) -> Message:
    return Message.model_validate(
        MessageCreate(role=role, content=f"{role} says hi", token_count=token_count),
        update={"team_id": conversation.team_id, "conversation_id": conversation.id},
    )


async def test_each_message_insert_updates_its_conversation(
    session: AsyncSession, conversation: Conversation
) -> None:
    await run(session, "UPDATE conversation SET last_message_at = :old", old=OLD)
    expected = [
        (MessageRole.USER, 10, (1, 10, 0, 10)),
        (MessageRole.ASSISTANT, 25, (2, 10, 25, 35)),
        (MessageRole.SYSTEM, 3, (3, 13, 25, 38)),
        (MessageRole.TOOL, None, (4, 13, 25, 38)),
        (MessageRole.TOOL, 4, (5, 17, 25, 42)),
        (MessageRole.ASSISTANT, None, (6, 17, 25, 42)),
    ]
    for role, token_count, totals in expected:
        session.add(message(conversation, role, token_count))
        await session.flush()
        assert await stats(session, conversation.id) == totals, (role, token_count)
    last_message_at = "SELECT last_message_at FROM conversation WHERE id = :id"
    latest = "SELECT max(created_at) FROM message WHERE conversation_id = :id"
    assert await scalar(session, last_message_at, id=conversation.id) == await scalar(
        session, latest, id=conversation.id
    )


async def test_last_message_at_never_moves_back(
    session: AsyncSession, conversation: Conversation
) -> None:
    insert = """INSERT INTO message (team_id, conversation_id, role, content, created_at)
                VALUES (:team, :id, 'user', 'hi', :at)"""
    last_message_at = "SELECT last_message_at FROM conversation WHERE id = :id"
    await run(session, "UPDATE conversation SET last_message_at = :old", old=OLD)

    team = conversation.team_id
    await run(session, insert, team=team, id=conversation.id, at=datetime(1999, 1, 1, tzinfo=UTC))
    assert await scalar(session, last_message_at, id=conversation.id) == OLD

    later = datetime(2001, 6, 1, tzinfo=UTC)
    await run(session, insert, team=team, id=conversation.id, at=later)
    assert await scalar(session, last_message_at, id=conversation.id) == later
    assert (await stats(session, conversation.id))[0] == 2


async def test_one_statement_inserting_into_two_conversations(
    session: AsyncSession, conversation: Conversation
) -> None:
    other = Conversation.model_validate(
        ConversationCreate(
            team_id=conversation.team_id,
            agent_id=conversation.agent_id,
            user_id=conversation.user_id,
        )
    )
    session.add(other)
    await session.flush()
    await run(
        session,
        """INSERT INTO message (team_id, conversation_id, role, content, token_count) VALUES
           (:t, :a, 'user', 'q', 3), (:t, :b, 'user', 'q', NULL), (:t, :a, 'assistant', 'r', 7),
           (:t, :a, 'tool', 't', 2), (:t, :b, 'assistant', 'r', 11),
           (:t, :a, 'assistant', 'r', NULL)""",
        t=conversation.team_id,
        a=conversation.id,
        b=other.id,
    )
    assert await stats(session, conversation.id) == (4, 5, 7, 12)
    assert await stats(session, other.id) == (2, 0, 11, 11)

    # The ORM's batched INSERT of several messages counts the same way.
    session.add_all(
        [
            message(other, MessageRole.USER, 1),
            message(conversation, MessageRole.ASSISTANT, 100),
            message(other, MessageRole.ASSISTANT, 20),
        ]
    )
    await session.flush()
    assert await stats(session, conversation.id) == (5, 5, 107, 112)
    assert await stats(session, other.id) == (4, 1, 31, 32)


# memory_log: what each change writes


async def test_insert_is_logged_as_created(
    session: AsyncSession, team: Team, conversation: Conversation
) -> None:
    memory = await new_memory(
        session, team, importance=7, tier=MemoryTier.HOT, source_conversation_id=conversation.id
    )
    [log] = await log_rows(session, memory.id)
    assert log.action == "created"
    assert (log.old_content, log.old_importance, log.old_tier, log.old_status) == (
        None,
        None,
        None,
        None,
    )
    assert (log.new_content, log.new_importance, log.new_tier, log.new_status) == (
        "Ada likes tea.",
        7,
        "hot",
        "active",
    )
    assert (log.changed_by, log.reason) == ("system", None)
    assert log.conversation_id == conversation.id
    assert log.related_memory_ids is None
    # The time of the change, not of its transaction's start.
    assert await now(session) < log.created_at < await scalar(session, "SELECT clock_timestamp()")


async def test_actor_and_reason_come_from_transaction_settings(
    session: AsyncSession, team: Team
) -> None:
    await act_as(session, "alice", "user asked")
    memory = await new_memory(session, team)
    await update_memory(session, memory.id, "importance = 9")
    await act_as(session, "bob")
    await update_memory(session, memory.id, "importance = 8")
    await act_as(session, "")  # empty means unset
    await update_memory(session, memory.id, "importance = 7")
    logs = await log_rows(session, memory.id)
    assert [(log.changed_by, log.reason) for log in logs] == [
        ("alice", "user asked"),
        ("alice", "user asked"),
        ("bob", None),
        ("system", None),
    ]


async def test_update_is_logged_with_old_and_new_values(
    session: AsyncSession, team: Team, conversation: Conversation
) -> None:
    memory = await new_memory(session, team, source_conversation_id=conversation.id)
    memory.content = "Ada likes green tea."
    memory.importance = 6
    await session.flush()
    log = await last_log(session, memory.id)
    assert log.action == "updated"
    assert (log.old_content, log.new_content) == ("Ada likes tea.", "Ada likes green tea.")
    assert (log.old_importance, log.new_importance) == (5, 6)
    assert (log.old_tier, log.new_tier, log.old_status, log.new_status) == (
        "warm",
        "warm",
        "active",
        "active",
    )
    assert log.conversation_id == conversation.id
    assert log.related_memory_ids is None


async def test_update_of_an_unaudited_column_is_logged_too(
    session: AsyncSession, team: Team
) -> None:
    memory = await new_memory(session, team)
    await update_memory(session, memory.id, "subject = 'Ada'")
    log = await last_log(session, memory.id)
    assert (log.action, log.old_content, log.new_content) == (
        "updated",
        "Ada likes tea.",
        "Ada likes tea.",
    )


async def test_delete_is_logged_with_old_values(session: AsyncSession, team: Team) -> None:
    memory = await new_memory(session, team, importance=4, tier=MemoryTier.COLD)
    await act_as(session, "janitor", "expired")
    await run(session, "DELETE FROM memory WHERE id = :id", id=memory.id)
    logs = await log_rows(session, memory.id)
    assert [log.action for log in logs] == ["created", "deleted"]
    deleted = logs[-1]
    assert (deleted.old_content, deleted.old_importance, deleted.old_tier, deleted.old_status) == (
        "Ada likes tea.",
        4,
        "cold",
        "active",
    )
    assert (deleted.new_content, deleted.new_importance, deleted.new_tier, deleted.new_status) == (
        None,
        None,
        None,
        None,
    )
    assert (deleted.changed_by, deleted.reason) == ("janitor", "expired")


async def test_delete_log_keeps_the_source_conversation(
    session: AsyncSession, team: Team, conversation: Conversation
) -> None:
    memory = await new_memory(session, team, source_conversation_id=conversation.id)
    await run(session, "DELETE FROM memory WHERE id = :id", id=memory.id)
    assert (await last_log(session, memory.id)).conversation_id == conversation.id


@pytest.mark.parametrize(
    ("before", "after", "action"),
    [
        ("warm", "hot", "promoted"),
        ("cold", "warm", "promoted"),
        ("cold", "hot", "promoted"),
        ("hot", "warm", "demoted"),
        ("warm", "cold", "demoted"),
        ("hot", "cold", "demoted"),
    ],
)
async def test_tier_moves_are_promotions_and_demotions(
    session: AsyncSession, team: Team, before: str, after: str, action: str
) -> None:
    memory = await new_memory(session, team, tier=MemoryTier(before))
    await update_memory(session, memory.id, f"tier = '{after}'")
    log = await last_log(session, memory.id)
    assert (log.action, log.old_tier, log.new_tier) == (action, before, after)


@pytest.mark.parametrize("status", ["superseded", "archived", "disputed"])
async def test_leaving_active_is_logged_as_the_new_status(
    session: AsyncSession, team: Team, status: str
) -> None:
    memory = await new_memory(session, team)
    # The status wins over a tier move in the same update.
    await update_memory(session, memory.id, f"status = '{status}', tier = 'cold'")
    log = await last_log(session, memory.id)
    assert (log.action, log.old_status, log.new_status) == (status, "active", status)
    assert (log.old_tier, log.new_tier) == ("warm", "cold")

    await update_memory(session, memory.id, "status = 'active'")
    log = await last_log(session, memory.id)
    assert (log.action, log.old_status, log.new_status) == ("updated", status, "active")


async def test_superseding_records_the_successor(session: AsyncSession, team: Team) -> None:
    old = await new_memory(session, team, "Ada likes tea.")
    new = await new_memory(session, team, "Ada likes coffee now.")
    await run(
        session,
        "UPDATE memory SET status = 'superseded', superseded_by = :new WHERE id = :old",
        old=old.id,
        new=new.id,
    )
    log = await last_log(session, old.id)
    assert log.action == "superseded"
    assert log.related_memory_ids == [new.id]

    await update_memory(session, old.id, "importance = 2")
    log = await last_log(session, old.id)
    assert (log.action, log.related_memory_ids) == ("updated", None)


async def test_only_access_bookkeeping_is_not_logged(session: AsyncSession, team: Team) -> None:
    memory = await new_memory(session, team)
    for _ in range(2):
        touched = await scalar(
            session, "SELECT update_memory_access(ARRAY[:id]::uuid[])", id=memory.id
        )
        assert touched == 1
    await update_memory(session, memory.id, "access_count = 7, last_accessed_at = now()")
    assert [log.action for log in await log_rows(session, memory.id)] == ["created"]
    access_count = "SELECT access_count FROM memory WHERE id = :id"
    assert await scalar(session, access_count, id=memory.id) == 7

    await update_memory(session, memory.id, "access_count = access_count + 1, content = 'Tea!'")
    logs = await log_rows(session, memory.id)
    assert [log.action for log in logs] == ["created", "updated"]
    assert (logs[-1].old_content, logs[-1].new_content) == ("Ada likes tea.", "Tea!")


async def test_no_setting_turns_the_audit_off(session: AsyncSession, team: Team) -> None:
    memory = await new_memory(session, team)
    await run(session, "SELECT set_config('skill_store.recording_access', 'on', true)")
    await run(session, "SET LOCAL ROLE skill_store_team")
    await run(session, "SELECT set_config('skill_store.team_id', :t, true)", t=str(team.id))
    await update_memory(session, memory.id, "content = 'Ada likes nothing.'")
    await run(session, "RESET ROLE")
    logs = await log_rows(session, memory.id)
    assert [log.action for log in logs] == ["created", "updated"]
    assert logs[-1].new_content == "Ada likes nothing."


async def test_a_log_row_has_the_time_of_its_change_not_of_its_transaction(
    session: AsyncSession, team: Team
) -> None:
    memory = await new_memory(session, team, "before")
    await run(session, "SELECT pg_sleep(0.05)")
    between = await scalar(session, "SELECT clock_timestamp()")
    await run(session, "SELECT pg_sleep(0.05)")
    await update_memory(session, memory.id, "content = 'after'")
    content_at = "SELECT reconstruct_memory_at(:id, :at)"
    assert await scalar(session, content_at, id=memory.id, at=between) == "before"
    assert (await last_log(session, memory.id)).created_at > between


async def test_access_bump_with_a_successor_change_is_logged(
    session: AsyncSession, team: Team
) -> None:
    old = await new_memory(session, team, "Ada likes tea.")
    new = await new_memory(session, team, "Ada likes coffee now.")
    await run(
        session,
        "UPDATE memory SET access_count = access_count + 1, superseded_by = :new WHERE id = :old",
        old=old.id,
        new=new.id,
    )
    log = await last_log(session, old.id)
    assert (log.action, log.related_memory_ids) == ("updated", [new.id])


async def test_log_times_strictly_increase_within_one_transaction(
    session: AsyncSession, team: Team
) -> None:
    memory = await new_memory(session, team, "v1")
    for assignments in ("content = 'v2'", "importance = 9", "tier = 'hot'"):
        await update_memory(session, memory.id, assignments)
    await run(session, "DELETE FROM memory WHERE id = :id", id=memory.id)
    logs = await log_rows(session, memory.id)
    assert [log.action for log in logs] == ["created", "updated", "updated", "promoted", "deleted"]
    times = [log.created_at for log in logs]
    assert all(earlier < later for earlier, later in pairwise(times))
    assert times[0] > await now(session)


async def test_a_memory_recreated_after_its_deletion_logs_after_the_deletion(
    session: AsyncSession, team: Team
) -> None:
    memory = await new_memory(session, team, "v1")
    await update_memory(session, memory.id, "content = 'v2'")
    await run(session, "DELETE FROM memory WHERE id = :id", id=memory.id)
    await run(
        session,
        """INSERT INTO memory (id, team_id, memory_type, content)
           VALUES (:id, :team, 'semantic', 'v3')""",
        id=memory.id,
        team=team.id,
    )
    latest_log = await last_log(session, memory.id)
    assert (latest_log.action, latest_log.new_content) == ("created", "v3")
    assert len({log.created_at for log in await log_rows(session, memory.id)}) == 4
    latest = "SELECT reconstruct_memory_at(:id, now() + interval '1 hour')"
    assert await scalar(session, latest, id=memory.id) == "v3"


# memory_log: append-only


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("UPDATE memory_log SET reason = 'rewritten'", "UPDATE"),
        ("DELETE FROM memory_log", "DELETE"),
        ("TRUNCATE memory_log", "TRUNCATE"),
    ],
)
async def test_memory_log_is_append_only(
    session: AsyncSession, team: Team, statement: str, operation: str
) -> None:
    memory = await new_memory(session, team)
    with pytest.raises(DBAPIError, match=f"append-only: {operation} is not allowed"):
        async with session.begin_nested():
            await run(session, statement)
    [log] = await log_rows(session, memory.id)
    assert (log.action, log.reason) == ("created", None)


# update_memory_access


async def test_update_memory_access(session: AsyncSession, team: Team) -> None:
    a, b, _ = [await new_memory(session, team, content) for content in ("a", "b", "c")]
    await run(session, "UPDATE memory SET last_accessed_at = :old", old=OLD)

    async def touch(*ids: uuid.UUID) -> int:
        result: int = await scalar(
            session, "SELECT update_memory_access(CAST(:ids AS uuid[]))", ids=list(ids)
        )
        return result

    async def access() -> dict[str, tuple[int, bool]]:
        rows = await run(
            session, "SELECT content, access_count, last_accessed_at = now() FROM memory"
        )
        return {content: (count, fresh) for content, count, fresh in rows}

    assert await touch(a.id, a.id, b.id, uuid.uuid4()) == 2
    assert await access() == {"a": (1, True), "b": (1, True), "c": (0, False)}
    assert await touch(a.id) == 1
    assert await access() == {"a": (2, True), "b": (1, True), "c": (0, False)}
    assert await touch() == 0
    assert await touch(uuid.uuid4()) == 0
    assert await access() == {"a": (2, True), "b": (1, True), "c": (0, False)}


# reconstruct_memory_at


async def test_reconstruct_memory_at(session: AsyncSession, team: Team) -> None:
    memory = await new_memory(session, team, "v1")
    start = (await last_log(session, memory.id)).created_at

    async def content_at(moment: datetime) -> str | None:
        result: str | None = await scalar(
            session, "SELECT reconstruct_memory_at(:id, :at)", id=memory.id, at=moment
        )
        return result

    later = datetime(9999, 1, 1, tzinfo=UTC)
    assert await content_at(OLD) is None
    assert await content_at(start - timedelta(microseconds=1)) is None
    assert await content_at(start) == "v1"
    assert await content_at(later) == "v1"

    await update_memory(session, memory.id, "content = 'v2'")
    await update_memory(session, memory.id, "importance = 9")  # logs v2 again
    await update_memory(session, memory.id, "content = 'v3'")
    logs = await log_rows(session, memory.id)
    assert [await content_at(log.created_at) for log in logs] == ["v1", "v2", "v2", "v3"]
    assert await content_at(start) == "v1"
    assert await content_at(later) == "v3"

    await run(session, "DELETE FROM memory WHERE id = :id", id=memory.id)
    assert await content_at(later) is None
    assert await content_at(logs[-1].created_at) == "v3"
    assert await content_at(start) == "v1"
    unknown = "SELECT reconstruct_memory_at(:id, :at)"
    assert await scalar(session, unknown, id=uuid.uuid4(), at=later) is None


# search_memories


async def test_search_memories(session: AsyncSession, team: Team) -> None:
    same = [
        await new_memory(session, team, f"same {n}", embedding=unit_vector(0)) for n in range(5)
    ]
    near = await new_memory(session, team, "near", embedding=unit_vector(0, 1))
    far = await new_memory(session, team, "far", embedding=unit_vector(1))

    async def search(query: list[float] | None, **options: Any) -> list[tuple[uuid.UUID, float]]:
        arguments = {"limit": 10, "min_similarity": None, "exact_max_rows": 500, **options}
        rows = await run(
            session,
            "SELECT id, similarity FROM search_memories(CAST(:query AS vector), :team, NULL,"
            " NULL, NULL, :limit, :min_similarity, :exact_max_rows)",
            query=query,
            team=team.id,
            **arguments,
        )
        return [(id, round(similarity, 6)) for id, similarity in rows]

    ties = [(memory_id, 1.0) for memory_id in sorted(memory.id for memory in same)]
    ranked = [*ties, (near.id, round(2**-0.5, 6)), (far.id, 0.0)]
    assert await search(unit_vector(0)) == ranked
    assert await search(unit_vector(0), exact_max_rows=0) == ranked  # by the HNSW index
    assert await search(unit_vector(0), limit=6) == ranked[:6]
    assert await search(unit_vector(0), min_similarity=0.5) == ranked[:6]
    assert await search(unit_vector(0), min_similarity=0.5, exact_max_rows=0) == ranked[:6]
    assert await search(None) == []
    expected = get_settings().embedding_dimensions
    with pytest.raises(DBAPIError, match=f"embedding has 2 dimensions; expected {expected}"):
        async with session.begin_nested():
            await search([1.0, 0.0])
    assert await scalar(session, "SHOW enable_sort") == "on"
