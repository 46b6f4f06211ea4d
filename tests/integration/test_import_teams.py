"""A team's export imported into another team: agents found by slug (or mapped), links to
rows the other team lacks left out and counted, refusals by line, ids kept, nothing twice."""

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    Conversation,
    HashingEmbedder,
    MemoryFileError,
    MemoryRepository,
    MemoryType,
    NotFoundError,
    Team,
    TeamCreate,
    TeamRepository,
    User,
)
from skill_store.portability import ImportCounts, export_memories, import_memories

from ..support import fingerprint, unit_vector


async def new_agent(session: AsyncSession, team: Team, slug: str) -> Agent:
    return await AgentRepository(session).create(
        AgentCreate(
            team_id=team.id,
            name=slug.title(),
            slug=slug,
            personality=AgentPersonality(system_prompt_template=f"You are {slug}."),
        )
    )


@pytest.fixture
async def research(session: AsyncSession, user: User) -> Team:
    """The team imported into, with an agent of the same slug as `agent` and another."""
    team = await TeamRepository(session).create(
        TeamCreate(name="Research", slug="research", owner_id=user.id)
    )
    await new_agent(session, team, "kyra")
    await new_agent(session, team, "atlas")
    return team


async def export_file(session: AsyncSession, team: Team, path: Path) -> list[dict[str, Any]]:
    lines = [line async for line in export_memories(session, team.id)]
    path.write_text("".join(f"{line}\n" for line in lines))
    return [json.loads(line) for line in lines]


async def agents_of(session: AsyncSession, team: Team) -> dict[str, uuid.UUID]:
    return {agent.slug: agent.id for agent in await AgentRepository(session).list(team_id=team.id)}


async def test_an_export_imports_into_another_team_attached_to_its_agents_by_slug(
    session: AsyncSession,
    memories: MemoryRepository,
    embedder: HashingEmbedder,
    team: Team,
    agent: Agent,
    conversation: Conversation,
    research: Team,
    tmp_path: Path,
) -> None:
    gone = await memories.remember("Ada liked cake", MemoryType.SEMANTIC, team_id=team.id)
    await memories.archive(gone.id, team_id=team.id)  # not exported
    tea = await memories.remember(
        "Ada likes tea",
        MemoryType.SEMANTIC,
        team_id=team.id,
        agent_id=agent.id,
        source_conversation_id=conversation.id,
        source_message_ids=[uuid.uuid4()],
        tags=["drinks"],
    )
    await memories.remember(
        "Ada likes green tea",
        MemoryType.SEMANTIC,
        team_id=team.id,
        related_to=[tea.id, gone.id],
        contradicts=[gone.id],
    )
    path = tmp_path / "acme.jsonl"
    lines = await export_file(session, team, path)

    counts = await import_memories(session, path, research.id, embedder)
    again = await import_memories(session, path, research.id, embedder)

    [line] = [line for line in lines if line["content"] == "Ada likes tea"]
    assert (line["agent_id"], line["agent_slug"]) == (str(agent.id), "kyra")
    assert list(line)[:3] == ["id", "agent_id", "memory_type"]
    assert counts == ImportCounts(
        added=2, dropped={"conversations": 1, "messages": 1, "memories": 2}
    )
    assert again == ImportCounts(added=0, skipped=2)
    imported = {m.content: m for m in await memories.list(team_id=research.id)}
    assert set(imported) == {"Ada likes tea", "Ada likes green tea"}
    copied, related = imported["Ada likes tea"], imported["Ada likes green tea"]
    assert copied.id == tea.id  # one id in two teams: the keys are (team_id, id)
    assert copied.agent_id == (await agents_of(session, research))["kyra"]
    assert (copied.source_conversation_id, copied.source_message_ids) == (None, [])
    assert (related.related_to, related.contradicts) == ([tea.id], [])
    assert await memories.tags(copied.id, team_id=research.id) == ["drinks"]
    assert await memories.get(tea.id, team_id=team.id)  # the source team's memory is as it was


async def test_an_agent_map_attaches_the_memories_of_an_agent_to_another(
    session: AsyncSession,
    memories: MemoryRepository,
    embedder: HashingEmbedder,
    team: Team,
    agent: Agent,
    research: Team,
    tmp_path: Path,
) -> None:
    await memories.remember(
        "Ada likes tea", MemoryType.SEMANTIC, team_id=team.id, agent_id=agent.id
    )
    path = tmp_path / "acme.jsonl"
    await export_file(session, team, path)

    await import_memories(session, path, research.id, embedder, agent_map={"kyra": "atlas"})

    [imported] = await memories.list(team_id=research.id)
    assert imported.agent_id == (await agents_of(session, research))["atlas"]


async def test_a_memory_whose_agent_the_team_lacks_is_refused_by_its_line(
    session: AsyncSession,
    memories: MemoryRepository,
    embedder: HashingEmbedder,
    team: Team,
    agent: Agent,
    user: User,
    tmp_path: Path,
) -> None:
    bare = await TeamRepository(session).create(
        TeamCreate(name="Bare", slug="bare", owner_id=user.id)
    )
    await memories.remember(
        "Team-wide",
        MemoryType.SEMANTIC,
        team_id=team.id,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    await memories.remember("Kyra's", MemoryType.SEMANTIC, team_id=team.id, agent_id=agent.id)
    path = tmp_path / "acme.jsonl"
    lines = await export_file(session, team, path)
    del lines[1]["agent_slug"]
    written = tmp_path / "without-slug.jsonl"
    written.write_text(
        "".join(json.dumps(line) + "\n" for line in [*lines, {**lines[1], "id": None}])
    )
    before = await fingerprint(session)

    with pytest.raises(MemoryFileError) as slugged:
        await import_memories(session, path, bare.id, embedder)
    with pytest.raises(MemoryFileError) as unslugged:
        await import_memories(session, written, bare.id, embedder)

    assert slugged.value.problems == [
        "line 2: agent 'kyra' is not an agent of team bare: create it, or give the slug of"
        " one with --agent-map kyra=SLUG"
    ]
    assert unslugged.value.problems == [
        f"line {n}: agent_id names no agent of team bare, and the line has no agent_slug to"
        " find one by"
        for n in (2, 3)
    ]
    assert str(agent.id) not in str(slugged.value) + str(unslugged.value)
    assert await fingerprint(session) == before


async def test_a_line_about_no_user_of_the_store_is_refused_by_its_line(
    session: AsyncSession, embedder: HashingEmbedder, research: Team, user: User, tmp_path: Path
) -> None:
    path = tmp_path / "users.jsonl"
    path.write_text(
        json.dumps({"memory_type": "semantic", "content": "About Ada", "user_id": str(user.id)})
        + "\n"
        + json.dumps({"memory_type": "semantic", "content": "About?", "user_id": str(uuid.uuid4())})
        + "\n"
    )

    with pytest.raises(MemoryFileError) as refused:
        await import_memories(session, path, research.id, embedder)

    assert refused.value.problems == ["line 2: user_id names no user of this store"]
    assert await MemoryRepository(session).count(team_id=research.id) == 0


async def test_an_agent_map_to_an_agent_the_team_lacks_is_refused_before_the_file_is_read(
    session: AsyncSession, embedder: HashingEmbedder, research: Team, tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError, match="agent 'nobody' in team 'research' does not exist"):
        await import_memories(
            session, tmp_path / "missing.jsonl", research.id, embedder, agent_map={"k": "nobody"}
        )


async def test_restoring_a_memory_compares_its_links_to_what_the_team_has(
    session: AsyncSession,
    memories: MemoryRepository,
    embedder: HashingEmbedder,
    team: Team,
    conversation: Conversation,
    tmp_path: Path,
) -> None:
    """A conversation deleted since the export: the memory's link is gone (SET NULL) but
    not its messages' ids; the line's are left out, and the memory is restored, not refused."""
    memory = await memories.create(
        {
            "team_id": team.id,
            "memory_type": "semantic",
            "content": "Ada likes tea",
            "embedding": unit_vector(0),
            "source_conversation_id": conversation.id,
            "source_message_ids": [uuid.uuid4()],
        }
    )
    path = tmp_path / "acme.jsonl"
    [line] = await export_file(session, team, path)
    await session.delete(conversation)
    await session.flush()
    path.write_text(json.dumps({**line, "importance": 9}) + "\n")

    counts = await import_memories(session, path, team.id, embedder, on_existing="update")

    assert counts == ImportCounts(added=0, updated=1, dropped={"conversations": 1, "messages": 1})
    await session.refresh(memory)
    assert (memory.importance, memory.source_conversation_id) == (9, None)
