"""Bad input through the repositories and raw SQL: each case raises the documented error and
leaves the database byte for byte as it was (row counts and a checksum of every table).

Table-driven cases first, then properties over generated input. The properties run many
examples in one test, each in a savepoint that is rolled back afterwards.
"""

import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    MAX_CONTENT_LENGTH,
    MAX_MESSAGE_LENGTH,
    Agent,
    AgentRepository,
    ConflictError,
    Conversation,
    ConversationRepository,
    EmbeddingDimensionError,
    MemoryRepository,
    MemoryType,
    NotFoundError,
    Team,
    TeamRepository,
    User,
    UserRepository,
    get_settings,
)

from ..support import fingerprint, unit_vector


async def assert_unchanged_after(
    session: AsyncSession,
    action: Callable[[], Awaitable[Any]],
    error: type[Exception],
) -> Exception:
    """`action` raises `error` and leaves every table as it was; return the error."""
    before = await fingerprint(session)
    with pytest.raises(error) as caught:
        await action()
    assert await fingerprint(session) == before
    return caught.value


@dataclass
class World:
    """Acme (Ada's team) and Globex (Grace's), each with an agent and a conversation."""

    session: AsyncSession
    ada: User
    acme: Team
    kyra: Agent
    chat: Conversation
    grace: User
    globex: Team
    zed: Agent
    globex_chat: Conversation
    memory_id: uuid.UUID
    missing: uuid.UUID


@pytest.fixture
async def world(
    session: AsyncSession, user: User, team: Team, agent: Agent, conversation: Conversation
) -> World:
    grace = await UserRepository(session).create(
        {"email": "grace@example.com", "display_name": "Grace", "password": "correct horse"}
    )
    globex = await TeamRepository(session).create(
        {"name": "Globex", "slug": "globex", "owner_id": grace.id}
    )
    zed = await AgentRepository(session).create(
        {
            "team_id": globex.id,
            "name": "Zed",
            "slug": "zed",
            "personality": {"system_prompt_template": ""},
        }
    )
    globex_chat = await ConversationRepository(session).create(
        {"team_id": globex.id, "agent_id": zed.id, "user_id": grace.id}
    )
    memory = await MemoryRepository(session).create(
        {"team_id": team.id, "memory_type": "semantic", "content": "Ada likes tea", "tags": ["tea"]}
    )
    return World(
        session=session,
        ada=user,
        acme=team,
        kyra=agent,
        chat=conversation,
        grace=grace,
        globex=globex,
        zed=zed,
        globex_chat=globex_chat,
        memory_id=memory.id,
        missing=uuid.uuid4(),
    )


def memory(w: World, **fields: Any) -> dict[str, Any]:
    return {"team_id": w.acme.id, "memory_type": "semantic", "content": "m", **fields}


# -- table-driven: what the models reject, through the repositories -----------------------

Action = Callable[[World], Awaitable[Any]]

VALIDATION_CASES: dict[str, tuple[Action, tuple[str | int, ...]]] = {
    "user-email-malformed": (
        lambda w: UserRepository(w.session).create(
            {"email": "ada(at)example.com", "display_name": "A", "password": "correct horse"}
        ),
        ("email",),
    ),
    "user-name-nul": (
        lambda w: UserRepository(w.session).create(
            {"email": "x@example.com", "display_name": "A\x00", "password": "correct horse"}
        ),
        ("display_name",),
    ),
    "user-password-short": (
        lambda w: UserRepository(w.session).set_password(w.ada.id, "short"),
        ("password",),
    ),
    "user-update-email-surrogate": (
        lambda w: UserRepository(w.session).update(w.ada.id, {"email": "a\ud800@example.com"}),
        ("email",),
    ),
    "team-slug-uppercase": (
        lambda w: TeamRepository(w.session).create(
            {"name": "X", "slug": "ACME", "owner_id": w.ada.id}
        ),
        ("slug",),
    ),
    "team-slug-trailing-hyphen": (
        lambda w: TeamRepository(w.session).update(w.acme.id, {"slug": "acme-"}),
        ("slug",),
    ),
    "team-settings-nul-key": (
        lambda w: TeamRepository(w.session).update(w.acme.id, {"settings": {"a\x00": 1}}),
        ("settings",),
    ),
    "team-retention-zero": (
        lambda w: TeamRepository(w.session).update(w.acme.id, {"conversation_retention_days": 0}),
        ("conversation_retention_days",),
    ),
    "membership-role-unknown": (
        lambda w: TeamRepository(w.session).add_member(
            w.grace.id, role="superuser", team_id=w.acme.id
        ),  # type: ignore[arg-type]
        ("role",),
    ),
    "agent-slug-with-space": (
        lambda w: AgentRepository(w.session).create(
            {
                "team_id": w.acme.id,
                "name": "X",
                "slug": "my agent",
                "personality": {"system_prompt_template": ""},
            }
        ),
        ("slug",),
    ),
    "agent-tone-unknown": (
        lambda w: AgentRepository(w.session).update(
            w.kyra.id,
            {"personality": {"system_prompt_template": "", "tone": "sarcastic"}},
            team_id=w.acme.id,
        ),
        ("personality", "tone"),
    ),
    "agent-status-unknown": (
        lambda w: AgentRepository(w.session).set_status(
            w.kyra.id,
            "retired",  # type: ignore[arg-type]
            team_id=w.acme.id,
        ),
        ("status",),
    ),
    "agent-temperature-high": (
        lambda w: AgentRepository(w.session).update(
            w.kyra.id, {"model": {"temperature": 2.5}}, team_id=w.acme.id
        ),
        ("model", "temperature"),
    ),
    "conversation-status-unknown": (
        lambda w: ConversationRepository(w.session).update(
            w.chat.id, {"status": "open"}, team_id=w.acme.id
        ),
        ("status",),
    ),
    "conversation-metadata-nan": (
        lambda w: ConversationRepository(w.session).create(
            {
                "team_id": w.acme.id,
                "agent_id": w.kyra.id,
                "user_id": w.ada.id,
                "metadata_json": {"x": math.nan},
            }
        ),
        ("metadata_json",),
    ),
    "message-role-unknown": (
        lambda w: ConversationRepository(w.session).add_message(
            w.chat.id, {"role": "robot", "content": "hi"}, team_id=w.acme.id
        ),
        ("role",),
    ),
    "message-tool-call-surrogate-key": (
        lambda w: ConversationRepository(w.session).add_message(
            w.chat.id,
            {"role": "assistant", "content": "", "tool_calls": [{"\udc00": 1}]},
            team_id=w.acme.id,
        ),
        ("tool_calls",),
    ),
    "message-tokens-negative": (
        lambda w: ConversationRepository(w.session).add_message(
            w.chat.id, {"role": "user", "content": "hi", "token_count": -1}, team_id=w.acme.id
        ),
        ("token_count",),
    ),
    "message-too-long": (
        lambda w: ConversationRepository(w.session).add_message(
            w.chat.id,
            {"role": "user", "content": "x" * (MAX_MESSAGE_LENGTH + 1)},
            team_id=w.acme.id,
        ),
        ("content",),
    ),
    "message-feedback-unknown": (
        lambda w: ConversationRepository(w.session).set_feedback(
            w.chat.id,
            "meh",  # type: ignore[arg-type]
            team_id=w.acme.id,
        ),
        ("feedback_rating",),
    ),
    "memory-empty": (
        lambda w: MemoryRepository(w.session).create(memory(w, content="")),
        ("content",),
    ),
    "memory-too-long": (
        lambda w: MemoryRepository(w.session).create(
            memory(w, content="x" * (MAX_CONTENT_LENGTH + 1))
        ),
        ("content",),
    ),
    "memory-importance-11": (
        lambda w: MemoryRepository(w.session).create(memory(w, importance=11)),
        ("importance",),
    ),
    "memory-confidence-nan": (
        lambda w: MemoryRepository(w.session).update(
            w.memory_id, {"confidence": math.nan}, team_id=w.acme.id
        ),
        ("confidence",),
    ),
    "memory-type-unknown": (
        lambda w: MemoryRepository(w.session).create(memory(w, memory_type="dream")),
        ("memory_type",),
    ),
    "memory-embedding-inf": (
        lambda w: MemoryRepository(w.session).create(
            memory(w, embedding=[math.inf, *unit_vector(1)[1:]])
        ),
        ("embedding", 0),
    ),
    "memory-embedding-short": (
        lambda w: MemoryRepository(w.session).update(
            w.memory_id, {"embedding": [1.0, 2.0]}, team_id=w.acme.id
        ),
        ("embedding",),
    ),
    "memory-metadata-surrogate": (
        lambda w: MemoryRepository(w.session).create(memory(w, metadata_json={"k": ["\ud83d"]})),
        ("metadata_json",),
    ),
    "memory-tag-nul": (
        lambda w: MemoryRepository(w.session).add_tags(
            w.memory_id, ["ok", "b\x00d"], team_id=w.acme.id
        ),
        (1,),
    ),
    "message-token-count-beyond-integer": (
        lambda w: ConversationRepository(w.session).add_message(
            w.chat.id, {"role": "user", "content": "hi", "token_count": 2**31}, team_id=w.acme.id
        ),
        ("token_count",),
    ),
    "team-retention-beyond-integer": (
        lambda w: TeamRepository(w.session).update(
            w.acme.id, {"conversation_retention_days": 2**31}
        ),
        ("conversation_retention_days",),
    ),
    "list-limit-beyond-bigint": (
        lambda w: MemoryRepository(w.session).list(limit=2**63, team_id=w.acme.id),
        ("limit",),
    ),
    "list-offset-beyond-bigint": (
        lambda w: UserRepository(w.session).list(offset=2**63),
        ("offset",),
    ),
    "search-limit-beyond-integer": (
        lambda w: MemoryRepository(w.session).search_by_embedding(
            unit_vector(0), team_id=w.acme.id, limit=2**31
        ),
        ("limit",),
    ),
    "memory-expires-before-year-1-in-utc": (
        lambda w: MemoryRepository(w.session).create(
            memory(w, expires_at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))))
        ),
        ("expires_at",),
    ),
    "memory-actor-nul": (
        lambda w: MemoryRepository(w.session).update(
            w.memory_id, {"importance": 3}, team_id=w.acme.id, actor="a\x00"
        ),
        ("actor",),
    ),
    "memory-reason-lone-surrogate": (
        lambda w: MemoryRepository(w.session).create(memory(w), reason="\ud800"),
        ("reason",),
    ),
    "memory-many-one-bad": (
        lambda w: MemoryRepository(w.session).add_many(
            [memory(w), memory(w, tier="lukewarm"), memory(w)]
        ),
        (1, "tier"),
    ),
}


async def test_a_naive_moment_filter_is_refused_and_the_transaction_stays_usable(
    world: World,
) -> None:
    memories = MemoryRepository(world.session)
    await assert_unchanged_after(
        world.session,
        lambda: memories.list(team_id=world.acme.id, created_at=datetime(2026, 1, 1)),
        ValidationError,
    )
    assert len(await memories.list(team_id=world.acme.id)) == 1


async def test_token_totals_go_past_the_integer_range(world: World) -> None:
    await world.session.exec(
        text("UPDATE conversation SET total_input_tokens = 2147483647 WHERE id = :c"),
        params={"c": world.chat.id},
    )
    await ConversationRepository(world.session).add_message(
        world.chat.id, {"role": "user", "content": "hi", "token_count": 10}, team_id=world.acme.id
    )
    totals = await world.session.exec(
        text("SELECT total_input_tokens, token_count FROM conversation WHERE id = :c"),
        params={"c": world.chat.id},
    )
    assert tuple(totals.one()) == (2**31 + 9, 2**31 + 9)


@pytest.mark.parametrize("case", VALIDATION_CASES)
async def test_invalid_input_is_a_validation_error_naming_the_field(
    world: World, case: str
) -> None:
    action, loc = VALIDATION_CASES[case]
    error = await assert_unchanged_after(world.session, lambda: action(world), ValidationError)
    assert isinstance(error, ValidationError)
    assert [detail["loc"] for detail in error.errors()] == [loc]


# -- table-driven: what the database rejects, through the repositories --------------------

# Each case: the write, and the ConflictError message it must give.
CONFLICT_CASES: dict[str, tuple[Action, Callable[[World], str]]] = {
    "user-email-duplicate-other-case": (
        lambda w: UserRepository(w.session).create(
            {"email": "ADA@EXAMPLE.com", "display_name": "A", "password": "correct horse"}
        ),
        lambda w: "a user with email ada@example.com already exists",
    ),
    "user-update-email-to-another-users": (
        lambda w: UserRepository(w.session).update(w.grace.id, {"email": "Ada@Example.com"}),
        lambda w: "a user with email ada@example.com already exists",
    ),
    "team-slug-duplicate": (
        lambda w: TeamRepository(w.session).create(
            {"name": "Acme 2", "slug": "acme", "owner_id": w.grace.id}
        ),
        lambda w: "a team with slug 'acme' already exists",
    ),
    "team-slug-taken-by-update": (
        lambda w: TeamRepository(w.session).update(w.globex.id, {"slug": "acme"}),
        lambda w: "a team with slug 'acme' already exists",
    ),
    "team-owner-missing": (
        lambda w: TeamRepository(w.session).create(
            {"name": "X", "slug": "x1", "owner_id": w.missing}
        ),
        lambda w: f"user {w.missing} does not exist (referenced by team.owner_id)",
    ),
    "membership-duplicate": (
        lambda w: TeamRepository(w.session).add_member(w.ada.id, team_id=w.acme.id),
        lambda w: f"user {w.ada.id} is already a member of team {w.acme.id}",
    ),
    "membership-user-missing": (
        lambda w: TeamRepository(w.session).add_member(w.missing, team_id=w.acme.id),
        lambda w: f"user {w.missing} does not exist (referenced by team_membership.user_id)",
    ),
    "agent-slug-duplicate-in-team": (
        lambda w: AgentRepository(w.session).create(
            {
                "team_id": w.acme.id,
                "name": "K",
                "slug": "kyra",
                "personality": {"system_prompt_template": ""},
            }
        ),
        lambda w: f"an agent with slug 'kyra' already exists in team {w.acme.id}",
    ),
    "agent-team-missing": (
        lambda w: AgentRepository(w.session).create(
            {
                "team_id": w.missing,
                "name": "K",
                "slug": "k2",
                "personality": {"system_prompt_template": ""},
            }
        ),
        lambda w: f"team {w.missing} does not exist (referenced by agent.team_id)",
    ),
    "conversation-agent-of-another-team": (
        lambda w: ConversationRepository(w.session).create(
            {"team_id": w.acme.id, "agent_id": w.zed.id, "user_id": w.ada.id}
        ),
        lambda w: (
            f"agent {w.zed.id} is not an agent of team {w.acme.id}, the team of the conversation"
        ),
    ),
    "conversation-user-not-a-member": (
        lambda w: ConversationRepository(w.session).create(
            {"team_id": w.acme.id, "agent_id": w.kyra.id, "user_id": w.grace.id}
        ),
        lambda w: (
            f"user {w.grace.id} is not a member of team {w.acme.id}, the team of conversation "
        ),
    ),
    "conversation-agent-missing": (
        lambda w: ConversationRepository(w.session).create(
            {"team_id": w.acme.id, "agent_id": w.missing, "user_id": w.ada.id}
        ),
        lambda w: (
            f"agent {w.missing} is not an agent of team {w.acme.id}, the team of the conversation"
        ),
    ),
    "message-agent-of-another-team": (
        lambda w: ConversationRepository(w.session).add_message(
            w.chat.id,
            {"role": "assistant", "content": "hi", "agent_id": w.zed.id},
            team_id=w.acme.id,
        ),
        lambda w: (
            f"agent {w.zed.id} is not an agent of team {w.acme.id}, the team of the message's"
            " conversation"
        ),
    ),
    "message-conversation-of-another-team": (
        lambda w: ConversationRepository(w.session).add_message(
            w.globex_chat.id, {"role": "user", "content": "hi"}, team_id=w.acme.id
        ),
        lambda w: f"conversation {w.globex_chat.id} is not a conversation of team {w.acme.id}",
    ),
    "message-conversation-missing": (
        lambda w: ConversationRepository(w.session).add_message(
            w.missing, {"role": "user", "content": "hi"}, team_id=w.acme.id
        ),
        lambda w: f"conversation {w.missing} is not a conversation of team {w.acme.id}",
    ),
    "memory-agent-of-another-team": (
        lambda w: MemoryRepository(w.session).create(memory(w, agent_id=w.zed.id)),
        lambda w: f"agent {w.zed.id} is not an agent of team {w.acme.id}, the team of the memory",
    ),
    "memory-source-conversation-of-another-team": (
        lambda w: MemoryRepository(w.session).create(
            memory(w, source_conversation_id=w.globex_chat.id, tags=["t"])
        ),
        lambda w: (
            f"conversation {w.globex_chat.id} is not a conversation of team {w.acme.id},"
            " the team of the memory"
        ),
    ),
    "memory-user-missing": (
        lambda w: MemoryRepository(w.session).create(memory(w, user_id=w.missing)),
        lambda w: f"user {w.missing} does not exist (referenced by memory.user_id)",
    ),
    "memory-many-agent-of-another-team": (
        lambda w: MemoryRepository(w.session).add_many(
            [memory(w, tags=["a"]), memory(w, agent_id=w.zed.id), memory(w)]
        ),
        lambda w: f"agent {w.zed.id} is not an agent of team {w.acme.id}, the team of the memory",
    ),
    "memory-many-team-missing": (
        lambda w: MemoryRepository(w.session).add_many([memory(w), memory(w, team_id=w.missing)]),
        lambda w: f"team {w.missing} does not exist (referenced by memory.team_id)",
    ),
}


@pytest.mark.parametrize("case", CONFLICT_CASES)
async def test_a_broken_database_rule_is_a_conflict_in_words(world: World, case: str) -> None:
    action, message = CONFLICT_CASES[case]
    error = await assert_unchanged_after(world.session, lambda: action(world), ConflictError)
    assert str(error).startswith(message(world))


async def test_an_embedding_longer_or_shorter_than_the_column_is_a_dimension_error(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The models check lengths against the settings, the repository against the column."""
    column = get_settings().embedding_dimensions
    memories = MemoryRepository(world.session)
    error = await assert_unchanged_after(
        world.session,
        lambda: memories.search_by_embedding([1.0, 0.0], team_id=world.acme.id),
        EmbeddingDimensionError,
    )
    assert (error.expected, error.got) == (column, 2)  # type: ignore[attr-defined]

    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "3")
    get_settings.cache_clear()
    try:
        writes = [
            lambda: memories.create(memory(world, embedding=[1.0, 0.0, 0.0])),
            lambda: memories.update(
                world.memory_id, {"embedding": [0.0, 1.0, 0.0]}, team_id=world.acme.id
            ),
            lambda: memories.add_many([memory(world), memory(world, embedding=[0.0, 0.0, 1.0])]),
            lambda: memories.remember("tea", MemoryType.SEMANTIC, team_id=world.acme.id),
        ]
        for write in writes:
            error = await assert_unchanged_after(world.session, write, EmbeddingDimensionError)
            assert (error.expected, error.got) == (column, 3)  # type: ignore[attr-defined]
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


async def test_writes_to_rows_that_do_not_exist_are_not_found(world: World) -> None:
    """Nor are rows of another team: each team's rows are keyed by the team."""
    acme = world.acme.id
    for action in (
        lambda: MemoryRepository(world.session).update(
            world.missing, {"importance": 3}, team_id=acme
        ),
        lambda: MemoryRepository(world.session).supersede(world.missing, memory(world), reason="x"),
        lambda: MemoryRepository(world.session).supersede(
            world.memory_id, memory(world, team_id=world.globex.id), reason="moved"
        ),
        lambda: AgentRepository(world.session).set_status(
            world.missing,
            "active",  # type: ignore[arg-type]
            team_id=acme,
        ),
        lambda: AgentRepository(world.session).set_status(
            world.zed.id,
            "active",  # type: ignore[arg-type]
            team_id=acme,
        ),
        lambda: ConversationRepository(world.session).close(world.missing, team_id=acme),
        lambda: ConversationRepository(world.session).close(world.globex_chat.id, team_id=acme),
        lambda: TeamRepository(world.session).set_role(
            world.grace.id, "admin", team_id=world.acme.id
        ),  # type: ignore[arg-type]
    ):
        await assert_unchanged_after(world.session, action, NotFoundError)


async def test_content_at_the_limit_is_stored_whole(world: World) -> None:
    content = "é" * (MAX_CONTENT_LENGTH - 1) + "𝄞"
    stored = await MemoryRepository(world.session).create(memory(world, content=content))
    message = "m" * MAX_MESSAGE_LENGTH
    said = await ConversationRepository(world.session).add_message(
        world.chat.id, {"role": "user", "content": message}, team_id=world.acme.id
    )
    lengths = await world.session.exec(  # type: ignore[call-overload]
        text(
            "SELECT (SELECT char_length(content) FROM memory WHERE id = :m),"
            " (SELECT char_length(content) FROM message WHERE id = :s)"
        ),
        params={"m": stored.id, "s": said.id},
    )
    assert tuple(lengths.one()) == (MAX_CONTENT_LENGTH, MAX_MESSAGE_LENGTH)


# -- table-driven: raw SQL, where the rule lives in the database ---------------------------

# Each case: the statement and its parameters, and the SQLSTATE and constraint it must raise.
RAW_CASES: dict[str, tuple[str, Callable[[World], dict[str, Any]], str, str | None]] = {
    "memory-agent-of-another-team": (
        "INSERT INTO memory (team_id, memory_type, content, agent_id)"
        " VALUES (:team, 'semantic', 'm', :agent)",
        lambda w: {"team": w.acme.id, "agent": w.zed.id},
        "23503",
        "fk_memory_agent_team",
    ),
    "memory-source-conversation-of-another-team": (
        "UPDATE memory SET source_conversation_id = :c WHERE id = :m",
        lambda w: {"c": w.globex_chat.id, "m": w.memory_id},
        "23503",
        "fk_memory_source_conversation_team",
    ),
    "conversation-agent-of-another-team": (
        "UPDATE conversation SET agent_id = :agent WHERE id = :c",
        lambda w: {"agent": w.zed.id, "c": w.chat.id},
        "23503",
        "fk_conversation_agent_team",
    ),
    "conversation-user-not-a-member": (
        "INSERT INTO conversation (team_id, agent_id, user_id) VALUES (:t, :a, :u)",
        lambda w: {"t": w.acme.id, "a": w.kyra.id, "u": w.grace.id},
        "23503",
        "fk_conversation_user_team",
    ),
    "message-agent-of-another-team": (
        "INSERT INTO message (team_id, conversation_id, agent_id, role, content)"
        " VALUES (:t, :c, :a, 'assistant', 'hi'), (:t, :c, NULL, 'user', 'hi')",
        lambda w: {"t": w.acme.id, "c": w.chat.id, "a": w.zed.id},
        "23503",
        "fk_message_agent_team",
    ),
    "message-moved-to-another-teams-conversation": (
        "UPDATE message SET conversation_id = :c",
        lambda w: {"c": w.globex_chat.id},
        "23503",
        "fk_message_conversation_team",
    ),
    "memory-agent-missing": (
        "INSERT INTO memory (team_id, memory_type, content, agent_id)"
        " VALUES (:t, 'semantic', 'm', :a)",
        lambda w: {"t": w.acme.id, "a": w.missing},
        "23503",
        "fk_memory_agent_team",
    ),
    "memory-importance": (
        "UPDATE memory SET importance = 0",
        lambda w: {},
        "23514",
        "ck_memory_importance",
    ),
    "user-email-duplicate-other-case": (
        """INSERT INTO "user" (email, password_hash, display_name) VALUES (:e, 'x', 'A')""",
        lambda w: {"e": "ada@EXAMPLE.COM"},
        "23505",
        "uq_user_email",
    ),
    "team-slug-malformed": (
        "UPDATE team SET slug = 'Acme Corp' WHERE id = :t",
        lambda w: {"t": w.acme.id},
        "23514",
        "ck_team_slug_format",
    ),
    "text-with-nul": (
        "UPDATE memory SET content = :c",
        lambda w: {"c": "a\x00b"},
        "22021",
        None,
    ),
    "jsonb-with-nul": (
        "UPDATE memory SET metadata = CAST(:j AS jsonb)",
        lambda w: {"j": '{"a": "\\u0000"}'},
        "22P05",
        None,
    ),
    "memory-type-unknown": (
        "UPDATE memory SET memory_type = 'dream'",
        lambda w: {},
        "22P02",
        None,
    ),
    "embedding-wrong-length": (
        "UPDATE memory SET embedding = '[1,2,3]'",
        lambda w: {},
        "22000",
        None,
    ),
    "embedding-nan": (
        "UPDATE memory SET embedding = CAST(:v AS vector)",
        lambda w: {
            "v": "[" + ",".join(["NaN"] + ["1"] * (get_settings().embedding_dimensions - 1)) + "]"
        },
        "22000",
        None,
    ),
}


@pytest.mark.parametrize("case", RAW_CASES)
async def test_raw_sql_breaking_a_rule_fails_with_its_sqlstate(world: World, case: str) -> None:
    sql, params, sqlstate, constraint = RAW_CASES[case]
    session = world.session

    async def write() -> None:
        # A message of Acme's conversation names Kyra, for the message cases.
        async with session.begin_nested():
            await session.exec(  # type: ignore[call-overload]
                text(
                    "INSERT INTO message (team_id, conversation_id, agent_id, role, content)"
                    " VALUES (:t, :c, :a, 'assistant', 'hello')"
                ),
                params={"t": world.acme.id, "c": world.chat.id, "a": world.kyra.id},
            )
            await session.exec(text(sql), params=params(world))  # type: ignore[call-overload]

    error = await assert_unchanged_after(session, write, DBAPIError)
    driver_error = error.orig  # type: ignore[attr-defined]
    assert driver_error.sqlstate == sqlstate
    if constraint is not None:
        assert driver_error.__cause__.constraint_name == constraint


# -- properties ---------------------------------------------------------------------------

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
"""One `world` serves every example; each example runs in a savepoint rolled back after it."""


@asynccontextmanager
async def example(session: AsyncSession) -> AsyncIterator[None]:
    savepoint = await session.begin_nested()
    try:
        yield
    finally:
        await savepoint.rollback()


GOOD_TEXT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=30
)
BAD_TEXT = st.builds(
    lambda a, bad, b: a + bad + b,
    GOOD_TEXT,
    st.just("\x00") | st.characters(categories=("Cs",)),
    GOOD_TEXT,
)
BAD_MEMORY_FIELD = st.sampled_from(
    [
        lambda bad: {"content": bad},
        lambda bad: {"subject": bad},
        lambda bad: {"extraction_model": bad},
        lambda bad: {"tags": ["ok", bad]},
        lambda bad: {"metadata_json": {"ok": [1, {"deep": bad}]}},
        lambda bad: {"metadata_json": {bad: True}},
    ]
)


@PROPERTY
@given(field=BAD_MEMORY_FIELD, bad=BAD_TEXT, content=GOOD_TEXT, position=st.integers(0, 3))
async def test_text_postgresql_cannot_store_never_reaches_the_database(
    world: World, field: Callable[[str], dict[str, Any]], bad: str, content: str, position: int
) -> None:
    memories = MemoryRepository(world.session)
    items = [memory(world, content=content) for _ in range(3)]
    items.insert(position, memory(world, **field(bad)))
    async with example(world.session):
        await assert_unchanged_after(
            world.session, lambda: memories.create(items[position]), ValidationError
        )
        error = await assert_unchanged_after(
            world.session, lambda: memories.add_many(items), ValidationError
        )
        assert {detail["loc"][0] for detail in error.errors()} == {position}  # type: ignore[attr-defined]


REFERENCES = st.sampled_from(
    [
        ("memory", "agent_id", "zed"),
        ("memory", "agent_id", "missing"),
        ("memory", "source_conversation_id", "globex_chat"),
        ("memory", "source_conversation_id", "missing"),
        ("memory", "user_id", "missing"),
        ("conversation", "agent_id", "zed"),
        ("conversation", "user_id", "grace"),
        ("message", "agent_id", "zed"),
        ("message", "agent_id", "missing"),
    ]
)


@PROPERTY
@given(reference=REFERENCES, content=GOOD_TEXT, position=st.integers(0, 5), good=st.integers(0, 5))
async def test_a_reference_to_another_team_or_to_nothing_is_a_conflict(
    world: World, reference: tuple[str, str, str], content: str, position: int, good: int
) -> None:
    """Single writes, and bulk copies with the bad row anywhere among good ones."""
    table, column, target = reference
    value = getattr(world, target)
    value = value if isinstance(value, uuid.UUID) else value.id
    session = world.session
    memories = MemoryRepository(session)
    writes: list[Callable[[], Awaitable[Any]]]
    if table == "memory":
        bad = memory(world, content=content, **{column: value})
        items = [memory(world, content=content, agent_id=world.kyra.id) for _ in range(good)]
        items.insert(min(position, good), bad)
        writes = [lambda: memories.create(bad), lambda: memories.add_many(items)]
    elif table == "conversation":
        data = {"team_id": world.acme.id, "agent_id": world.kyra.id, "user_id": world.ada.id}
        writes = [lambda: ConversationRepository(session).create({**data, column: value})]
    else:
        message = {"role": "assistant", "content": content, column: value}
        writes = [
            lambda: ConversationRepository(session).add_message(
                world.chat.id, message, team_id=world.acme.id
            )
        ]
    async with example(session):
        for write in writes:
            error = await assert_unchanged_after(session, write, ConflictError)
            assert str(value) in str(error)
            assert error.constraint is not None  # type: ignore[attr-defined]


LOCAL_PART = st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,6})?", fullmatch=True)
DOMAIN = st.from_regex(r"[a-z0-9]{1,10}\.(com|org|io)", fullmatch=True)


@settings(PROPERTY, max_examples=10)
@given(local=LOCAL_PART, domain=DOMAIN, flips=st.lists(st.booleans(), min_size=40, max_size=40))
async def test_an_email_in_any_case_is_taken_once(
    world: World, local: str, domain: str, flips: list[bool]
) -> None:
    email = f"{local}@{domain}"
    variant = "".join(c.swapcase() if flip else c for c, flip in zip(email, flips, strict=False))
    users = UserRepository(world.session)
    async with example(world.session):
        await users.create({"email": email, "display_name": "U", "password": "correct horse"})
        error = await assert_unchanged_after(
            world.session,
            lambda: users.create(
                {"email": variant, "display_name": "V", "password": "correct horse"}
            ),
            ConflictError,
        )
        assert error.constraint == "uq_user_email"  # type: ignore[attr-defined]
        found = await users.get_by_email(variant.swapcase())
        assert found is not None and found.email.lower() == email.lower()


async def test_an_email_is_looked_up_with_the_same_lower_case_as_its_unique_index(
    world: World,
) -> None:
    """Python and PostgreSQL lower some letters differently (Python gives a capital sigma at
    the end of a word its final small form, PostgreSQL the plain one)."""
    users = UserRepository(world.session)
    odos = await users.create(
        {"email": "ΟΔΟΣ@example.com", "display_name": "Odos", "password": "correct horse"}
    )
    await assert_unchanged_after(
        world.session,
        lambda: users.create(
            {"email": "οδοσ@example.com", "display_name": "O", "password": "correct horse"}
        ),
        ConflictError,
    )
    for email in ("ΟΔΟΣ@example.com", "οδοσ@EXAMPLE.COM", "Οδοσ@example.com"):
        assert await users.get_by_email(email) == odos
    assert await users.authenticate("ΟΔΟΣ@example.com", "correct horse") == odos


@pytest.mark.parametrize(
    "read",
    [
        lambda w: MemoryRepository(w.session).list(team_id=w.acme.id, content="a\x00"),
        lambda w: MemoryRepository(w.session).search_by_embedding(
            [1e39] + [0.0] * (get_settings().embedding_dimensions - 1), team_id=w.acme.id
        ),
        lambda w: UserRepository(w.session).get_by_email("a\x00@example.com"),
        lambda w: MemoryRepository(w.session).with_tag("\ud800", team_id=w.acme.id),
    ],
    ids=["list-nul", "search-beyond-float32", "email-nul", "tag-surrogate"],
)
async def test_a_failed_read_leaves_the_transaction_usable(
    world: World, read: Callable[[World], Awaitable[Any]]
) -> None:
    with pytest.raises(ValueError):  # ValidationError is one
        await read(world)
    assert len(await MemoryRepository(world.session).list(team_id=world.acme.id)) == 1
