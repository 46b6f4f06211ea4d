"""Row-level security: a session scoped to one team cannot read or write another team's rows.

The data is committed (in a database of its own), and every attempt runs in a scoped session of
its own that commits when the attempt did not fail, so nothing is hidden by a rollback; the
whole database is then compared, row for row, with what it was before.
"""

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    TEAM_ROLE,
    AccessDeniedError,
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    ConflictError,
    ConversationCreate,
    ConversationRepository,
    MemoryCreate,
    MemoryRepository,
    MemoryType,
    MessageCreate,
    MessageRole,
    NotFoundError,
    Settings,
    TeamCreate,
    TeamRepository,
    TeamUpdate,
    UserCreate,
    UserRepository,
    UserRole,
    get_engine,
    get_session_factory,
    get_sync_engine,
    migrate,
    scope_to_team,
)
from skill_store.repositories.base import translated_errors

from ..support import (
    TABLES,
    create_database,
    drop_database,
    fingerprint,
    migrated_database,
    unit_vector,
)


@dataclass
class Team:
    id: uuid.UUID
    owner_id: uuid.UUID
    agent_id: uuid.UUID
    conversation_id: uuid.UUID
    memory_id: uuid.UUID
    deleted_memory_id: uuid.UUID


@dataclass
class World:
    factory: async_sessionmaker[AsyncSession]
    ours: Team
    theirs: Team


@pytest.fixture(scope="module")
async def engine(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_database(server_url, "skill_store_tenancy") as engine:
        yield engine


async def make_team(session: AsyncSession, slug: str, hot: int) -> Team:
    owner = await UserRepository(session).create(
        UserCreate(email=f"{slug}@example.com", display_name=slug, password="correct horse")
    )
    team = await TeamRepository(session).create(
        TeamCreate(name=slug, slug=slug, owner_id=owner.id, webhook_secret=f"{slug}-secret")
    )
    agent = await AgentRepository(session).create(
        AgentCreate(
            team_id=team.id,
            name=slug,
            slug=slug,
            personality=AgentPersonality(system_prompt_template=f"You are {slug}."),
        )
    )
    conversations = ConversationRepository(session)
    conversation = await conversations.create(
        ConversationCreate(team_id=team.id, agent_id=agent.id, user_id=owner.id)
    )
    await conversations.add_message(
        conversation.id,
        MessageCreate(role=MessageRole.USER, content=f"hello {slug}"),
        team_id=team.id,
    )
    memories = MemoryRepository(session)
    memory = await memories.create(
        MemoryCreate(
            team_id=team.id,
            agent_id=agent.id,
            memory_type=MemoryType.SEMANTIC,
            content=f"{slug} likes tea",
            embedding=unit_vector(hot),
            tags=["tea"],
        )
    )
    deleted = await memories.create(
        MemoryCreate(team_id=team.id, memory_type=MemoryType.EPISODIC, content=f"{slug} left")
    )
    await memories.delete(deleted.id, team_id=team.id, actor="cleanup")
    return Team(team.id, owner.id, agent.id, conversation.id, memory.id, deleted.id)


@pytest.fixture(scope="module")
async def world(engine: AsyncEngine) -> World:
    factory = get_session_factory(engine)
    async with factory() as session:
        ours = await make_team(session, "ours", 0)
        theirs = await make_team(session, "theirs", 1)
        await session.commit()
    return World(factory, ours, theirs)


async def snapshot(world: World) -> dict[str, tuple[int, str]]:
    """Each table's row count and a checksum of its rows, as an unscoped session sees them."""
    async with world.factory() as session:
        return await fingerprint(session)


async def scoped_count(session: AsyncSession, table: str, column: str, value: uuid.UUID) -> int:
    statement = text(f'SELECT count(*) FROM "{table}" WHERE {column} = :value')
    return int((await session.exec(statement, params={"value": value})).scalar_one())


async def test_a_scoped_session_sees_only_its_team(world: World) -> None:
    ours, theirs = world.ours, world.theirs
    async with scope_to_team(world.factory(), ours.id) as session:
        user = (await session.exec(text("SELECT current_user"))).scalar_one()
        visible = {
            table: int((await session.exec(text(f'SELECT count(*) FROM "{table}"'))).scalar_one())
            for table in TABLES
        }
        assert await scoped_count(session, "memory", "team_id", theirs.id) == 0
        their_conversation = theirs.conversation_id
        assert await scoped_count(session, "message", "conversation_id", their_conversation) == 0
        assert await scoped_count(session, "memory_log", "memory_id", theirs.memory_id) == 0
        assert await scoped_count(session, "user", "id", theirs.owner_id) == 0
    assert user == TEAM_ROLE
    assert visible == {
        "user": 1,
        "team": 1,
        "team_membership": 1,
        "agent": 1,
        "conversation": 1,
        "message": 1,
        "memory": 1,
        "memory_tag": 1,
        "memory_log": 3,  # created, created, deleted
    }


async def test_repository_reads_of_another_team_find_nothing(world: World) -> None:
    theirs = world.theirs
    async with scope_to_team(world.factory(), world.ours.id) as session:
        memories = MemoryRepository(session)
        team = {"team_id": theirs.id}
        assert await memories.get_by_id(theirs.memory_id, **team) is None
        with pytest.raises(NotFoundError):
            await memories.get(theirs.memory_id, team_id=theirs.id)
        assert await memories.search_by_embedding(unit_vector(1), team_id=theirs.id) == []
        assert (
            await memories.retrieve("tea", team_id=theirs.id, query_embedding=unit_vector(1)) == []
        )
        assert await memories.history(theirs.memory_id, **team) == []
        assert await memories.history(theirs.deleted_memory_id, **team) == []
        assert await memories.tags(theirs.memory_id, **team) == []
        assert await memories.with_tag("tea", team_id=theirs.id) == []
        assert await memories.content_at(theirs.memory_id, datetime.now(UTC), **team) is None
        assert await AgentRepository(session).get_by_id(theirs.agent_id, **team) is None
        assert await AgentRepository(session).list_for_team(team_id=theirs.id) == []
        conversations = ConversationRepository(session)
        assert await conversations.get_by_id(theirs.conversation_id, **team) is None
        assert await conversations.messages(theirs.conversation_id, **team) == []
        assert await TeamRepository(session).get_by_id(theirs.id) is None
        assert await TeamRepository(session).members(team_id=theirs.id) == []
        assert [team.id for team in await TeamRepository(session).list()] == [world.ours.id]


async def test_a_scoped_session_retrieves_and_records_access_of_its_own_memories(
    world: World,
) -> None:
    async with scope_to_team(world.factory(), world.ours.id) as session:
        memories = MemoryRepository(session)
        [found] = await memories.retrieve(
            "what does ours like?",
            team_id=world.ours.id,
            agent_id=world.ours.agent_id,
            query_embedding=unit_vector(0),
            record_access=True,
        )
        touched = await memories.get(world.ours.memory_id, team_id=world.ours.id)
        await session.refresh(touched)
        accesses = touched.access_count
        await session.rollback()
    assert found.id == world.ours.memory_id
    assert found.signals.semantic == 1
    assert accesses == found.access_count + 1


Attempt = Callable[[AsyncSession, World], Awaitable[Any]]


async def create_their_memory(session: AsyncSession, world: World) -> Any:
    return await MemoryRepository(session).create(
        MemoryCreate(team_id=world.theirs.id, memory_type=MemoryType.SEMANTIC, content="planted")
    )


async def add_many_of_theirs(session: AsyncSession, world: World) -> Any:
    return await MemoryRepository(session).add_many(
        [MemoryCreate(team_id=world.theirs.id, memory_type=MemoryType.SEMANTIC, content="x")]
    )


async def create_their_agent(session: AsyncSession, world: World) -> Any:
    return await AgentRepository(session).create(
        AgentCreate(
            team_id=world.theirs.id,
            name="Mole",
            slug="mole",
            personality=AgentPersonality(system_prompt_template="You are a mole."),
        )
    )


async def create_their_conversation(session: AsyncSession, world: World) -> Any:
    return await ConversationRepository(session).create(
        ConversationCreate(
            team_id=world.theirs.id, agent_id=world.theirs.agent_id, user_id=world.theirs.owner_id
        )
    )


async def message_their_conversation(session: AsyncSession, world: World) -> Any:
    return await ConversationRepository(session).add_message(
        world.theirs.conversation_id,
        MessageCreate(role=MessageRole.USER, content="psst"),
        team_id=world.theirs.id,
    )


async def tag_their_memory(session: AsyncSession, world: World) -> Any:
    return await MemoryRepository(session).add_tags(
        world.theirs.memory_id, ["planted"], team_id=world.theirs.id
    )


async def join_their_team(session: AsyncSession, world: World) -> Any:
    return await TeamRepository(session).add_member(world.ours.owner_id, team_id=world.theirs.id)


async def create_a_team(session: AsyncSession, world: World) -> Any:
    return await TeamRepository(session).create(
        TeamCreate(name="New", slug="new", owner_id=world.ours.owner_id)
    )


async def delete_their_team(session: AsyncSession, world: World) -> Any:
    return await TeamRepository(session).delete(world.theirs.id)


async def update_their_memory(session: AsyncSession, world: World) -> Any:
    return await MemoryRepository(session).update(
        world.theirs.memory_id, {"content": "changed"}, team_id=world.theirs.id
    )


async def supersede_their_memory(session: AsyncSession, world: World) -> Any:
    return await MemoryRepository(session).supersede(
        world.theirs.memory_id,
        MemoryCreate(team_id=world.theirs.id, memory_type=MemoryType.SEMANTIC, content="new"),
    )


async def link_to_their_memory(session: AsyncSession, world: World) -> Any:
    return await MemoryRepository(session).relate(
        world.ours.memory_id, world.theirs.memory_id, team_id=world.ours.id
    )


async def rename_their_team(session: AsyncSession, world: World) -> Any:
    return await TeamRepository(session).update(world.theirs.id, TeamUpdate(name="Pwned"))


async def delete_their_memory(session: AsyncSession, world: World) -> Any:
    return await MemoryRepository(session).delete(world.theirs.memory_id, team_id=world.theirs.id)


async def touch_their_memory(session: AsyncSession, world: World) -> Any:
    return await MemoryRepository(session).update_access(
        [world.theirs.memory_id], team_id=world.theirs.id
    )


def raw(sql: str) -> Attempt:
    async def attempt(session: AsyncSession, world: World) -> Any:
        parameters = {
            "ours": world.ours.id,
            "theirs": world.theirs.id,
            "their_memory": world.theirs.memory_id,
            "their_conversation": world.theirs.conversation_id,
            "our_owner": world.ours.owner_id,
        }
        async with translated_errors():
            result = await session.exec(text(sql), params=parameters)
        return result.all() if result.returns_rows else result.rowcount

    attempt.__name__ = sql
    return attempt


REFUSED: list[Attempt] = [
    create_their_memory,
    add_many_of_theirs,
    create_their_agent,
    create_their_conversation,
    message_their_conversation,
    tag_their_memory,
    join_their_team,
    create_a_team,
    delete_their_team,
    raw("INSERT INTO memory (team_id, memory_type, content) VALUES (:theirs, 'semantic', 'x')"),
    raw("UPDATE memory SET team_id = :theirs WHERE team_id = :ours"),
    raw("UPDATE agent SET team_id = :theirs"),
    raw(
        "INSERT INTO message (team_id, conversation_id, role, content)"
        " VALUES (:theirs, :their_conversation, 'user', 'x')"
    ),
    raw("INSERT INTO memory_tag (team_id, memory_id, tag) VALUES (:theirs, :their_memory, 'x')"),
    raw(
        "INSERT INTO team_membership (user_id, team_id, role)"
        " VALUES (:our_owner, :theirs, 'member')"
    ),
    raw(
        "INSERT INTO memory_log (memory_id, team_id, action, changed_by)"
        " VALUES (:their_memory, :ours, 'forged', 'me')"
    ),
    raw('SELECT password_hash FROM "user"'),
    raw("TRUNCATE memory CASCADE"),
    raw("DELETE FROM team WHERE id = :theirs"),
    raw("ALTER TABLE memory DISABLE ROW LEVEL SECURITY"),
]


async def add_a_stranger_as_our_owner(session: AsyncSession, world: World) -> Any:
    return await TeamRepository(session).add_member(
        world.theirs.owner_id, role=UserRole.OWNER, team_id=world.ours.id
    )


async def demote_our_owner(session: AsyncSession, world: World) -> Any:
    return await TeamRepository(session).set_role(
        world.ours.owner_id, UserRole.VIEWER, team_id=world.ours.id
    )


@pytest.mark.parametrize(
    "attempt", [add_a_stranger_as_our_owner, demote_our_owner], ids=lambda a: a.__name__
)
async def test_the_team_role_cannot_add_members_or_change_roles(
    world: World, attempt: Attempt
) -> None:
    """Else it could add anyone, even as owner, and read their email."""
    before = await snapshot(world)
    with pytest.raises(AccessDeniedError):
        await attempt_and_commit(world, attempt)
    assert await snapshot(world) == before


NOT_FOUND: list[Attempt] = [
    update_their_memory,
    supersede_their_memory,
    link_to_their_memory,
    rename_their_team,
]

NOTHING_MATCHES: list[Attempt] = [
    delete_their_memory,
    touch_their_memory,
    raw("UPDATE memory SET content = 'changed' WHERE team_id = :theirs"),
    raw("DELETE FROM message WHERE conversation_id = :their_conversation"),
    raw("DELETE FROM agent WHERE team_id <> :ours"),
    raw("UPDATE team SET name = 'Pwned' WHERE id = :theirs"),
    raw("UPDATE conversation SET title = 'Pwned' WHERE team_id = :theirs"),
    raw("SELECT * FROM memory WHERE team_id = :theirs"),
    raw("SELECT * FROM memory_log WHERE team_id = :theirs"),
    raw(
        "SELECT * FROM update_memory_access(ARRAY[CAST(:their_memory AS uuid)]) AS touched"
        " WHERE touched > 0"
    ),
]


async def attempt_and_commit(world: World, attempt: Attempt) -> Any:
    """Run the attempt in a session scoped to our team; commit unless it raised."""
    async with scope_to_team(world.factory(), world.ours.id) as session:
        result = await attempt(session, world)
        await session.commit()
    return result


@pytest.mark.parametrize("attempt", REFUSED, ids=lambda attempt: attempt.__name__)
async def test_writing_another_teams_rows_is_refused(world: World, attempt: Attempt) -> None:
    before = await snapshot(world)
    with pytest.raises(AccessDeniedError):
        await attempt_and_commit(world, attempt)
    assert await snapshot(world) == before


@pytest.mark.parametrize("attempt", NOT_FOUND, ids=lambda attempt: attempt.__name__)
async def test_another_teams_rows_cannot_be_found_to_change(world: World, attempt: Attempt) -> None:
    before = await snapshot(world)
    with pytest.raises(NotFoundError):
        await attempt_and_commit(world, attempt)
    assert await snapshot(world) == before


@pytest.mark.parametrize("attempt", NOTHING_MATCHES, ids=lambda attempt: attempt.__name__)
async def test_another_teams_rows_match_nothing(world: World, attempt: Attempt) -> None:
    before = await snapshot(world)
    assert await attempt_and_commit(world, attempt) in (0, False, [])
    assert await snapshot(world) == before


async def test_the_same_attempts_succeed_for_our_own_team(world: World) -> None:
    """The refusals above come from the team, not from a missing privilege."""
    async with scope_to_team(world.factory(), world.ours.id) as session:
        memories = MemoryRepository(session)
        memory = await memories.create(
            MemoryCreate(
                team_id=world.ours.id,
                memory_type=MemoryType.SEMANTIC,
                content="ours",
                embedding=unit_vector(2),
                tags=["mine"],
            ),
            actor="tester",
        )
        bulk = MemoryCreate(
            team_id=world.ours.id, memory_type=MemoryType.SEMANTIC, content="bulk", tags=["b"]
        )
        assert await memories.add_many([bulk, bulk]) == 2
        newer = await memories.supersede(
            memory.id,
            MemoryCreate(team_id=world.ours.id, memory_type=MemoryType.SEMANTIC, content="ours 2"),
        )
        assert await memories.update_access([newer.id], team_id=world.ours.id) == 1
        hits = await memories.search_by_embedding(unit_vector(0), team_id=world.ours.id, limit=5)
        assert [hit.id for hit in hits] == [world.ours.memory_id]
        conversations = ConversationRepository(session)
        await conversations.add_message(
            world.ours.conversation_id,
            MessageCreate(role=MessageRole.USER, content="hi", token_count=4),
            team_id=world.ours.id,
        )
        await session.commit()

        ours = {"team_id": world.ours.id}
        conversation = await conversations.get_or_raise(world.ours.conversation_id, **ours)
        history = await memories.history(memory.id, **ours)
        deleted_history = await memories.history(world.ours.deleted_memory_id, **ours)

    assert conversation.message_count == 2
    assert [(entry.action, entry.changed_by, entry.team_id) for entry in history] == [
        ("created", "tester", world.ours.id),
        ("superseded", "system", world.ours.id),
    ]
    assert [entry.action for entry in deleted_history] == ["created", "deleted"]


async def test_a_unique_clash_in_a_scoped_session_names_its_constraint(world: World) -> None:
    """The database hides the clashing values from the team role: the error names the rule."""
    async with scope_to_team(world.factory(), world.ours.id) as session:
        agents = AgentRepository(session)
        agent = await agents.get_or_raise(world.ours.agent_id, team_id=world.ours.id)
        twin = AgentCreate(
            team_id=world.ours.id, name="Twin", slug=agent.slug, personality=agent.personality
        )
        with pytest.raises(ConflictError) as caught:
            await agents.create(twin)
    assert str(caught.value) == "the agent repeats a key that must be unique (uq_agent_team_slug)"


async def test_the_scope_outlives_commits(world: World) -> None:
    async with scope_to_team(world.factory(), world.ours.id) as session:
        for _ in range(2):
            assert await scoped_count(session, "memory", "team_id", world.theirs.id) == 0
            await session.commit()


async def test_pooled_connections_leave_the_scope_with_the_transaction(engine: AsyncEngine) -> None:
    single = await get_engine(
        engine.url.render_as_string(hide_password=False),
        settings=Settings(database_pool_size=1, database_pool_overflow=0),
    )
    factory = get_session_factory(single)
    try:
        async with factory() as session:
            team_id = (await session.exec(text("SELECT id FROM team LIMIT 1"))).scalar_one()
        async with scope_to_team(factory(), team_id) as session:
            assert (await session.exec(text("SELECT current_user"))).scalar_one() == TEAM_ROLE
            await session.commit()
        async with factory() as session:
            user, team = (
                await session.exec(
                    text("SELECT current_user, current_setting('skill_store.team_id', true)")
                )
            ).one()
            teams = (await session.exec(text("SELECT count(*) FROM team"))).scalar_one()
    finally:
        await single.dispose()
    assert user != TEAM_ROLE
    assert team in ("", None)
    assert teams >= 2


async def test_a_session_level_role_does_not_outlive_the_session(
    engine: AsyncEngine, world: World
) -> None:
    """Raw SQL that sets the role or the team for the whole connection, then commits."""
    single = await get_engine(
        engine.url.render_as_string(hide_password=False),
        settings=Settings(database_pool_size=1, database_pool_overflow=0),
    )
    factory = get_session_factory(single)
    try:
        async with factory() as session:
            team_id = (await session.exec(text("SELECT id FROM team LIMIT 1"))).scalar_one()
            await session.exec(
                text(
                    "SELECT set_config('role', :role, false),"
                    " set_config('skill_store.team_id', :team, false),"
                    " set_config('skill_store.actor', 'mallory', false)"
                ),
                params={"role": TEAM_ROLE, "team": str(team_id)},
            )
            await session.commit()
        async with factory() as session:
            user, team, actor = (
                await session.exec(
                    text(
                        "SELECT current_user, current_setting('skill_store.team_id', true),"
                        " current_setting('skill_store.actor', true)"
                    )
                )
            ).one()
            teams = (await session.exec(text("SELECT count(*) FROM team"))).scalar_one()
    finally:
        await single.dispose()
    assert user != TEAM_ROLE
    assert team in ("", None)
    assert actor in ("", None)
    assert teams >= 2


async def test_a_session_is_scoped_once_and_before_it_begins(world: World) -> None:
    session = scope_to_team(world.factory(), world.ours.id)
    with pytest.raises(ValueError, match="already scoped"):
        scope_to_team(session, world.theirs.id)
    async with world.factory() as begun:
        await begun.exec(text("SELECT 1"))
        with pytest.raises(ValueError, match="before its first statement"):
            scope_to_team(begun, world.ours.id)
    await session.close()


async def test_the_team_role_without_a_team_sees_no_row(world: World) -> None:
    async with world.factory() as session:
        await session.exec(text(f"SET LOCAL ROLE {TEAM_ROLE}"))
        counts = [
            (await session.exec(text(f'SELECT count(*) FROM "{table}"'))).scalar_one()
            for table in TABLES
        ]
    assert counts == [0] * len(TABLES)


async def test_an_owner_that_is_no_superuser_migrates_and_scopes(
    server_url: str, engine: AsyncEngine
) -> None:
    """The setup SECURITY.md describes for an external server, with the role granted first.

    (The module's `engine` has migrated a database of this server, so the team role exists.)
    """
    owner, database = "skill_store_owner", "skill_store_owned"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    await drop_database(server_url, database)  # left by an interrupted run, if any
    async with admin.connect() as connection:
        await connection.execute(text(f"DROP ROLE IF EXISTS {owner}"))
        await connection.execute(text(f"CREATE ROLE {owner} LOGIN"))
        await connection.execute(text(f"GRANT {TEAM_ROLE} TO {owner}"))
    url = await create_database(server_url, database)
    async with admin.connect() as connection:
        await connection.execute(text(f"ALTER DATABASE {database} OWNER TO {owner}"))
    superuser = create_async_engine(url, poolclass=NullPool)
    async with superuser.begin() as connection:
        await connection.execute(text("CREATE EXTENSION vector"))
    await superuser.dispose()
    owned = await get_engine(
        make_url(url).set(username=owner).render_as_string(hide_password=False)
    )
    try:
        await migrate(owned)
        factory = get_session_factory(owned)
        async with factory() as session:
            ours = await make_team(session, "ours", 0)
            await make_team(session, "theirs", 1)
            await session.commit()
            everyone = (await session.exec(text("SELECT count(*) FROM team"))).scalar_one()
        async with scope_to_team(factory(), ours.id) as session:
            role, teams = (
                await session.exec(text("SELECT current_user, count(*) FROM team"))
            ).one()
    finally:
        await owned.dispose()
        await drop_database(server_url, database)
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP ROLE {owner}"))
        await admin.dispose()
    assert (everyone, role, teams) == (2, TEAM_ROLE, 1)


async def test_a_scoped_session_reads_its_members_without_their_password_hashes(
    world: World,
) -> None:
    ours = world.ours
    async with scope_to_team(world.factory(), ours.id) as session:
        users = UserRepository(session)
        owner = await users.get_by_id(ours.owner_id)
        assert owner is not None
        assert owner.email == "ours@example.com"
        assert await users.get_by_email("OURS@example.com") == owner
        assert [user.id for user in await users.list()] == [ours.owner_id]
        assert await users.get_by_id(world.theirs.owner_id) is None
        [membership] = await TeamRepository(session).members(team_id=ours.id)
        assert membership.user.email == "ours@example.com"
        with pytest.raises(InvalidRequestError, match="password_hash"):
            _ = owner.password_hash


def test_a_synchronous_engine_resets_the_role_too(engine: AsyncEngine, world: World) -> None:
    single = get_sync_engine(
        engine.url.render_as_string(hide_password=False),
        settings=Settings(database_pool_size=1, database_pool_overflow=0),
    )
    try:
        with single.connect() as connection:
            connection.execute(text("SELECT set_config('role', :role, false)"), {"role": TEAM_ROLE})
            connection.commit()
        with single.connect() as connection:
            user = connection.execute(text("SELECT current_user")).scalar_one()
    finally:
        single.dispose()
    assert user != TEAM_ROLE
