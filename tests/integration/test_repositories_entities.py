"""UserRepository, TeamRepository, AgentRepository and ConversationRepository on a real database.

Each test runs in a transaction that is rolled back afterwards; repositories never commit.
"""

import uuid
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentBoundaries,
    AgentMemoryConfig,
    AgentModelConfig,
    AgentPersonality,
    AgentRepository,
    AgentStatus,
    ConflictError,
    Conversation,
    ConversationRepository,
    ConversationStatus,
    MemoryCreate,
    MemoryRepository,
    MemoryType,
    MessageCreate,
    MessageRole,
    NotFoundError,
    Team,
    TeamRepository,
    User,
    UserRepository,
    UserRole,
)

from ..support import fingerprint
from .test_repositories import (
    PASSWORD,
    agent_data,
    assert_conflict,
    error_fields,
    new_agent,
    new_conversation,
    new_team,
    new_user,
    scalar,
    still_usable,
)

# -- users ------------------------------------------------------------------------------


async def test_password_is_stored_as_a_salted_argon2_hash(session: AsyncSession) -> None:
    users = [await new_user(session, email) for email in ("grace@example.com", "alan@example.com")]
    hashes = [
        await scalar(session, 'SELECT password_hash FROM "user" WHERE id = :id', id=u.id)
        for u in users
    ]
    assert all(h.startswith("$argon2") for h in hashes)
    assert hashes[0] != hashes[1]
    rows = [
        await scalar(session, 'SELECT row_to_json(u)::text FROM "user" u WHERE id = :id', id=u.id)
        for u in users
    ]
    assert all(PASSWORD not in row for row in rows)


async def test_get_by_email_ignores_case(session: AsyncSession) -> None:
    grace = await new_user(session, "grace@example.com")
    users = UserRepository(session)
    assert await users.get_by_email("Grace@EXAMPLE.com") is grace
    assert await users.get_by_email("grace@example.org") is None


@pytest.mark.parametrize(
    ("email", "password", "accepted"),
    [
        ("grace@example.com", PASSWORD, True),
        ("GRACE@example.com", PASSWORD, True),
        ("grace@example.com", "wrong horse", False),
        ("grace@example.com", "", False),
        ("nobody@example.com", PASSWORD, False),
        ("grace\x00@example.com", PASSWORD, False),
    ],
    ids=["right", "email case", "wrong password", "empty password", "unknown", "NUL in email"],
)
async def test_authenticate(
    session: AsyncSession, email: str, password: str, accepted: bool
) -> None:
    grace = await new_user(session, "grace@example.com")
    user = await UserRepository(session).authenticate(email, password)
    assert user is (grace if accepted else None)
    await still_usable(session)


async def test_an_inactive_user_cannot_authenticate(session: AsyncSession) -> None:
    users = UserRepository(session)
    grace = await new_user(session, "grace@example.com", is_active=False)
    assert await users.authenticate("grace@example.com", PASSWORD) is None
    await users.update(grace.id, {"is_active": True})
    assert await users.authenticate("grace@example.com", PASSWORD) is grace


async def test_set_password(session: AsyncSession) -> None:
    users = UserRepository(session)
    grace = await new_user(session, "grace@example.com")
    old_hash = grace.password_hash
    await users.set_password(grace.id, "battery staple")
    assert await users.authenticate("grace@example.com", PASSWORD) is None
    assert await users.authenticate("grace@example.com", "battery staple") is grace
    stored = await scalar(session, 'SELECT password_hash FROM "user" WHERE id = :id', id=grace.id)
    assert stored.startswith("$argon2") and stored != old_hash


async def test_set_password_rejects_a_short_one(session: AsyncSession) -> None:
    users = UserRepository(session)
    grace = await new_user(session, "grace@example.com")
    with pytest.raises(ValidationError) as caught:
        await users.set_password(grace.id, "short")
    assert "password" in error_fields(caught.value)
    assert await users.authenticate("grace@example.com", PASSWORD) is grace


async def test_update_with_a_password_rehashes_it(session: AsyncSession) -> None:
    users = UserRepository(session)
    grace = await new_user(session, "grace@example.com")
    first_hash = grace.password_hash
    await users.update(grace.id, {"display_name": "Grace H."})
    assert grace.password_hash == first_hash
    await users.update(grace.id, {"display_name": "Grace Hopper", "password": "battery staple"})
    session.expunge_all()
    loaded = await users.get_or_raise(grace.id)
    assert loaded.display_name == "Grace Hopper"
    assert loaded.password_hash.startswith("$argon2") and loaded.password_hash != first_hash
    assert await users.authenticate("grace@example.com", "battery staple") is not None
    assert await users.authenticate("grace@example.com", PASSWORD) is None


# -- teams ------------------------------------------------------------------------------


async def test_creating_a_team_makes_its_owner_a_member(session: AsyncSession, user: User) -> None:
    teams = TeamRepository(session)
    team = await new_team(session, user, "globex")
    members = await teams.members(team_id=team.id)
    assert [(m.user_id, m.role) for m in members] == [(user.id, UserRole.OWNER)]
    assert await teams.get_by_slug("globex") is team
    assert await teams.get_by_slug("initech") is None


async def test_failed_team_create_leaves_no_membership(session: AsyncSession, team: Team) -> None:
    grace = await new_user(session, "grace@example.com")
    await assert_conflict(
        session,
        "team_membership",
        lambda: new_team(session, grace, "acme"),
        "a team with slug 'acme' already exists",
    )
    assert await TeamRepository(session).teams_for_user(grace.id) == []


async def test_membership_lifecycle(session: AsyncSession, user: User) -> None:
    teams = TeamRepository(session)
    team = await new_team(session, user, "globex")
    grace = await new_user(session, "grace@example.com")

    membership = await teams.add_member(grace.id, team_id=team.id)
    assert membership.role == UserRole.MEMBER
    await teams.set_role(grace.id, UserRole.ADMIN, team_id=team.id)
    session.expunge_all()
    roles = {m.user_id: m.role for m in await teams.members(team_id=team.id)}
    assert roles == {user.id: UserRole.OWNER, grace.id: UserRole.ADMIN}

    assert await teams.remove_member(grace.id, team_id=team.id) is True
    assert await teams.remove_member(grace.id, team_id=team.id) is False
    assert [m.user_id for m in await teams.members(team_id=team.id)] == [user.id]
    with pytest.raises(NotFoundError):
        await teams.set_role(grace.id, UserRole.VIEWER, team_id=team.id)


async def test_members_come_with_their_user(session: AsyncSession, user: User) -> None:
    teams = TeamRepository(session)
    team = await new_team(session, user, "globex")
    grace = await new_user(session, "grace@example.com")
    await teams.add_member(grace.id, role=UserRole.VIEWER, team_id=team.id)
    session.expunge_all()
    members = await teams.members(team_id=team.id)
    # A lazy load here would fail: the async session cannot load on attribute access.
    assert {(m.user.email, m.role) for m in members} == {
        ("ada@example.com", UserRole.OWNER),
        ("grace@example.com", UserRole.VIEWER),
    }


async def test_the_owner_cannot_be_removed(session: AsyncSession, user: User) -> None:
    teams = TeamRepository(session)
    team = await new_team(session, user, "globex")
    with pytest.raises(ConflictError, match=str(user.id)):
        await teams.remove_member(user.id, team_id=team.id)
    assert [m.user_id for m in await teams.members(team_id=team.id)] == [user.id]


async def test_teams_for_user(session: AsyncSession, user: User) -> None:
    teams = TeamRepository(session)
    initech = await new_team(session, user, "initech")
    globex = await new_team(session, user, "globex")
    grace = await new_user(session, "grace@example.com")
    await teams.add_member(grace.id, team_id=initech.id)
    assert await teams.teams_for_user(user.id) == [globex, initech]
    assert await teams.teams_for_user(grace.id) == [initech]
    assert await teams.teams_for_user(uuid.uuid4()) == []


# -- agents -----------------------------------------------------------------------------


async def test_get_agent_by_slug_within_its_team(
    session: AsyncSession, agent: Agent, user: User
) -> None:
    agents = AgentRepository(session)
    other_team = await new_team(session, user, "globex")
    twin = await new_agent(session, other_team, "kyra")
    assert await agents.get_by_slug("kyra", team_id=agent.team_id) is agent
    assert await agents.get_by_slug("kyra", team_id=other_team.id) is twin
    assert await agents.get_by_slug("zed", team_id=agent.team_id) is None


async def test_list_for_team_by_name_and_status(
    session: AsyncSession, team: Team, user: User
) -> None:
    agents = AgentRepository(session)
    bravo = await new_agent(session, team, "bravo", status=AgentStatus.ACTIVE)
    alpha = await new_agent(session, team, "alpha")
    await new_agent(session, await new_team(session, user, "globex"), "charlie")
    assert await agents.list_for_team(team_id=team.id) == [alpha, bravo]
    assert await agents.list_for_team(team_id=team.id, status=AgentStatus.ACTIVE) == [bravo]
    assert await agents.list_for_team(team_id=team.id, status=AgentStatus.PAUSED) == []


async def test_set_status(session: AsyncSession, agent: Agent) -> None:
    agents = AgentRepository(session)
    await agents.set_status(agent.id, AgentStatus.PAUSED, team_id=agent.team_id)
    status = "SELECT status::text FROM agent WHERE id = :id"
    assert await scalar(session, status, id=agent.id) == "paused"
    with pytest.raises(NotFoundError):
        await agents.set_status(uuid.uuid4(), AgentStatus.ACTIVE, team_id=agent.team_id)


async def test_sub_configs_load_as_typed_models(session: AsyncSession, team: Team) -> None:
    agents = AgentRepository(session)
    personality = AgentPersonality(
        system_prompt_template="You are Zed.", tone="direct", traits={"curious": 0.9}
    )
    created = await agents.create(
        agent_data(
            team.id,
            "zed",
            personality=personality,
            model=AgentModelConfig(temperature=0.2),
            boundaries=AgentBoundaries(escalates_to="kyra"),
        )
    )
    session.expunge_all()
    loaded = await agents.get_or_raise(created.id, team_id=team.id)
    assert isinstance(loaded.personality, AgentPersonality)
    assert isinstance(loaded.model, AgentModelConfig)
    assert isinstance(loaded.memory, AgentMemoryConfig)
    assert isinstance(loaded.boundaries, AgentBoundaries)
    assert loaded.personality == personality
    assert (loaded.model.temperature, loaded.boundaries.escalates_to) == (0.2, "kyra")
    assert loaded.memory == AgentMemoryConfig()


async def test_dna_puts_the_team_skills_first(session: AsyncSession, user: User) -> None:
    agents = AgentRepository(session)
    team = await new_team(session, user, "globex", shared_skill_names=["search", "calendar"])
    agent = await new_agent(
        session,
        team,
        "zed",
        shared_skill_names=["calendar", "email"],
        custom_skill_names=["python", "search"],
        disabled_skill_names=["calendar"],
    )
    dna = await agents.dna(agent.id, team_id=team.id)
    assert (dna.id, dna.slug) == (agent.id, "zed")
    assert dna.shared_skill_names == ["search", "calendar", "email"]
    assert dna.effective_skills == ["search", "email", "python"]
    session.expunge_all()
    assert (await agents.get_or_raise(agent.id, team_id=team.id)).shared_skill_names == [
        "calendar",
        "email",
    ]
    with pytest.raises(NotFoundError):
        await agents.dna(uuid.uuid4(), team_id=team.id)


# -- conversations ----------------------------------------------------------------------


async def test_add_message_updates_the_conversation(
    session: AsyncSession, conversation: Conversation
) -> None:
    conversations = ConversationRepository(session)
    team_id = conversation.team_id
    first = await conversations.add_message(
        conversation.id,
        MessageCreate(role=MessageRole.USER, content="Hi", token_count=5),
        team_id=team_id,
    )
    last = await conversations.add_message(
        conversation.id,
        {"role": "assistant", "content": "Hello!", "token_count": 7},
        team_id=team_id,
    )
    assert (first.team_id, first.conversation_id) == (team_id, conversation.id)
    assert last.role == MessageRole.ASSISTANT

    def stats(c: Conversation) -> tuple[Any, ...]:
        return (c.message_count, c.total_input_tokens, c.total_output_tokens, c.token_count)

    assert stats(conversation) == (2, 5, 7, 12)
    assert conversation.last_message_at == last.created_at
    session.expunge_all()
    loaded = await conversations.get_or_raise(conversation.id, team_id=team_id)
    assert stats(loaded) == (2, 5, 7, 12)
    assert loaded.last_message_at == last.created_at


async def test_messages_page_backwards_in_time(
    session: AsyncSession, conversation: Conversation
) -> None:
    conversations = ConversationRepository(session)
    team = {"team_id": conversation.team_id}
    written = [
        (
            await conversations.add_message(
                conversation.id, {"role": "user", "content": f"{n}"}, **team
            )
        ).id
        for n in range(7)
    ]
    pages = [await conversations.messages(conversation.id, limit=3, **team)]
    while pages[-1]:
        pages.append(
            await conversations.messages(conversation.id, limit=3, before=pages[-1][0].id, **team)
        )
    assert [len(page) for page in pages] == [3, 3, 1, 0]
    assert [m.id for page in reversed(pages) for m in page] == written
    assert [m.content for m in pages[0]] == ["4", "5", "6"]


async def test_set_feedback(session: AsyncSession, conversation: Conversation) -> None:
    conversations = ConversationRepository(session)
    team = {"team_id": conversation.team_id}
    message = await conversations.add_message(
        conversation.id, {"role": "assistant", "content": "42"}, **team
    )
    await conversations.set_feedback(message.id, "positive", "Spot on", **team)
    with pytest.raises(ValidationError):
        await conversations.set_feedback(message.id, "great", **team)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        await conversations.set_feedback(uuid.uuid4(), "negative", **team)
    feedback = "SELECT feedback_rating || ': ' || feedback_comment FROM message WHERE id = :id"
    assert await scalar(session, feedback, id=message.id) == "positive: Spot on"


async def test_close(session: AsyncSession, conversation: Conversation) -> None:
    await ConversationRepository(session).close(conversation.id, team_id=conversation.team_id)
    status = "SELECT status::text FROM conversation WHERE id = :id"
    assert await scalar(session, status, id=conversation.id) == ConversationStatus.CLOSED.value


async def test_list_for_user_most_recent_first(
    session: AsyncSession, conversation: Conversation, team: Team, agent: Agent, user: User
) -> None:
    conversations = ConversationRepository(session)
    older = await new_conversation(session, team, agent, user)
    newer = await new_conversation(session, team, agent, user)
    grace = await new_user(session, "g@example.com")
    await TeamRepository(session).add_member(grace.id, team_id=team.id)
    graces = await new_conversation(session, team, agent, grace)
    globex = await new_team(session, user, "globex")
    elsewhere = await new_conversation(
        session, globex, await new_agent(session, globex, "zed"), user
    )
    for c in (older, newer):
        await conversations.add_message(c.id, {"role": "user", "content": "ping"}, team_id=team.id)

    listed = await conversations.list_for_user(user.id, team_id=team.id)
    assert [c.id for c in listed] == [newer.id, older.id, conversation.id]
    assert await conversations.list_for_user(graces.user_id, team_id=team.id) == [graces]
    assert await conversations.list_for_user(user.id, team_id=globex.id) == [elsewhere]


async def test_deleting_an_agent_keeps_its_data_unless_asked(
    session: AsyncSession, team: Team, agent: Agent, conversation: Conversation
) -> None:
    agents = AgentRepository(session)
    memories = MemoryRepository(session)
    kept = await memories.create(
        MemoryCreate(
            team_id=team.id, agent_id=agent.id, memory_type=MemoryType.SEMANTIC, content="x"
        )
    )
    before = await fingerprint(session)
    with pytest.raises(ConflictError, match="still has 1 memories and 1 conversations"):
        await agents.delete(agent.id, team_id=team.id)
    with pytest.raises(ConflictError, match=r"is still referenced by (memory|conversation)"):
        async with agents.writing():
            await session.exec(text("DELETE FROM agent WHERE id = :a"), params={"a": agent.id})
    assert await fingerprint(session) == before

    await agents.set_status(agent.id, AgentStatus.ARCHIVED, team_id=team.id)
    assert await memories.get_by_id(kept.id, team_id=team.id) is not None

    assert await agents.delete(agent.id, team_id=team.id, cascade=True)
    assert await memories.get_by_id(kept.id, team_id=team.id) is None
    counts = await session.exec(
        text("SELECT count(*) FROM conversation WHERE id = :c"), params={"c": conversation.id}
    )
    assert counts.scalar_one() == 0
    assert [log.action for log in await memories.history(kept.id, team_id=team.id)] == [
        "created",
        "deleted",
    ]
