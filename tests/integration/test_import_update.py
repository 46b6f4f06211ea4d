"""`import_memories(on_existing="update")` (`memories import --update-existing`) restores the
memories of a file as the file holds them; and a line may name its team's id in any form."""

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    HashingEmbedder,
    MemoryFileError,
    MemoryRepository,
    MemoryTier,
    MemoryType,
    Team,
)
from skill_store.portability import ImportCounts, export_memories, import_memories

from ..support import fingerprint


async def exported(session: AsyncSession, team: Team) -> list[dict[str, Any]]:
    return [json.loads(line) async for line in export_memories(session, team.id)]


def written(path: Path, *lines: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


async def test_an_export_restores_every_field_and_the_tags(
    session: AsyncSession,
    team: Team,
    memories: MemoryRepository,
    embedder: HashingEmbedder,
    tmp_path: Path,
) -> None:
    """Fields at their defaults are left out of an export, and restored all the same."""
    memory = await memories.remember(
        "Ada likes tea", MemoryType.SEMANTIC, team_id=team.id, tags=["drinks", "ada"]
    )
    before = await exported(session, team)
    assert {"importance", "is_pinned", "metadata", "subject"}.isdisjoint(before[0])
    await memories.update(
        memory.id,
        {
            "importance": 9,
            "confidence": 0.5,
            "is_pinned": True,
            "metadata": {"edited": True},
            "subject": "tea",
            "tier": MemoryTier.HOT,
            "expires_at": datetime.now(UTC) + timedelta(days=3),
            "related_to": [uuid.uuid4()],
        },
        team_id=team.id,
    )
    await memories.remove_tags(memory.id, ["drinks"], team_id=team.id)
    await memories.add_tags(memory.id, ["edited"], team_id=team.id)

    path = written(tmp_path / "memories.jsonl", *before)
    counts = await import_memories(session, path, team.id, embedder, on_existing="update")

    assert counts == ImportCounts(added=0, updated=1)
    assert await exported(session, team) == before
    assert await memories.tags(memory.id, team_id=team.id) == ["ada", "drinks"]


async def test_an_edited_line_without_its_embedding_is_embedded_again(
    session: AsyncSession,
    team: Team,
    memories: MemoryRepository,
    embedder: HashingEmbedder,
    tmp_path: Path,
) -> None:
    memory = await memories.remember("Ada likes tea", MemoryType.SEMANTIC, team_id=team.id)
    [line] = await exported(session, team)
    del line["embedding"], line["embedding_model"]
    path = written(tmp_path / "memories.jsonl", {**line, "content": "Ada likes coffee"})

    counts = await import_memories(session, path, team.id, embedder, on_existing="update")

    [expected] = await embedder.embed(["Ada likes coffee"])
    restored = await memories.get(memory.id, team_id=team.id)
    assert counts == ImportCounts(added=0, updated=1, embedded=1)
    assert restored.content == "Ada likes coffee"
    assert np.allclose(restored.embedding_array, expected)  # type: ignore[arg-type]
    assert restored.embedding_model == embedder.model
    [hit] = await memories.recall("coffee", team_id=team.id, limit=1)
    assert hit.id == memory.id


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("memory_type", "episodic", "memory_type is 'episodic' in the file but 'semantic'"),
        ("agent_id", "agent", "its agent is 'kyra' in the file but none (team-wide)"),
        ("source_type", "explicit", "source_type is 'explicit' in the file but 'extraction'"),
        (
            "created_at",
            "2020-01-01T00:00:00Z",
            "created_at is '2020-01-01T00:00:00+00:00' in the file but '",
        ),
    ],
)
async def test_a_line_that_would_change_what_a_memory_keeps_is_refused(
    session: AsyncSession,
    team: Team,
    agent: Any,
    memories: MemoryRepository,
    embedder: HashingEmbedder,
    tmp_path: Path,
    field: str,
    value: str,
    said: str,
) -> None:
    await memories.remember("Ada likes tea", MemoryType.SEMANTIC, team_id=team.id)
    [line] = await exported(session, team)
    changed = {
        **line,
        "content": "Ada likes coffee",
        field: str(agent.id) if value == "agent" else value,
    }
    path = written(tmp_path / "memories.jsonl", changed)
    before = await fingerprint(session)

    with pytest.raises(MemoryFileError) as refused:
        await import_memories(session, path, team.id, embedder, on_existing="update")

    [problem] = refused.value.problems
    assert problem.startswith(f"line 1: {said}"), problem
    assert problem.endswith("in team acme; an import does not change it"), problem

    assert await fingerprint(session) == before


@pytest.mark.parametrize(
    "form",
    [str.upper, lambda text: text.replace("-", ""), lambda text: f"{{{text}}}"],
    ids=["upper-case", "no-dashes", "braces"],
)
async def test_a_line_may_name_its_team_in_any_form_of_its_id(
    session: AsyncSession, team: Team, embedder: HashingEmbedder, tmp_path: Path, form: Any
) -> None:
    line = {"team_id": form(str(team.id)), "memory_type": "semantic", "content": "Ada likes tea"}
    path = written(tmp_path / "memories.jsonl", line)

    counts = await import_memories(session, path, team.id, embedder)

    assert counts == ImportCounts(added=1, embedded=1)


@pytest.mark.parametrize(
    ("team_id", "message"),
    [("acme", "team_id 'acme' is not a UUID"), (7, "team_id 7 is not a UUID")],
)
async def test_a_team_id_that_is_no_uuid_is_a_bad_line(
    session: AsyncSession,
    team: Team,
    embedder: HashingEmbedder,
    tmp_path: Path,
    team_id: Any,
    message: str,
) -> None:
    line = {"team_id": team_id, "memory_type": "semantic", "content": "Ada likes tea"}
    path = written(tmp_path / "memories.jsonl", line)

    with pytest.raises(MemoryFileError, match=f"line 1: {message}"):
        await import_memories(session, path, team.id, embedder)
    assert await MemoryRepository(session).count(team_id=team.id) == 0
