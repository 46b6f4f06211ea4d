"""The repositories on a real database: the generic CRUD and the translation of errors.

The helpers here are shared by test_repositories_entities.py (users, teams, agents,
conversations) and test_repositories_memory.py. Each test runs in a transaction that is
rolled back afterwards; repositories never commit.
"""

import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    AgentStatus,
    AgentUpdate,
    ConflictError,
    Conversation,
    ConversationCreate,
    ConversationRepository,
    ConversationUpdate,
    MemoryRepository,
    MessageCreate,
    MessageRole,
    NotFoundError,
    Team,
    TeamCreate,
    TeamRepository,
    TeamRowRepository,
    TeamUpdate,
    User,
    UserCreate,
    UserRepository,
    UserRole,
    UserUpdate,
)

from ..support import scalar

PASSWORD = "correct horse"

# -- helpers ----------------------------------------------------------------------------


async def count(session: AsyncSession, table: str) -> int:
    return int(await scalar(session, f'SELECT count(*) FROM "{table}"'))


@contextmanager
def sql_sent(session: AsyncSession) -> Iterator[list[str]]:
    """The statements the session sends to the database inside the block."""
    statements: list[str] = []

    def record(*args: Any) -> None:  # (connection, cursor, statement, ...)
        statements.append(args[2])

    engine = session.bind.sync_engine  # type: ignore[union-attr]
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


async def new_user(
    session: AsyncSession, email: str, password: str = PASSWORD, **fields: Any
) -> User:
    data = UserCreate(email=email, display_name=email.split("@")[0], password=password, **fields)
    return await UserRepository(session).create(data)


async def new_team(session: AsyncSession, owner: User, slug: str, **fields: Any) -> Team:
    data = TeamCreate(name=slug.title(), slug=slug, owner_id=owner.id, **fields)
    return await TeamRepository(session).create(data)


def agent_data(team_id: uuid.UUID, slug: str, **fields: Any) -> AgentCreate:
    fields.setdefault("personality", AgentPersonality(system_prompt_template=f"You are {slug}."))
    return AgentCreate(team_id=team_id, name=slug.title(), slug=slug, **fields)


async def new_agent(session: AsyncSession, team: Team, slug: str, **fields: Any) -> Agent:
    return await AgentRepository(session).create(agent_data(team.id, slug, **fields))


async def new_conversation(
    session: AsyncSession, team: Team, agent: Agent, user: User
) -> Conversation:
    data = ConversationCreate(team_id=team.id, agent_id=agent.id, user_id=user.id)
    return await ConversationRepository(session).create(data)


async def still_usable(session: AsyncSession) -> None:
    """A later write in the same session succeeds and is visible."""
    grace = await new_user(session, f"after-{uuid.uuid4().hex[:8]}@example.com")
    assert await scalar(session, 'SELECT count(*) FROM "user" WHERE id = :id', id=grace.id) == 1


async def assert_conflict(
    session: AsyncSession, table: str, write: Callable[[], Awaitable[Any]], message: str
) -> None:
    """`write` raises ConflictError(message), leaves `table` as it was, and the session works."""
    before = await count(session, table)
    with pytest.raises(ConflictError) as caught:
        await write()
    assert str(caught.value) == message
    assert await count(session, table) == before
    await still_usable(session)


def update_row(
    repository: Any, conversation: Conversation, id_attribute: str, data: Any
) -> Awaitable[Any]:
    """`repository.update` of the row the conversation fixture names by `id_attribute`."""
    keys = {"team_id": conversation.team_id} if isinstance(repository, TeamRowRepository) else {}
    return repository.update(getattr(conversation, id_attribute), data, **keys)


def error_fields(error: ValidationError) -> set[str]:
    return {str(detail["loc"][0]) for detail in error.errors() if detail["loc"]}


# -- generic repository -----------------------------------------------------------------


async def test_create_accepts_a_model_or_a_dict(session: AsyncSession, user: User) -> None:
    teams = TeamRepository(session)
    alpha = await teams.create(TeamCreate(name="Alpha", slug="alpha", owner_id=user.id))
    beta = await teams.create({"name": "Beta", "slug": "beta", "owner_id": str(user.id)})
    session.expunge_all()
    assert (await teams.get_or_raise(alpha.id)).name == "Alpha"
    loaded = await teams.get_or_raise(beta.id)
    assert (loaded.slug, loaded.owner_id, loaded.settings) == ("beta", user.id, {})


INVALID_CREATES: dict[str, tuple[type[Any], Callable[[Conversation], dict[str, Any]], str]] = {
    "user email": (
        UserRepository,
        lambda c: {"email": "not-an-email", "display_name": "X", "password": PASSWORD},
        "email",
    ),
    "user password": (
        UserRepository,
        lambda c: {"email": "x@example.com", "display_name": "X", "password": "short"},
        "password",
    ),
    "team slug": (
        TeamRepository,
        lambda c: {"name": "X", "slug": "Not A Slug", "owner_id": c.user_id},
        "slug",
    ),
    "agent personality": (
        AgentRepository,
        lambda c: {"team_id": c.team_id, "name": "X", "slug": "x"},
        "personality",
    ),
    "conversation user": (
        ConversationRepository,
        lambda c: {"team_id": c.team_id, "agent_id": c.agent_id, "user_id": "nope"},
        "user_id",
    ),
    "memory content": (
        MemoryRepository,
        lambda c: {"team_id": c.team_id, "memory_type": "semantic", "content": ""},
        "content",
    ),
}


@pytest.mark.parametrize("case", INVALID_CREATES)
async def test_invalid_create_data_never_reaches_the_database(
    session: AsyncSession, conversation: Conversation, case: str
) -> None:
    repository, data, field = INVALID_CREATES[case]
    with sql_sent(session) as statements, pytest.raises(ValidationError) as caught:
        await repository(session).create(data(conversation))
    assert field in error_fields(caught.value)
    assert statements == []


INVALID_UPDATES: dict[str, tuple[type[Any], str, dict[str, Any]]] = {
    "user": (UserRepository, "user_id", {"email": "not-an-email"}),
    "team": (TeamRepository, "team_id", {"slug": "Not A Slug"}),
    "agent": (AgentRepository, "agent_id", {"status": "retired"}),
    "conversation": (ConversationRepository, "id", {"title": "x" * 501}),
}


@pytest.mark.parametrize("case", INVALID_UPDATES)
async def test_invalid_update_data_never_reaches_the_database(
    session: AsyncSession, conversation: Conversation, case: str
) -> None:
    repository, id_attribute, data = INVALID_UPDATES[case]
    with sql_sent(session) as statements, pytest.raises(ValidationError) as caught:
        await update_row(repository(session), conversation, id_attribute, data)
    assert error_fields(caught.value) == set(data)
    assert statements == []


async def test_get_by_id_and_get_or_raise(session: AsyncSession, team: Team) -> None:
    teams = TeamRepository(session)
    assert await teams.get_by_id(team.id) is team
    missing = uuid.uuid4()
    assert await teams.get_by_id(missing) is None
    with pytest.raises(NotFoundError) as caught:
        await teams.get_or_raise(missing)
    assert (caught.value.entity, caught.value.key) == ("team", missing)
    assert str(caught.value) == f"team {missing} does not exist"


async def test_update_writes_only_the_fields_that_were_set(
    session: AsyncSession, team: Team
) -> None:
    teams = TeamRepository(session)
    await teams.update(team.id, {"settings": {"theme": "dark"}, "shared_skill_names": ["search"]})
    updated = await teams.update(team.id, {"name": "Acme Corp"})
    assert updated is team
    session.expunge_all()
    loaded = await teams.get_or_raise(team.id)
    assert (loaded.name, loaded.slug, loaded.settings, loaded.shared_skill_names) == (
        "Acme Corp",
        "acme",
        {"theme": "dark"},
        ["search"],
    )
    assert loaded.conversation_retention_days == 90


PARTIAL_UPDATES: dict[str, tuple[type[Any], str, str, Any]] = {
    # repository, id attribute of the conversation fixture, table, update model
    "user": (UserRepository, "user_id", "user", UserUpdate(display_name="Ada L.")),
    "team": (TeamRepository, "team_id", "team", TeamUpdate(name="Acme Corp")),
    "agent": (AgentRepository, "agent_id", "agent", AgentUpdate(tagline="At your service")),
    "conversation": (ConversationRepository, "id", "conversation", ConversationUpdate(title="Bye")),
}


@pytest.mark.parametrize("as_model", [True, False], ids=["Update model", "dict"])
@pytest.mark.parametrize("case", PARTIAL_UPDATES)
async def test_update_with_a_model_or_a_dict_is_partial(
    session: AsyncSession, conversation: Conversation, case: str, as_model: bool
) -> None:
    repository, id_attribute, table, data = PARTIAL_UPDATES[case]
    ((field, value),) = data.model_dump(exclude_unset=True).items()
    row_id = getattr(conversation, id_attribute)
    others = f"SELECT to_jsonb(t) - :column - 'updated_at' FROM \"{table}\" t WHERE id = :id"
    before = await scalar(session, others, id=row_id, column=field)
    await update_row(
        repository(session), conversation, id_attribute, data if as_model else {field: value}
    )
    changed = f'SELECT {field} FROM "{table}" WHERE id = :id'
    assert await scalar(session, changed, id=row_id) == value
    assert await scalar(session, others, id=row_id, column=field) == before


async def test_update_can_clear_a_nullable_field(session: AsyncSession, user: User) -> None:
    teams = TeamRepository(session)
    team = await new_team(session, user, "globex", webhook_url="https://example.com/hook")
    await teams.update(team.id, {"webhook_url": None})
    assert await scalar(session, "SELECT webhook_url FROM team WHERE id = :id", id=team.id) is None


REQUIRED_FIELDS: dict[str, tuple[type[Any], str, str, str, str]] = {
    # repository, id attribute of the conversation fixture, field, table, column
    "user.email": (UserRepository, "user_id", "email", "user", "email"),
    "user.password": (UserRepository, "user_id", "password", "user", "password_hash"),
    "team.slug": (TeamRepository, "team_id", "slug", "team", "slug"),
    "team.settings": (TeamRepository, "team_id", "settings", "team", "settings"),
    "agent.name": (AgentRepository, "agent_id", "name", "agent", "name"),
    "agent.memory": (AgentRepository, "agent_id", "memory", "agent", "memory_config"),
    "conversation.status": (ConversationRepository, "id", "status", "conversation", "status"),
}


@pytest.mark.parametrize("case", REQUIRED_FIELDS)
async def test_update_rejects_none_for_a_required_field(
    session: AsyncSession, conversation: Conversation, case: str
) -> None:
    repository, id_attribute, field, table, column = REQUIRED_FIELDS[case]
    row_id = getattr(conversation, id_attribute)
    value = f'SELECT "{column}"::text FROM "{table}" WHERE id = :id'
    before = await scalar(session, value, id=row_id)
    with pytest.raises(ValidationError) as caught:
        await update_row(repository(session), conversation, id_attribute, {field: None})
    assert field in error_fields(caught.value)
    assert await scalar(session, value, id=row_id) == before


async def test_update_writes_sub_configs_changed_in_place(
    session: AsyncSession, agent: Agent
) -> None:
    agents = AgentRepository(session)
    agent.memory.token_budget = 3000
    agent.boundaries.can_do.append("search the web")
    changes = {"memory": agent.memory, "boundaries": agent.boundaries}
    await agents.update(agent.id, changes, team_id=agent.team_id)
    session.expunge_all()
    loaded = await agents.get_or_raise(agent.id, team_id=agent.team_id)
    assert loaded.memory.token_budget == 3000
    assert loaded.boundaries.can_do == ["search the web"]
    budget = "SELECT memory_config ->> 'token_budget' FROM agent WHERE id = :id"
    assert await scalar(session, budget, id=agent.id) == "3000"


async def test_a_failed_update_leaves_the_row_as_it_was(session: AsyncSession, user: User) -> None:
    teams = TeamRepository(session)
    await new_team(session, user, "alpha")
    beta = await new_team(session, user, "beta")
    with pytest.raises(ConflictError, match="a team with slug 'alpha' already exists"):
        await teams.update(beta.id, {"name": "Beta 2", "slug": "alpha"})
    assert (beta.name, beta.slug) == ("Beta", "beta")  # readable: no lazy load needed
    assert await scalar(session, "SELECT slug FROM team WHERE id = :id", id=beta.id) == "beta"
    await teams.update(beta.id, {"slug": "gamma"})
    assert await scalar(session, "SELECT slug FROM team WHERE id = :id", id=beta.id) == "gamma"


async def test_update_of_a_missing_row_raises_not_found(session: AsyncSession) -> None:
    with pytest.raises(NotFoundError):
        await TeamRepository(session).update(uuid.uuid4(), {"name": "Nobody"})


async def test_delete_reports_whether_a_row_was_deleted(session: AsyncSession, user: User) -> None:
    teams = TeamRepository(session)
    team = await new_team(session, user, "globex")
    assert await teams.delete(team.id) is True
    assert await teams.delete(team.id) is False
    assert await teams.get_by_id(team.id) is None
    memberships = "SELECT count(*) FROM team_membership WHERE team_id = :id"
    assert await scalar(session, memberships, id=team.id) == 0


async def test_list_and_count_filter_on_columns_and_page(
    session: AsyncSession, team: Team, user: User
) -> None:
    agents = AgentRepository(session)
    other = await new_team(session, user, "globex")
    mine = [await new_agent(session, team, slug) for slug in ("ann", "bob", "cid", "dan", "eve")]
    await new_agent(session, other, "ann")
    await agents.set_status(mine[1].id, AgentStatus.ACTIVE, team_id=team.id)
    await agents.set_status(mine[3].id, AgentStatus.ACTIVE, team_id=team.id)

    assert await agents.count(team_id=other.id) == 1
    assert await agents.count(team_id=team.id) == 5
    assert await agents.count(team_id=team.id, status=AgentStatus.ACTIVE) == 2
    active = await agents.list(team_id=team.id, status=AgentStatus.ACTIVE)
    assert {a.slug for a in active} == {"bob", "dan"}

    pages = [await agents.list(limit=2, offset=offset, team_id=team.id) for offset in (0, 2, 4)]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert sorted(a.slug for page in pages for a in page) == ["ann", "bob", "cid", "dan", "eve"]


@pytest.mark.parametrize("method", ["list", "count"])
async def test_unknown_filter_raises_value_error(
    session: AsyncSession, team: Team, method: str
) -> None:
    with pytest.raises(ValueError, match="colour"):
        await getattr(TeamRepository(session), method)(colour="red")
    await still_usable(session)


BAD_READ_ARGUMENTS: dict[str, Callable[[AsyncSession, Conversation], Awaitable[Any]]] = {
    "list limit < 0": lambda s, c: TeamRepository(s).list(limit=-1),
    "list offset < 0": lambda s, c: TeamRepository(s).list(offset=-1),
    "messages limit < 0": lambda s, c: ConversationRepository(s).messages(
        c.id, limit=-1, team_id=c.team_id
    ),
    "filter text = int": lambda s, c: TeamRepository(s).list(slug=123),
    "filter uuid = text": lambda s, c: TeamRepository(s).count(owner_id="nope"),
}


@pytest.mark.parametrize("case", BAD_READ_ARGUMENTS)
async def test_bad_read_arguments_raise_value_error_and_keep_the_session(
    session: AsyncSession, conversation: Conversation, case: str
) -> None:
    with pytest.raises(ValueError):
        await BAD_READ_ARGUMENTS[case](session, conversation)
    await still_usable(session)


# -- errors -----------------------------------------------------------------------------


async def test_duplicate_team_slug(session: AsyncSession, team: Team, user: User) -> None:
    data = TeamCreate(name="Acme 2", slug="acme", owner_id=user.id)
    await assert_conflict(
        session,
        "team",
        lambda: TeamRepository(session).create(data),
        "a team with slug 'acme' already exists",
    )


async def test_duplicate_email_in_another_case(session: AsyncSession, user: User) -> None:
    await assert_conflict(
        session,
        "user",
        lambda: new_user(session, "ADA@example.com"),
        "a user with email ada@example.com already exists",
    )


async def test_duplicate_agent_slug_within_a_team(
    session: AsyncSession, agent: Agent, user: User
) -> None:
    await assert_conflict(
        session,
        "agent",
        lambda: AgentRepository(session).create(agent_data(agent.team_id, "kyra")),
        f"an agent with slug 'kyra' already exists in team {agent.team_id}",
    )
    other = await new_team(session, user, "globex")
    assert (await new_agent(session, other, "kyra")).team_id == other.id


async def test_duplicate_membership(session: AsyncSession, team: Team, user: User) -> None:
    """The fixture user owns the fixture team, so is already its member."""
    teams = TeamRepository(session)
    await assert_conflict(
        session,
        "team_membership",
        lambda: teams.add_member(user.id, role=UserRole.ADMIN, team_id=team.id),
        f"user {user.id} is already a member of team {team.id}",
    )


MISSING_PARENTS: dict[
    str, tuple[str, Callable[[AsyncSession, Conversation, uuid.UUID], Awaitable[Any]], str]
] = {
    "team.owner_id": (
        "team",
        lambda s, c, missing: TeamRepository(s).create(
            TeamCreate(name="X", slug="x-team", owner_id=missing)
        ),
        "user {missing} does not exist (referenced by team.owner_id)",
    ),
    "team_membership.user_id": (
        "team_membership",
        lambda s, c, missing: TeamRepository(s).add_member(missing, team_id=c.team_id),
        "user {missing} does not exist (referenced by team_membership.user_id)",
    ),
    "agent.team_id": (
        "agent",
        lambda s, c, missing: AgentRepository(s).create(agent_data(missing, "zed")),
        "team {missing} does not exist (referenced by agent.team_id)",
    ),
    "conversation.user_id": (
        "conversation",
        lambda s, c, missing: ConversationRepository(s).create(
            ConversationCreate(team_id=c.team_id, agent_id=c.agent_id, user_id=missing)
        ),
        "user {missing} does not exist (referenced by conversation.user_id)",
    ),
    "message.conversation_id": (
        "message",
        lambda s, c, missing: ConversationRepository(s).add_message(
            missing, MessageCreate(role=MessageRole.USER, content="hello?"), team_id=c.team_id
        ),
        "conversation {missing} is not a conversation of team {team_id}",
    ),
    "message.agent_id": (
        "message",
        lambda s, c, missing: ConversationRepository(s).add_message(
            c.id,
            MessageCreate(role=MessageRole.ASSISTANT, content="hi", agent_id=missing),
            team_id=c.team_id,
        ),
        "agent {missing} is not an agent of team {team_id}, the team of the message's conversation",
    ),
}


@pytest.mark.parametrize("case", MISSING_PARENTS)
async def test_missing_parent_is_named(
    session: AsyncSession, conversation: Conversation, case: str
) -> None:
    table, write, message = MISSING_PARENTS[case]
    missing = uuid.uuid4()
    await assert_conflict(
        session,
        table,
        lambda: write(session, conversation, missing),
        message.format(missing=missing, team_id=conversation.team_id),
    )


async def test_deleting_a_referenced_row_names_the_referrer(
    session: AsyncSession, team: Team, user: User
) -> None:
    await assert_conflict(
        session,
        "user",
        lambda: UserRepository(session).delete(user.id),
        f"user {user.id} is still referenced by team",
    )
    assert await TeamRepository(session).get_by_id(team.id) is team
