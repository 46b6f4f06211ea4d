"""The synchronous Explorer reads a store through the repositories, from any thread or loop."""

from collections.abc import AsyncIterator, Iterator

import pandas as pd
import pytest
import sqlalchemy as sa

from skill_store import (
    AgentDNA,
    AgentStatus,
    Explorer,
    Memory,
    MemoryLogRead,
    MemoryRead,
    MemoryType,
    NotFoundError,
    ScoredMemory,
    TeamRead,
    embedder_from_settings,
    frame_columns,
    get_engine,
    to_frame,
)
from skill_store.demo import QUERY, SUCCESSOR, SUPERSEDED, ensure_demo

from ..support import create_database, drop_database


@pytest.fixture(scope="module")
async def demo_url(server_url: str) -> AsyncIterator[str]:
    """A database with the demo team, committed: the explorer reads it on connections of its own."""
    name = "skill_store_explore"
    url = await create_database(server_url, name)
    engine = await get_engine(url)
    await ensure_demo(engine, embedder_from_settings())
    await engine.dispose()
    yield url
    await drop_database(server_url, name)


@pytest.fixture(scope="module")
def store(demo_url: str) -> Iterator[Explorer]:
    with Explorer(demo_url) as store:
        yield store


def test_teams(store: Explorer) -> None:
    [team] = store.teams()

    assert isinstance(team, TeamRead) and team.slug == "demo"


async def test_a_call_inside_a_running_event_loop_as_in_jupyter(store: Explorer) -> None:
    assert [team.slug for team in store.teams()] == ["demo"]


def test_agents_are_their_dna_with_the_teams_skills(store: Explorer) -> None:
    agents = store.agents("demo")

    assert [agent.slug for agent in agents] == ["atlas", "kyra"]
    assert all(isinstance(agent, AgentDNA) for agent in agents)
    assert agents[1].effective_skills == ["web-search", "calendar", "small-talk", "reminders"]
    assert store.agents(agents[0].team_id, status=AgentStatus.ARCHIVED) == []


def test_memories_with_filters(store: Explorer) -> None:
    everything = store.memories("demo", limit=100)
    [superseded] = store.memories("demo", status="superseded")
    semantic = store.memories("demo", memory_type=MemoryType.SEMANTIC, limit=100)

    assert all(isinstance(memory, MemoryRead) for memory in everything)
    assert superseded.content == SUPERSEDED
    assert 0 < len(semantic) < len(everything)
    assert {memory.memory_type for memory in semantic} == {MemoryType.SEMANTIC}
    assert len(store.memories("demo", limit=3, offset=1)) == 3


def test_memories_by_every_column_the_demo_fills(store: Explorer) -> None:
    everything = store.memories("demo", limit=1000)
    swept = []
    for name in sorted(set(sa.inspect(Memory).columns.keys()) - {"team_id"}):
        held = (getattr(memory, name) for memory in everything)
        value = next((value for value in held if value is not None), None)
        if value is None:
            continue
        found = store.memories("demo", limit=1000, **{name: value})
        assert found and all(getattr(memory, name) == value for memory in found), name
        swept.append(name)

    assert {"agent_id", "user_id", "superseded_by", "source_conversation_id"} <= set(swept)


def test_unknown_team_agent_or_column(store: Explorer) -> None:
    with pytest.raises(NotFoundError, match="nowhere"):
        store.memories("nowhere")
    with pytest.raises(NotFoundError, match="nobody"):
        store.search("tea", "demo", agent="nobody")
    with pytest.raises(ValueError, match="colour"):
        store.memories("demo", colour="red")


def test_search_by_text_or_by_vector(store: Explorer) -> None:
    by_text = store.search(QUERY, "demo", agent="kyra", limit=3)
    [vector] = store.run(embedder_from_settings().embed([QUERY]))
    by_vector = store.search(vector, "demo", agent="kyra", limit=3)

    assert by_text[0].content == SUCCESSOR
    assert [hit.id for hit in by_vector] == [hit.id for hit in by_text]
    assert by_text[0].similarity >= by_text[1].similarity


def test_retrieve(store: Explorer) -> None:
    hits = store.retrieve(QUERY, "demo", agent="kyra", limit=4)

    assert len(hits) >= 4 and all(isinstance(hit, ScoredMemory) for hit in hits)
    assert SUCCESSOR in [hit.content for hit in hits]
    assert SUPERSEDED not in [hit.content for hit in hits]
    packed = store.retrieve(QUERY, "demo", agent="kyra", limit=4, token_budget=15)
    assert 0 < len(packed) < len(hits)


def test_history(store: Explorer) -> None:
    [superseded] = store.memories("demo", status="superseded")
    history = store.history(superseded.id, "demo")

    assert all(isinstance(log, MemoryLogRead) for log in history)
    assert [log.action for log in history] == ["created", "superseded"]
    assert history[1].changed_by == "kyra"


def test_frames_of_results_in_declared_order(store: Explorer) -> None:
    memories = to_frame(store.memories("demo", limit=100))
    agents = to_frame(store.agents("demo"))
    hits = to_frame(store.retrieve(QUERY, "demo", agent="kyra", limit=4))

    assert list(memories.columns) == frame_columns(MemoryRead)
    assert "embedding" not in memories.columns
    assert pd.api.types.is_datetime64_any_dtype(memories["created_at"])
    assert list(agents.columns)[-1] == "effective_skills"
    assert agents.loc[agents["slug"] == "kyra", "personality"].iloc[0]["tone"] == "friendly"
    assert list(hits.columns)[-2:] == ["score", "signals"]
    assert set(hits["signals"][0]) == {
        "semantic",
        "recency",
        "importance",
        "continuity",
        "relationship",
    }
