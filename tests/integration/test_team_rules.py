"""Same-team references, from the side the bad-input suite does not cover.

The composite foreign keys of migration 0005 (a reference includes the row's team_id) and the
membership trigger of 0003. Inserts naming another team's rows are in `test_bad_input.py`;
here: moves of rows between teams, the paths that must stay free (NULL references, ON DELETE
actions that clear only the reference, leaving a team), a role that cannot see the referenced
row, and a move racing an insert.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    TEAM_ROLE,
    Agent,
    ConflictError,
    Conversation,
    ConversationCreate,
    ConversationRepository,
    Team,
    TeamRepository,
    User,
    UserCreate,
    UserRepository,
    get_session_factory,
)
from skill_store.repositories.base import translated_errors

from ..support import migrated_database, run, scalar


async def broken_rule(session: AsyncSession, sql: str, **params: Any) -> ConflictError:
    """The ConflictError of a raw statement that must fail, in a savepoint rolled back."""
    with pytest.raises(ConflictError) as caught:
        async with translated_errors(), session.begin_nested():
            await run(session, sql, **params)
    cause = caught.value.__cause__
    assert getattr(getattr(cause, "orig", None), "sqlstate", None) == "23503"
    return caught.value


async def other_team(session: AsyncSession, owner: User, slug: str = "globex") -> Team:
    return await TeamRepository(session).create({"name": slug, "slug": slug, "owner_id": owner.id})


async def new_agent(session: AsyncSession, team: Team, slug: str) -> uuid.UUID:
    return await scalar(
        session,
        "INSERT INTO agent (team_id, name, slug) VALUES (:t, :s, :s) RETURNING id",
        t=team.id,
        s=slug,
    )


async def new_memory(session: AsyncSession, team_id: uuid.UUID, **references: Any) -> uuid.UUID:
    columns = ", ".join(["team_id", "memory_type", "content", *references])
    values = ", ".join([":team_id", "'semantic'", "'m'", *(f":{name}" for name in references)])
    return await scalar(
        session,
        f"INSERT INTO memory ({columns}) VALUES ({values}) RETURNING id",
        team_id=team_id,
        **references,
    )


async def new_message(
    session: AsyncSession, conversation: Conversation | uuid.UUID, agent_id: uuid.UUID | None
) -> uuid.UUID:
    """A message in the conversation, of the conversation's team."""
    conversation_id = conversation if isinstance(conversation, uuid.UUID) else conversation.id
    return await scalar(
        session,
        "INSERT INTO message (team_id, conversation_id, agent_id, role, content)"
        " SELECT team_id, id, :a, 'assistant', 'hi' FROM conversation WHERE id = :c RETURNING id",
        c=conversation_id,
        a=agent_id,
    )


# -- moves ----------------------------------------------------------------------------


async def test_an_agent_moves_only_without_rows_of_its_old_team(
    session: AsyncSession, user: User, team: Team, agent: Agent, conversation: Conversation
) -> None:
    """Its key includes its team: the rows that name it hold the old key."""
    globex = await other_team(session, user)
    move = "UPDATE agent SET team_id = :t WHERE id = :a"

    error = await broken_rule(session, move, t=globex.id, a=agent.id)
    assert error.constraint == "fk_conversation_agent_team"
    assert str(error) == f"agent {agent.id} is still referenced by conversation"
    other = await new_agent(session, team, "orion")
    await run(session, "UPDATE conversation SET agent_id = :o", o=other)

    memory_id = await new_memory(session, team.id, agent_id=agent.id)
    error = await broken_rule(session, move, t=globex.id, a=agent.id)
    assert error.constraint == "fk_memory_agent_team"
    assert str(error) == f"agent {agent.id} is still referenced by memory"
    await run(session, "DELETE FROM memory WHERE id = :m", m=memory_id)

    # A message of a conversation with another agent of the team names the moving agent.
    message_id = await new_message(session, conversation, agent.id)
    error = await broken_rule(session, move, t=globex.id, a=agent.id)
    assert error.constraint == "fk_message_agent_team"
    assert str(error) == f"agent {agent.id} is still referenced by message"

    await run(session, "DELETE FROM message WHERE id = :m", m=message_id)
    await run(session, move, t=globex.id, a=agent.id)
    assert await scalar(session, "SELECT team_id FROM agent WHERE id = :a", a=agent.id) == globex.id


async def test_a_conversation_moves_with_its_agent_and_messages_and_only_without_old_rows(
    session: AsyncSession, user: User, team: Team, agent: Agent, conversation: Conversation
) -> None:
    globex = await other_team(session, user)
    zed = await new_agent(session, globex, "zed")
    move = "UPDATE conversation SET team_id = :t, agent_id = :a WHERE id = :c"

    error = await broken_rule(
        session,
        "UPDATE conversation SET team_id = :t WHERE id = :c",
        t=globex.id,
        c=conversation.id,
    )
    assert error.constraint == "fk_conversation_agent_team"
    assert str(error) == (
        f"agent {agent.id} is not an agent of team {globex.id}, the team of the conversation"
    )

    memory_id = await new_memory(session, team.id, source_conversation_id=conversation.id)
    error = await broken_rule(session, move, t=globex.id, a=zed, c=conversation.id)
    assert error.constraint == "fk_memory_source_conversation_team"
    assert str(error) == f"conversation {conversation.id} is still referenced by memory"
    await run(session, "DELETE FROM memory WHERE id = :m", m=memory_id)

    await new_message(session, conversation, None)
    message_id = await new_message(session, conversation, agent.id)
    error = await broken_rule(session, move, t=globex.id, a=zed, c=conversation.id)
    assert error.constraint == "fk_message_conversation_team"
    # Rows that name each other move in one statement: the keys are checked at its end.
    await run(
        session,
        "WITH moved AS (UPDATE message SET team_id = :t,"
        " agent_id = CASE WHEN id = :m THEN CAST(:a AS uuid) END WHERE conversation_id = :c)"
        f" {move}",
        t=globex.id,
        a=zed,
        c=conversation.id,
        m=message_id,
    )
    assert await scalar(
        session, "SELECT team_id FROM conversation WHERE id = :c", c=conversation.id
    ) == (globex.id)
    teams = "SELECT DISTINCT team_id FROM message WHERE conversation_id = :c"
    assert await scalar(session, teams, c=conversation.id) == globex.id


async def test_a_conversation_moves_only_to_a_team_its_user_is_a_member_of(
    session: AsyncSession, user: User, team: Team, conversation: Conversation
) -> None:
    stranger = await scalar(
        session,
        """INSERT INTO "user" (email, password_hash, display_name)"""
        " VALUES ('s@example.com', 'x', 'S') RETURNING id",
    )
    elsewhere = await other_team(session, await session.get_one(User, stranger), "initech")
    drifter = await new_agent(session, elsewhere, "drifter")
    error = await broken_rule(
        session,
        "UPDATE conversation SET team_id = :t, agent_id = :a WHERE id = :c",
        t=elsewhere.id,
        a=drifter,
        c=conversation.id,
    )
    assert error.constraint == "fk_conversation_user_team"
    assert str(error) == (
        f"user {user.id} is not a member of team {elsewhere.id}, the team of conversation"
        f" {conversation.id}"
    )


async def test_a_memory_moves_only_with_references_of_its_new_team(
    session: AsyncSession, user: User, team: Team, agent: Agent
) -> None:
    globex = await other_team(session, user)
    memory_id = await new_memory(session, team.id, agent_id=agent.id)
    error = await broken_rule(
        session, "UPDATE memory SET team_id = :t WHERE id = :m", t=globex.id, m=memory_id
    )
    assert error.constraint == "fk_memory_agent_team"
    assert str(error) == (
        f"agent {agent.id} is not an agent of team {globex.id}, the team of the memory"
    )
    await run(
        session,
        "UPDATE memory SET team_id = :t, agent_id = NULL WHERE id = :m",
        t=globex.id,
        m=memory_id,
    )


# -- paths that stay free -------------------------------------------------------------


async def test_deletes_and_leaving_a_team_are_not_blocked(
    session: AsyncSession, user: User, team: Team, agent: Agent, conversation: Conversation
) -> None:
    """ON DELETE SET NULL clears the reference only: the row keeps its team."""
    grace = await scalar(
        session,
        """INSERT INTO "user" (email, password_hash, display_name)"""
        " VALUES ('grace@example.com', 'x', 'Grace') RETURNING id",
    )
    await TeamRepository(session).add_member(grace, team_id=team.id)
    orion = await new_agent(session, team, "orion")
    graces = await scalar(
        session,
        "INSERT INTO conversation (team_id, agent_id, user_id) VALUES (:t, :o, :g) RETURNING id",
        t=team.id,
        o=orion,
        g=grace,
    )
    assert await TeamRepository(session).remove_member(grace, team_id=team.id)
    await run(session, "UPDATE conversation SET title = 'kept' WHERE id = :c", c=graces)

    message_id = await new_message(session, graces, agent.id)
    memory_id = await new_memory(session, team.id, source_conversation_id=conversation.id)
    # An agent's conversations are deleted first: they keep it from being deleted.
    await run(session, "DELETE FROM conversation WHERE agent_id = :a", a=agent.id)
    await run(session, "DELETE FROM agent WHERE id = :a", a=agent.id)
    message = "SELECT agent_id, team_id FROM message WHERE id = :m"
    assert tuple((await run(session, message, m=message_id)).one()) == (None, team.id)
    memory = "SELECT source_conversation_id, team_id FROM memory WHERE id = :m"
    assert tuple((await run(session, memory, m=memory_id)).one()) == (None, team.id)


# -- a role that cannot see the referenced row ----------------------------------------


async def test_the_team_role_can_name_its_own_teams_rows_only(
    session: AsyncSession, user: User, team: Team, agent: Agent
) -> None:
    """As the team role under row-level security, which sees only its team's agents."""
    globex = await other_team(session, user)
    zed = await new_agent(session, globex, "zed")
    await run(
        session,
        "SELECT set_config('role', :role, true), set_config('skill_store.team_id', :t, true)",
        role=TEAM_ROLE,
        t=str(team.id),
    )

    assert await scalar(session, "SELECT count(*) FROM agent WHERE id = :z", z=zed) == 0
    error = await broken_rule(
        session,
        "INSERT INTO memory (team_id, memory_type, content, agent_id)"
        " VALUES (:t, 'semantic', 'm', :z)",
        t=team.id,
        z=zed,
    )
    assert error.constraint == "fk_memory_agent_team"
    assert str(error) == "the agent named by the memory is not of the memory's team"
    await run(
        session,
        "INSERT INTO memory (team_id, memory_type, content, agent_id)"
        " VALUES (:t, 'semantic', 'm', :a)",
        t=team.id,
        a=agent.id,
    )
    await run(session, "RESET ROLE")


# -- a move racing an insert ----------------------------------------------------------


@pytest.fixture(scope="module")
async def committed_engine(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_database(server_url, "skill_store_team_rules") as engine:
        yield engine


async def waiting_for_a_lock(connection: AsyncConnection, pid: int) -> bool:
    state = await connection.execute(
        text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
    )
    return state.scalar_one_or_none() == "Lock"


async def test_a_conversation_move_waits_for_an_insert_naming_it_and_then_fails(
    committed_engine: AsyncEngine,
) -> None:
    """Without the move's lock it would miss the memory written meanwhile and succeed."""
    async with get_session_factory(committed_engine)() as setup:
        owner = await UserRepository(setup).create(
            UserCreate(email="race@example.com", display_name="R", password="correct horse")
        )
        acme, globex = [await other_team(setup, owner, slug) for slug in ("acme", "globex")]
        kyra, zed = [await new_agent(setup, acme, "kyra"), await new_agent(setup, globex, "zed")]
        conversation = (
            await ConversationRepository(setup).create(
                ConversationCreate(team_id=acme.id, agent_id=kyra, user_id=owner.id)
            )
        ).id
        await setup.commit()

    async with committed_engine.connect() as writer, committed_engine.connect() as mover:
        await writer.begin()
        await writer.execute(
            text(
                "INSERT INTO memory (team_id, memory_type, content, source_conversation_id)"
                " VALUES (:t, 'episodic', 'm', :c)"
            ),
            {"t": acme.id, "c": conversation},
        )
        mover_pid = (await mover.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await mover.commit()

        async def move() -> None:
            async with translated_errors(), mover.begin():
                await mover.execute(
                    text("UPDATE conversation SET team_id = :t, agent_id = :a WHERE id = :c"),
                    {"t": globex.id, "a": zed, "c": conversation},
                )

        moving = asyncio.create_task(move())
        while not moving.done() and not await waiting_for_a_lock(writer, mover_pid):
            await asyncio.sleep(0.01)
        await writer.commit()
        with pytest.raises(ConflictError) as caught:
            await moving
    assert caught.value.constraint == "fk_memory_source_conversation_team"
