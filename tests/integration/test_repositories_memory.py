"""MemoryRepository on a real database: team-scoped search, versions, links, tags and history.

Each test runs in a transaction that is rolled back afterwards. The concurrency tests are in
test_committed.py, the filtered search among many memories of other teams in
test_team_search.py.
"""

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    ConflictError,
    EmbeddingDimensionError,
    Memory,
    MemoryCreate,
    MemoryRepository,
    MemorySearchResult,
    MemoryStatus,
    MemoryTier,
    MemoryType,
    NotFoundError,
    SkillStoreError,
    Team,
    TeamCreate,
    TeamRepository,
    User,
    get_engine,
    get_session_factory,
    migrate,
)
from skill_store.repositories import memory as memory_module
from skill_store.settings import get_settings

from ..support import fingerprint, run, scalar, unit_vector
from .test_repositories import count, new_user

WHEN = datetime(2030, 1, 1, tzinfo=UTC)

# -- helpers ----------------------------------------------------------------------------


async def row(session: AsyncSession, sql: str, **params: Any) -> tuple[Any, ...]:
    return tuple((await session.exec(text(sql), params=params)).one())  # type: ignore[call-overload]


async def counts(session: AsyncSession) -> tuple[int, int, int]:
    return (
        await count(session, "memory"),
        await count(session, "memory_tag"),
        await count(session, "memory_log"),
    )


def data(team: Team, content: str, *hot: int, **fields: Any) -> MemoryCreate:
    """Create data for a semantic memory, embedded by `unit_vector(*hot)` if `hot` is given."""
    fields.setdefault("memory_type", MemoryType.SEMANTIC)
    if hot:
        fields["embedding"] = unit_vector(*hot)
    return MemoryCreate(team_id=team.id, content=content, **fields)


async def memory(
    repo: MemoryRepository, team: Team, content: str, *hot: int, **fields: Any
) -> Memory:
    return await repo.create(data(team, content, *hot, **fields))


async def status(session: AsyncSession, memory_id: uuid.UUID) -> str:
    return str(
        await scalar(session, "SELECT status::text FROM memory WHERE id = :id", id=memory_id)
    )


async def set_status(session: AsyncSession, memory_id: uuid.UUID, value: MemoryStatus) -> None:
    await run(
        session, "UPDATE memory SET status = :value WHERE id = :id", id=memory_id, value=value
    )


def contents(results: Sequence[Memory]) -> list[str]:
    return [m.content for m in results]


async def ids(results: Awaitable[Sequence[Memory]]) -> set[uuid.UUID]:
    return {m.id for m in await results}


async def audit(repo: MemoryRepository, memory: Memory) -> list[tuple[Any, ...]]:
    history = await repo.history(memory.id, team_id=memory.team_id)
    return [(h.action, h.changed_by, h.reason) for h in history]


@pytest.fixture
def memories(session: AsyncSession) -> MemoryRepository:
    return MemoryRepository(session)


@pytest.fixture
async def other_team(session: AsyncSession, user: User) -> Team:
    data = TeamCreate(name="Globex", slug="globex", owner_id=user.id)
    return await TeamRepository(session).create(data)


@pytest.fixture
async def other_agent(session: AsyncSession, team: Team) -> Agent:
    personality = AgentPersonality(system_prompt_template="You are Zed.")
    data = AgentCreate(team_id=team.id, name="Zed", slug="zed", personality=personality)
    return await AgentRepository(session).create(data)


# -- create -----------------------------------------------------------------------------


async def test_create_stores_each_tag_once(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    created = await memory(memories, team, "Ada likes tea.", 0, tags=["tea", "ada", "tea", " ada "])
    assert await memories.tags(created.id, team_id=created.team_id) == ["ada", "tea"]
    tags = "SELECT count(*) FROM memory_tag WHERE memory_id = :id"
    assert await scalar(session, tags, id=created.id) == 2
    session.expunge_all()
    loaded = await memories.get(created.id, team_id=team.id)
    assert (loaded.content, loaded.version) == ("Ada likes tea.", 1)
    assert loaded.status == MemoryStatus.ACTIVE
    assert loaded.embedding is not None and list(loaded.embedding) == unit_vector(0)


MISSING_PARENT_MESSAGES = {
    "team_id": "{parent} {missing} does not exist (referenced by memory.{field})",
    "agent_id": "agent {missing} is not an agent of team {team}, the team of the memory",
    "user_id": "{parent} {missing} does not exist (referenced by memory.{field})",
    "source_conversation_id": "conversation {missing} is not a conversation of team {team},"
    " the team of the memory",
}


@pytest.mark.parametrize(
    ("field", "parent"),
    [
        ("team_id", "team"),
        ("agent_id", "agent"),
        ("user_id", "user"),
        ("source_conversation_id", "conversation"),
    ],
)
async def test_failed_create_leaves_no_memory_tags_or_history(
    session: AsyncSession, memories: MemoryRepository, team: Team, field: str, parent: str
) -> None:
    missing = uuid.uuid4()
    fields = {"team_id": team.id, field: missing}
    before = await counts(session)
    with pytest.raises(ConflictError) as caught:
        await memories.create(
            MemoryCreate(memory_type=MemoryType.SEMANTIC, content="x", tags=["a", "b"], **fields)
        )
    assert str(caught.value) == MISSING_PARENT_MESSAGES[field].format(
        parent=parent, missing=missing, field=field, team=team.id
    )
    assert await counts(session) == before
    created = await memory(memories, team, "Still works.", 0, tags=["a"])
    assert await memories.tags(created.id, team_id=created.team_id) == ["a"]


async def test_embedding_length_is_checked_against_the_column(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "3")
    get_settings.cache_clear()
    try:
        await migrate(empty_database_url)
    finally:
        monkeypatch.delenv("EMBEDDING_DIMENSIONS")
        get_settings.cache_clear()
    assert get_settings().embedding_dimensions == 1536  # the models accept 1536 values
    engine = await get_engine(empty_database_url)
    try:
        async with get_session_factory(engine)() as session:
            memories = MemoryRepository(session)
            team_id = uuid.uuid4()
            new = MemoryCreate(
                team_id=team_id, memory_type="semantic", content="x", embedding=unit_vector(0)
            )
            with pytest.raises(EmbeddingDimensionError) as caught:
                await memories.create(new)
            assert (caught.value.expected, caught.value.got) == (3, 1536)
            with pytest.raises(EmbeddingDimensionError) as caught:
                await memories.search_by_embedding(unit_vector(0), team_id=team_id)
            assert (caught.value.expected, caught.value.got) == (3, 1536)
            assert await count(session, "memory") == 0
    finally:
        await engine.dispose()


# -- search -----------------------------------------------------------------------------


async def test_search_ranks_by_cosine_similarity(memories: MemoryRepository, team: Team) -> None:
    same = await memory(memories, team, "same", 0)
    await memory(memories, team, "orthogonal", 1)
    await memory(memories, team, "far", 0, 1, 2)
    await memory(memories, team, "close", 0, 1)

    results = await memories.search_by_embedding(unit_vector(0), team_id=team.id)
    assert contents(results) == ["same", "close", "far", "orthogonal"]
    assert [r.similarity for r in results] == pytest.approx([1, 2**-0.5, 3**-0.5, 0], abs=1e-6)
    assert isinstance(results[0], MemorySearchResult)
    assert (results[0].id, results[0].team_id) == (same.id, team.id)
    stored = await memories.get(same.id, team_id=team.id)
    assert results[0] == MemorySearchResult.model_validate(
        stored, update={"similarity": results[0].similarity}
    )

    async def search(**options: Any) -> list[str]:
        return contents(
            await memories.search_by_embedding(unit_vector(0), team_id=team.id, **options)
        )

    assert await search(limit=2) == ["same", "close"]
    assert await search(min_similarity=0.6) == ["same", "close"]
    assert await search(min_similarity=0.5, limit=10) == ["same", "close", "far"]


async def test_search_returns_only_active_unexpired_embedded_memories(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    await memory(memories, team, "active", 0)
    await memory(memories, team, "not embedded")
    await memory(memories, team, "expired", 0, expires_at=datetime(2000, 1, 1, tzinfo=UTC))
    await memory(memories, team, "expires later", 0, expires_at=WHEN)
    for value in (MemoryStatus.ARCHIVED, MemoryStatus.DISPUTED, MemoryStatus.SUPERSEDED):
        await set_status(session, (await memory(memories, team, value, 0)).id, value)

    results = await memories.search_by_embedding(unit_vector(0), team_id=team.id)
    assert sorted(contents(results)) == ["active", "expires later"]


async def test_search_for_an_agent(
    memories: MemoryRepository, team: Team, agent: Agent, other_agent: Agent
) -> None:
    await memory(memories, team, "team-wide", 0)
    await memory(memories, team, "Kyra's", 0, agent_id=agent.id)
    await memory(memories, team, "Zed's", 0, agent_id=other_agent.id)
    private = MemoryType.AGENT_PRIVATE
    await memory(memories, team, "Kyra's secret", 0, agent_id=agent.id, memory_type=private)
    await memory(memories, team, "Zed's secret", 0, agent_id=other_agent.id, memory_type=private)
    await memory(memories, team, "no one's secret", 0, memory_type=private)  # reaches no agent

    async def search(agent_id: uuid.UUID | None, **options: Any) -> list[str]:
        results = await memories.search_by_embedding(
            unit_vector(0), team_id=team.id, agent_id=agent_id, **options
        )
        return sorted(contents(results))

    assert await search(agent.id) == ["Kyra's", "Kyra's secret", "team-wide"]
    assert await search(other_agent.id) == ["Zed's", "Zed's secret", "team-wide"]
    assert await search(None) == ["Kyra's", "Zed's", "team-wide"]
    assert await search(None, memory_types=[private]) == []
    assert await search(agent.id, memory_types=[private]) == ["Kyra's secret"]


async def test_search_about_a_user(
    session: AsyncSession, memories: MemoryRepository, team: Team, user: User
) -> None:
    grace = await new_user(session, "grace@example.com")
    await memory(memories, team, "about Ada", 0, user_id=user.id)
    await memory(memories, team, "about Grace", 0, user_id=grace.id)
    await memory(memories, team, "about no one", 0)

    async def search(user_id: uuid.UUID | None) -> list[str]:
        results = await memories.search_by_embedding(
            unit_vector(0), team_id=team.id, user_id=user_id
        )
        return sorted(contents(results))

    assert await search(grace.id) == ["about Grace", "about no one"]
    assert await search(user.id) == ["about Ada", "about no one"]
    assert await search(None) == ["about Ada", "about Grace", "about no one"]


async def test_search_by_memory_type(memories: MemoryRepository, team: Team) -> None:
    for memory_type in (MemoryType.SEMANTIC, MemoryType.EPISODIC, MemoryType.PROCEDURAL):
        await memory(memories, team, memory_type, 0, memory_type=memory_type)
    wanted = [MemoryType.EPISODIC, MemoryType.PROCEDURAL]
    results = await memories.search_by_embedding(
        unit_vector(0), team_id=team.id, memory_types=wanted
    )
    assert sorted(contents(results)) == ["episodic", "procedural"]


@pytest.mark.parametrize("exact", [True, False], ids=["exact-scan", "hnsw-iterative-scan"])
async def test_equal_similarities_are_ordered_by_id(
    memories: MemoryRepository, team: Team, monkeypatch: pytest.MonkeyPatch, exact: bool
) -> None:
    same = sorted([(await memory(memories, team, f"same {n}", 0)).id for n in range(6)])
    await memory(memories, team, "other", 1)
    if not exact:
        monkeypatch.setattr(memory_module, "EXACT_SEARCH_MAX_ROWS", 0)
        definitions = await memories.session.exec(
            text("SELECT unnest(memory_team_index_definitions(:team, 0, 1, false))"),
            params={"team": team.id},
        )
        for (definition,) in definitions.all():
            await memories.session.exec(text(definition))

    results = await memories.search_by_embedding(unit_vector(0), team_id=team.id, limit=6)
    assert [r.id for r in results] == same
    if exact:
        results = await memories.search_by_embedding(unit_vector(0), team_id=team.id, limit=3)
        assert [r.id for r in results] == same[:3]


async def test_find_similar_uses_a_threshold(memories: MemoryRepository, team: Team) -> None:
    near = unit_vector(0)
    near[1] = 0.3  # cosine similarity to unit_vector(0): 1 / sqrt(1.09) = 0.958
    await memory(memories, team, "identical", 0)
    await memory(memories, team, "near duplicate", embedding=near)
    await memory(memories, team, "related", 0, 1)
    found = await memories.find_similar(unit_vector(0), team_id=team.id)
    assert contents(found) == ["identical", "near duplicate"]
    assert found[1].similarity == pytest.approx(1.09**-0.5, abs=1e-6)
    assert len(await memories.find_similar(unit_vector(0), team_id=team.id, threshold=0.5)) == 3
    assert (
        len(await memories.find_similar(unit_vector(0), team_id=team.id, threshold=0.5, limit=1))
        == 1
    )


BAD_READS: dict[str, Callable[[MemoryRepository, Team], Awaitable[Any]]] = {
    "search limit < 0": lambda r, t: r.search_by_embedding(unit_vector(0), team_id=t.id, limit=-1),
    "search all-zero query": lambda r, t: r.search_by_embedding(
        [0.0] * len(unit_vector(0)), team_id=t.id
    ),
    "search of another dimension": lambda r, t: r.search_by_embedding([1.0, 0.0], team_id=t.id),
    "with_tag limit < 0": lambda r, t: r.with_tag("tea", team_id=t.id, limit=-1),
    "with_tag NUL": lambda r, t: r.with_tag("te\x00a", team_id=t.id),
}


@pytest.mark.parametrize("case", BAD_READS)
async def test_bad_read_arguments_raise_value_error_and_keep_the_session(
    memories: MemoryRepository, team: Team, case: str
) -> None:
    await memory(memories, team, "Ada likes tea.", 0, tags=["tea"])
    with pytest.raises(ValueError):
        await BAD_READS[case](memories, team)
    assert contents(await memories.with_tag("tea", team_id=team.id)) == ["Ada likes tea."]


# -- team isolation ---------------------------------------------------------------------


@pytest.fixture
async def two_teams(
    memories: MemoryRepository, team: Team, other_team: Team
) -> dict[uuid.UUID, set[uuid.UUID]]:
    """The same memories (content, embedding, tags) in both teams: their ids by team id."""
    made: dict[uuid.UUID, set[uuid.UUID]] = {}
    for owner in (team, other_team):
        made[owner.id] = {
            (await memory(memories, owner, "Ada likes tea.", 0, tags=["tea"])).id,
            (await memory(memories, owner, "Ada likes green tea.", 0, 1, tags=["tea"])).id,
        }
    return made


ISOLATED_READS: dict[str, Callable[[MemoryRepository, uuid.UUID], Awaitable[set[uuid.UUID]]]] = {
    "search_by_embedding": lambda r, t: ids(r.search_by_embedding(unit_vector(0), team_id=t)),
    "find_similar": lambda r, t: ids(r.find_similar(unit_vector(0), team_id=t, threshold=0.0)),
    "with_tag": lambda r, t: ids(r.with_tag("tea", team_id=t)),
    "list": lambda r, t: ids(r.list(team_id=t)),
}


@pytest.mark.parametrize("read", ISOLATED_READS)
async def test_reads_see_only_their_team(
    memories: MemoryRepository, two_teams: dict[uuid.UUID, set[uuid.UUID]], read: str
) -> None:
    for team_id, own in two_teams.items():
        assert await ISOLATED_READS[read](memories, team_id) == own


async def test_count_and_get_see_only_their_team(
    memories: MemoryRepository, two_teams: dict[uuid.UUID, set[uuid.UUID]]
) -> None:
    (team_a, own_a), (team_b, own_b) = two_teams.items()
    assert await memories.count(team_id=team_a) == await memories.count(team_id=team_b) == 2
    for memory_id in own_a:
        assert (await memories.get(memory_id, team_id=team_a)).team_id == team_a
    for memory_id in own_b:
        with pytest.raises(NotFoundError):
            await memories.get(memory_id, team_id=team_a)


# -- access, versions, links ------------------------------------------------------------


async def test_update_access_counts_retrievals(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    a, b = [await memory(memories, team, content, 0) for content in ("a", "b")]
    assert await memories.update_access([a.id, b.id, uuid.uuid4()], team_id=team.id) == 2
    assert await memories.update_access([a.id], team_id=team.id) == 1
    assert await memories.update_access([], team_id=team.id) == 0
    access = "SELECT access_count FROM memory WHERE id = :id"
    assert [await scalar(session, access, id=m.id) for m in (a, b)] == [2, 1]
    assert [h.action for h in await memories.history(a.id, team_id=a.team_id)] == ["created"]


async def test_supersede_makes_a_new_version(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    first = await memory(memories, team, "Ada likes tea.", 0, tags=["drinks"])
    second = await memories.supersede(
        first.id,
        data(team, "Ada likes coffee.", 1, tags=["drinks", "coffee"]),
        reason="she switched",
        actor="extractor",
    )
    third = await memories.supersede(second.id, data(team, "Ada likes cocoa.", 2), reason="again")
    session.expunge_all()
    versions = {
        m.content: (m.version, m.status, m.superseded_by)
        for m in await memories.list(team_id=team.id)
    }
    assert versions == {
        "Ada likes tea.": (1, MemoryStatus.SUPERSEDED, second.id),
        "Ada likes coffee.": (2, MemoryStatus.SUPERSEDED, third.id),
        "Ada likes cocoa.": (3, MemoryStatus.ACTIVE, None),
    }
    assert await memories.tags(second.id, team_id=second.team_id) == ["coffee", "drinks"]
    assert (await audit(memories, first))[-1] == ("superseded", "extractor", "she switched")
    assert (await memories.history(first.id, team_id=first.team_id))[-1].related_memory_ids == [
        second.id
    ]
    for hot in (0, 1, 2):
        found = await memories.search_by_embedding(
            unit_vector(hot), team_id=team.id, min_similarity=0.5
        )
        assert contents(found) == (["Ada likes cocoa."] if hot == 2 else [])


@pytest.mark.parametrize(
    ("old_pinned", "given", "new_pinned"),
    [
        (True, {}, True),
        (True, {"is_pinned": False}, False),
        (False, {}, False),
        (False, {"is_pinned": True}, True),
        (True, {"is_pinned": True}, True),
    ],
    ids=["inherited", "unpinned-by-the-data", "unpinned", "pinned-by-the-data", "kept"],
)
async def test_a_new_version_of_a_pinned_memory_is_pinned_unless_its_data_says_otherwise(
    session: AsyncSession,
    memories: MemoryRepository,
    team: Team,
    old_pinned: bool,
    given: dict[str, bool],
    new_pinned: bool,
) -> None:
    old = await memory(memories, team, "Ada is allergic to peanuts", 0, is_pinned=old_pinned)
    from_dict = await memories.supersede(
        old.id, {"team_id": team.id, "memory_type": "semantic", "content": "v2", **given}
    )
    from_model = await memories.supersede(from_dict.id, data(team, "v3", **given))
    session.expunge_all()

    assert (await memories.get(from_dict.id, team_id=team.id)).is_pinned is new_pinned
    assert (await memories.get(from_model.id, team_id=team.id)).is_pinned is new_pinned


SUPERSEDE_FAILURES: dict[
    str, tuple[Callable[[Team, Team], MemoryCreate], type[SkillStoreError], str]
] = {
    "not active": (
        lambda team, other: data(team, "new"),
        ConflictError,
        "is archived, not active",
    ),
    "into another team": (
        lambda team, other: data(other, "new"),
        NotFoundError,
        "does not exist",
    ),
    "missing agent": (
        lambda team, other: data(team, "new", tags=["x"], agent_id=uuid.uuid4()),
        ConflictError,
        "is not an agent of team",
    ),
}


@pytest.mark.parametrize("case", SUPERSEDE_FAILURES)
async def test_failed_supersede_changes_nothing(
    session: AsyncSession, memories: MemoryRepository, team: Team, other_team: Team, case: str
) -> None:
    new_data, error, message = SUPERSEDE_FAILURES[case]
    old = await memory(memories, team, "old", 0, tags=["x"])
    if case == "not active":
        await set_status(session, old.id, MemoryStatus.ARCHIVED)
    before = (await counts(session), await status(session, old.id))
    with pytest.raises(error, match=message):
        await memories.supersede(old.id, new_data(team, other_team), reason="because")
    assert (await counts(session), await status(session, old.id)) == before
    superseded_by = "SELECT superseded_by FROM memory WHERE id = :id"
    assert await scalar(session, superseded_by, id=old.id) is None
    assert (await memory(memories, team, "next", 0)).version == 1


async def test_supersede_of_a_missing_memory(memories: MemoryRepository, team: Team) -> None:
    with pytest.raises(NotFoundError):
        await memories.supersede(uuid.uuid4(), data(team, "new"))


async def test_a_newer_version_cannot_be_deleted_under_the_old(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    old = await memory(memories, team, "old", 0)
    new = await memories.supersede(old.id, data(team, "new", 0))
    before = await counts(session)
    with pytest.raises(ConflictError) as caught:
        await memories.delete(new.id, team_id=team.id)
    assert str(caught.value) == f"memory {new.id} is still referenced by memory"
    assert await counts(session) == before
    assert await memories.delete(old.id, team_id=team.id) is True


async def test_mark_contradiction(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    a, b = [await memory(memories, team, content, 0) for content in ("tea", "coffee")]
    first, second = await memories.mark_contradiction(
        a.id, b.id, team_id=team.id, actor="judge", reason="both?"
    )
    assert (first.id, second.id) == (a.id, b.id)
    session.expunge_all()
    a, b = [await memories.get(m.id, team_id=team.id) for m in (a, b)]
    assert (a.status, b.status) == (MemoryStatus.DISPUTED, MemoryStatus.DISPUTED)
    assert (a.contradicts, b.contradicts) == ([b.id], [a.id])
    assert (a.version, b.version) == (1, 1)
    assert (await audit(memories, a))[-1] == ("disputed", "judge", "both?")
    assert await memories.search_by_embedding(unit_vector(0), team_id=team.id) == []


async def test_relate_links_both_ways_once(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    a, b, c = [await memory(memories, team, content, 0) for content in ("a", "b", "c")]
    await memories.relate(a.id, b.id, team_id=team.id)
    await memories.relate(b.id, a.id, team_id=team.id)
    await memories.relate(a.id, c.id, team_id=team.id)
    session.expunge_all()
    a, b, c = [await memories.get(m.id, team_id=team.id) for m in (a, b, c)]
    assert (a.related_to, b.related_to, c.related_to) == ([b.id, c.id], [a.id], [a.id])
    assert {a.status, b.status, c.status} == {MemoryStatus.ACTIVE}


@pytest.mark.parametrize("link", ["mark_contradiction", "relate"])
async def test_links_stay_within_one_team(
    session: AsyncSession, memories: MemoryRepository, team: Team, other_team: Team, link: str
) -> None:
    ours = await memory(memories, team, "ours", 0)
    theirs = await memory(memories, other_team, "theirs", 0)
    with pytest.raises(NotFoundError):
        await getattr(memories, link)(ours.id, theirs.id, team_id=team.id)
    with pytest.raises(NotFoundError):
        await getattr(memories, link)(ours.id, theirs.id, team_id=other_team.id)
    with pytest.raises(ValueError):
        await getattr(memories, link)(ours.id, ours.id, team_id=team.id)
    links = "SELECT status::text, contradicts, related_to FROM memory WHERE id = :id"
    for m in (ours, theirs):
        assert await row(session, links, id=m.id) == ("active", None, None)
    neighbour = await memory(memories, team, "neighbour", 0)
    await getattr(memories, link)(ours.id, neighbour.id, team_id=team.id)
    _, contradicts, related_to = await row(session, links, id=ours.id)
    assert (contradicts or related_to) == [neighbour.id]


# -- pins, tiers, archive, expiry, delete -----------------------------------------------


async def test_pin_and_unpin(session: AsyncSession, memories: MemoryRepository, team: Team) -> None:
    m = await memory(memories, team, "Ada likes tea.", 0)
    pinned = "SELECT is_pinned FROM memory WHERE id = :id"
    await memories.pin(m.id, team_id=m.team_id)
    assert await scalar(session, pinned, id=m.id) is True
    await memories.unpin(m.id, team_id=m.team_id)
    assert await scalar(session, pinned, id=m.id) is False


async def test_set_tier_is_logged_as_promotion_or_demotion(
    memories: MemoryRepository, team: Team
) -> None:
    m = await memory(memories, team, "Ada likes tea.", 0)
    await memories.set_tier(m.id, MemoryTier.HOT, team_id=m.team_id, actor="curator")
    await memories.set_tier(m.id, MemoryTier.COLD, team_id=m.team_id)
    assert await audit(memories, m) == [
        ("created", "system", None),
        ("promoted", "curator", None),
        ("demoted", "system", None),
    ]
    assert (await memories.get(m.id, team_id=m.team_id)).tier == MemoryTier.COLD


async def test_archive_hides_a_memory_from_search(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    kept = await memory(memories, team, "kept", 0)
    archived = await memory(memories, team, "archived", 0)
    await memories.archive(archived.id, team_id=archived.team_id, reason="stale")
    assert await status(session, archived.id) == "archived"
    assert await ids(memories.search_by_embedding(unit_vector(0), team_id=team.id)) == {kept.id}
    assert (await audit(memories, archived))[-1] == ("archived", "system", "stale")


async def test_search_and_retrieve_see_the_sessions_unflushed_changes(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    kept = await memory(memories, team, "kept", 0)
    changed = await memory(memories, team, "changed", 0)
    loaded = await session.get(Memory, (team.id, changed.id))
    assert loaded is not None
    loaded.status = MemoryStatus.ARCHIVED  # on the instance, not flushed yet

    assert await ids(memories.search_by_embedding(unit_vector(0), team_id=team.id)) == {kept.id}
    retrieved = await memories.retrieve(
        "kept changed", team_id=team.id, query_embedding=unit_vector(0)
    )
    assert {memory.id for memory in retrieved} == {kept.id}


async def test_expire_archives_what_has_expired(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    hour = timedelta(hours=1)
    expired = await memory(memories, team, "expired", 0, expires_at=WHEN - hour)
    due_now = await memory(memories, team, "due now", 0, expires_at=WHEN)
    later = await memory(memories, team, "later", 0, expires_at=WHEN + hour)
    never = await memory(memories, team, "never", 0)

    assert await memories.expire(now=WHEN, team_id=team.id) == 2
    assert await memories.expire(now=WHEN, team_id=team.id) == 0
    statuses = [await status(session, m.id) for m in (expired, due_now, later, never)]
    assert statuses == ["archived", "archived", "active", "active"]
    assert (await audit(memories, expired))[-1] == ("archived", "system", None)


async def test_expire_is_attributed(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    expired = await memory(memories, team, "expired", 0, expires_at=WHEN)
    assert await memories.expire(now=WHEN, team_id=team.id, actor="janitor", reason="ttl") == 1
    assert (await audit(memories, expired))[-1] == ("archived", "janitor", "ttl")


async def test_delete_keeps_the_history(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    m = await memory(memories, team, "Ada likes tea.", 0, tags=["tea"])
    assert await memories.delete(m.id, team_id=team.id, actor="dpo", reason="erasure request")
    assert await memories.delete(m.id, team_id=team.id) is False
    with pytest.raises(NotFoundError):
        await memories.get(m.id, team_id=team.id)
    assert await memories.tags(m.id, team_id=m.team_id) == []
    assert await audit(memories, m) == [
        ("created", "system", None),
        ("deleted", "dpo", "erasure request"),
    ]


# -- tags -------------------------------------------------------------------------------


async def test_add_and_remove_tags(memories: MemoryRepository, team: Team) -> None:
    m = await memory(memories, team, "Ada likes tea.", 0, tags=["b"])
    other = await memory(memories, team, "Ada likes cake.", 0, tags=["a"])
    assert await memories.add_tags(m.id, ["c", "a", "b", " a "], team_id=team.id) == ["a", "b", "c"]
    assert await memories.remove_tags(m.id, ["a", "z"], team_id=team.id) == 1
    assert await memories.tags(m.id, team_id=m.team_id) == ["b", "c"]
    assert await ids(memories.with_tag("c", team_id=team.id)) == {m.id}
    assert await ids(memories.with_tag("a", team_id=team.id)) == {other.id}
    assert await memories.with_tag("z", team_id=team.id) == []


async def test_tags_to_remove_are_read_like_tags_to_add(
    memories: MemoryRepository, team: Team
) -> None:
    m = await memory(memories, team, "Ada likes tea.", 0)
    assert await memories.add_tags(m.id, [" urgent "], team_id=team.id) == ["urgent"]
    assert await memories.remove_tags(m.id, [" urgent "], team_id=team.id) == 1
    with pytest.raises(ValidationError):
        await memories.remove_tags(m.id, ["ur\x00gent"], team_id=team.id)
    assert await memories.tags(m.id, team_id=m.team_id) == []


async def test_add_tags_validates_and_names_a_missing_memory(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    m = await memory(memories, team, "Ada likes tea.", 0)
    for bad in ([""], ["x" * 101], ["te\x00a"]):
        with pytest.raises(ValidationError):
            await memories.add_tags(m.id, bad, team_id=team.id)
    missing = uuid.uuid4()
    expected = f"memory {missing} is not a memory of team {team.id}"
    with pytest.raises(ConflictError) as caught:
        await memories.add_tags(missing, ["tea"], team_id=team.id)
    assert str(caught.value) == expected
    assert await count(session, "memory_tag") == 0
    assert await memories.add_tags(m.id, ["tea"], team_id=team.id) == ["tea"]


# -- history and attribution ------------------------------------------------------------


async def test_history_names_who_and_why(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    m = await memories.create(data(team, "v1", 0), actor="alice", reason="told by Ada")
    await memories.update(
        m.id, {"content": "v2"}, team_id=team.id, actor="bob", reason="correction"
    )
    await memories.pin(m.id, team_id=m.team_id)
    await memories.update(m.id, {"importance": 9}, team_id=team.id, actor="carol")
    history = await memories.history(m.id, team_id=m.team_id)
    assert [(h.action, h.changed_by, h.reason) for h in history] == [
        ("created", "alice", "told by Ada"),
        ("updated", "bob", "correction"),
        ("updated", "system", None),
        ("updated", "carol", None),
    ]
    assert [(h.old_content, h.new_content) for h in history[:2]] == [(None, "v1"), ("v1", "v2")]
    assert all(h.memory_id == m.id for h in history)


async def test_content_at(session: AsyncSession, memories: MemoryRepository, team: Team) -> None:
    m = await memory(memories, team, "v1", 0)
    await run(session, "UPDATE memory SET content = 'v2' WHERE id = :id", id=m.id)
    await run(session, "UPDATE memory SET importance = 8 WHERE id = :id", id=m.id)
    await memories.delete(m.id, team_id=team.id)
    moments = [h.created_at for h in await memories.history(m.id, team_id=m.team_id)]
    assert moments == sorted(moments) and len(set(moments)) == 4
    assert [await memories.content_at(m.id, at, team_id=team.id) for at in moments] == [
        "v1",
        "v2",
        "v2",
        None,
    ]
    assert (
        await memories.content_at(m.id, moments[0] - timedelta(seconds=1), team_id=team.id) is None
    )
    assert await memories.content_at(uuid.uuid4(), moments[0], team_id=team.id) is None


Write = Callable[[MemoryRepository, Memory, Memory, Team], Awaitable[Any]]
ATTRIBUTED_WRITES: dict[str, Write] = {
    "create": lambda r, a, b, t: r.create(data(t, "new"), actor="alice", reason="why"),
    "update": lambda r, a, b, t: r.update(
        a.id, {"importance": 2}, team_id=t.id, actor="alice", reason="why"
    ),
    "pin": lambda r, a, b, t: r.pin(a.id, team_id=t.id, actor="alice", reason="why"),
    "supersede": lambda r, a, b, t: r.supersede(a.id, data(t, "new"), reason="why", actor="alice"),
    "relate": lambda r, a, b, t: r.relate(a.id, b.id, team_id=t.id, actor="alice", reason="why"),
    "expire": lambda r, a, b, t: r.expire(now=WHEN, team_id=t.id, actor="alice", reason="why"),
    "delete": lambda r, a, b, t: r.delete(a.id, team_id=t.id, actor="alice", reason="why"),
    "failed create": lambda r, a, b, t: r.create(
        data(t, "new", agent_id=uuid.uuid4()), actor="alice", reason="why"
    ),
    "failed update": lambda r, a, b, t: r.update(
        a.id, {"content": None}, team_id=t.id, actor="alice", reason="why"
    ),
    "failed supersede": lambda r, a, b, t: r.supersede(
        a.id, data(t, "new", agent_id=uuid.uuid4()), reason="why", actor="alice"
    ),
    "failed relate": lambda r, a, b, t: r.relate(
        a.id, a.id, team_id=t.id, actor="alice", reason="why"
    ),
}


@pytest.mark.parametrize("write", ATTRIBUTED_WRITES)
async def test_attribution_does_not_leak_into_later_changes(
    session: AsyncSession, memories: MemoryRepository, team: Team, write: str
) -> None:
    target = await memory(memories, team, "target", 0, expires_at=WHEN)
    partner = await memory(memories, team, "partner", 0)
    bystander = await memory(memories, team, "bystander", 0)
    attributed = ATTRIBUTED_WRITES[write](memories, target, partner, team)
    if write.startswith("failed"):
        with pytest.raises((SkillStoreError, ValueError)):
            await attributed
    else:
        await attributed
    await run(session, "UPDATE memory SET importance = 7 WHERE id = :id", id=bystander.id)
    assert (await audit(memories, bystander))[-1] == ("updated", "system", None)


async def test_a_misspelt_field_changes_nothing(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    m = await memory(memories, team, "kept", 0, metadata={"k": 1})
    assert m.metadata_json == {"k": 1}
    with pytest.raises(ValidationError, match="contnet"):
        await memories.update(m.id, {"contnet": "new"}, team_id=team.id)
    stored = await scalar(session, "SELECT content FROM memory WHERE id = :id", id=m.id)
    assert stored == "kept"
    updated = await memories.update(m.id, {"metadata": {"k": 2}}, team_id=team.id)
    assert updated.metadata_json == {"k": 2}


async def test_a_superseded_memory_cannot_be_brought_back_or_changed(
    session: AsyncSession, memories: MemoryRepository, team: Team
) -> None:
    old = await memory(memories, team, "Ada likes tea.", 0)
    new = await memories.supersede(old.id, data(team, "Ada likes coffee.", 1), reason="switched")
    before = await fingerprint(session)
    for change in ({"status": "active"}, {"content": "Ada likes tea again."}, {"importance": 9}):
        with pytest.raises(ConflictError, match=f"superseded by {new.id} and cannot change"):
            await memories.update(old.id, change, team_id=team.id)
    with pytest.raises(ConflictError, match="superseded"):
        await memories.pin(old.id, team_id=team.id)
    with pytest.raises(ValidationError, match=r"only by MemoryRepository\.supersede"):
        await memories.update(new.id, {"status": "superseded"}, team_id=team.id)
    assert await fingerprint(session) == before
    hits = await memories.search_by_embedding(unit_vector(0), team_id=team.id)
    assert [hit.id for hit in hits] == [new.id]


async def test_a_loaded_memory_dumps_its_fields_in_the_models_order(
    memories: MemoryRepository, session: AsyncSession, team: Team
) -> None:
    created = await memory(
        memories, team, "Ada likes tea", 0, importance=7, metadata={"source": "chat"}
    )
    await memories.update(created.id, {"importance": 8}, team_id=team.id)  # refreshed columns
    session.expunge_all()

    loaded = await memories.get(created.id, team_id=team.id)
    dumped = loaded.model_dump(mode="json")

    expected = [field.serialization_alias or name for name, field in Memory.model_fields.items()]
    assert list(dumped) == expected
    assert expected[:6] == ["id", "team_id", "agent_id", "user_id", "memory_type", "content"]
    assert dumped["metadata"] == {"source": "chat"}
