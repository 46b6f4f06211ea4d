"""Memories to and from JSON Lines: one `MemoryCreate` (without `team_id`) and its id per line."""

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.embeddings import Embedder
from skill_store.errors import MemoryFileError
from skill_store.models import Memory, MemoryCreate, MemoryStatus, MemoryTag, MemoryUpdate
from skill_store.models._types import UUID_ARRAY
from skill_store.repositories import MemoryRepository

EMBED_BATCH = 256


class MemoryLine(MemoryCreate):
    """A line of a memory file: the memory, and its id where it was exported (if any)."""

    id: uuid.UUID | None = None


@dataclass(frozen=True)
class ImportCounts:
    """What `import_memories` did with the file's memories."""

    added: int
    """New memories."""
    skipped: int = 0
    """Lines whose id the team's memories have already, left as they are."""
    updated: int = 0
    """Lines whose id the team's memories have already, written over them."""
    embedded: int = 0
    """Lines without an `embedding`, added or updated, embedded by the import's embedder."""


RESTORED = frozenset(MemoryUpdate.model_fields) & frozenset(MemoryLine.model_fields)
"""What a line with the id of one of the team's memories writes over it (`on_existing="update"`)."""

KEPT = frozenset(MemoryCreate.model_fields) - RESTORED - {"team_id", "tags"}
"""What a memory keeps from its creation (type, agent, user, source, date): a line must agree."""


def _problem(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, problem['loc'])) or 'line'}: {problem['msg']}"
        for problem in error.errors()
    )


def _team_of(value: object) -> uuid.UUID:
    """A line's `team_id`, in any form `uuid.UUID` reads (upper case, without dashes...)."""
    try:
        return uuid.UUID(value) if isinstance(value, str) else uuid.UUID(int=-1)
    except ValueError:
        raise ValueError(f"team_id {value!r} is not a UUID") from None


def read_memory_file(path: Path, team_id: uuid.UUID) -> list[MemoryLine]:
    """Parse and validate every line of a JSON Lines file of memories for the team.

    Raises:
        MemoryFileError: Naming each bad line's number and problem (not UTF-8, not JSON,
            nested too deeply, not a valid memory, an id given twice); nothing is returned.
        OSError: If the file cannot be read.
    """
    items: list[MemoryLine] = []
    problems: list[str] = []
    first_line_of: dict[uuid.UUID, int] = {}
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                problems.append(f"line {number}: not UTF-8 (byte {error.start + 1} of the line)")
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("a line must hold a JSON object")
                if _team_of(data.pop("team_id", str(team_id))) != team_id:
                    raise ValueError("team_id differs from the team imported into")
                item = MemoryLine.model_validate({**data, "team_id": team_id})
                if item.id is not None:
                    if item.id in first_line_of:
                        raise ValueError(f"id {item.id} is also on line {first_line_of[item.id]}")
                    first_line_of[item.id] = number
                items.append(item)
            except json.JSONDecodeError as error:
                problems.append(f"line {number}: not JSON ({error.msg} at column {error.colno})")
            except RecursionError:
                problems.append(f"line {number}: JSON nested too deeply")
            except ValidationError as error:
                problems.append(f"line {number}: {_problem(error)}")
            except ValueError as error:
                problems.append(f"line {number}: {error}")
    if problems:
        raise MemoryFileError(path, problems)
    return items


async def import_memories(
    session: AsyncSession,
    path: Path,
    team_id: uuid.UUID,
    embedder: Embedder,
    *,
    batch_size: int = 1000,
    on_existing: Literal["skip", "update"] = "skip",
    on_progress: Callable[[int, int], object] = lambda done, total: None,
) -> ImportCounts:
    """Add the memories of a JSON Lines file to the team, embedding those without a vector.

    A line's `embedding_model` names the model of its `embedding`; a line without an
    `embedding` is embedded with `embedder`, and gets its `model`.

    Every line is validated before anything is written, and the file is added whole or not
    at all (in one savepoint); the caller commits. A line with the id of one of the team's
    memories (an export imported again) is skipped, or with `on_existing="update"` restores
    that memory as the line holds it: every field of `RESTORED` is written, those the line
    leaves out with their defaults (importance 5, not pinned, metadata `{}`...), and the
    memory's tags become the line's. Such a line without an `embedding` is embedded too, as
    a new one is, so that an edited content never keeps the old content's vector. What a
    memory keeps from its creation (`KEPT`) an import does not change: a line that says
    otherwise is refused (`created_at` is compared when the line gives one). So importing a
    file twice adds its memories once.

    Returns:
        How many memories were added, skipped and updated, and how many lines embedded.

    Raises:
        MemoryFileError: If any line is not a valid memory, or would change what a memory
            keeps from its creation (nothing is written).
        ConflictError: If a line names an agent, user or conversation that does not exist,
            or would update a superseded memory (nothing is written).
        ValueError: If `batch_size` is less than 1 (the file is not read).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lines = read_memory_file(path, team_id)
    present = await _present(session, team_id, lines)
    existing = {line.id: line for line in lines if line.id is not None and line.id in present}
    items = [line for line in lines if line.id not in present]
    restored = existing if on_existing == "update" else {}
    _check_kept(path, restored, present)
    embedded = sum(line.embedding is None for line in [*items, *restored.values()])
    items = await _embed_missing(items, embedder)
    restored = dict(
        zip(restored, await _embed_missing([*restored.values()], embedder), strict=True)
    )
    repository = MemoryRepository(session)
    done = 0
    on_progress(done, len(items))
    async with repository.writing():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            ids = [item.id for item in chunk]
            done += await repository.add_many(chunk, batch_size=batch_size, ids=ids)
            on_progress(done, len(items))
        for memory_id, line in restored.items():
            await _restore(repository, memory_id, line)
    if on_existing == "update":
        return ImportCounts(added=done, updated=len(restored), embedded=embedded)
    return ImportCounts(added=done, skipped=len(existing), embedded=embedded)


async def _present(
    session: AsyncSession, team_id: uuid.UUID, lines: list[MemoryLine]
) -> dict[uuid.UUID, Any]:
    """The team's memories with the ids of `lines`, by id, each with its `KEPT` columns."""
    given = [line.id for line in lines if line.id is not None]
    columns = sa.inspect(Memory).columns
    # One array parameter, not one parameter an id: a file may hold more than the 32,767
    # parameters a statement can take.
    statement = sa.select(columns["id"], *(columns[name] for name in sorted(KEPT))).where(
        columns["team_id"] == team_id, columns["id"] == sa.any_(sa.cast(given, UUID_ARRAY))
    )
    rows = (await session.exec(statement)).all()  # type: ignore[call-overload]
    return {row.id: row for row in rows}


def _check_kept(
    path: Path, lines: dict[uuid.UUID, MemoryLine], present: dict[uuid.UUID, Any]
) -> None:
    """Refuse lines that would change what their memories keep from their creation.

    Raises:
        MemoryFileError: Naming each such memory, the field and both values.
    """
    problems = [
        f"memory {memory_id}: {name} is {getattr(line, name)!r} in the file but"
        f" {getattr(present[memory_id], name)!r} in the team; an import does not change it"
        for memory_id, line in lines.items()
        for name in sorted(KEPT)
        if getattr(line, name) != getattr(present[memory_id], name)
        and not (name == "created_at" and line.created_at is None)
    ]
    if problems:
        raise MemoryFileError(path, problems)


async def _embed_missing(lines: list[MemoryLine], embedder: Embedder) -> list[MemoryLine]:
    """`lines`, those without an `embedding` embedded by `embedder` (with its model's name)."""
    lines = list(lines)
    missing = [index for index, line in enumerate(lines) if line.embedding is None]
    for start in range(0, len(missing), EMBED_BATCH):
        batch = missing[start : start + EMBED_BATCH]
        vectors = await embedder.embed([lines[index].content for index in batch])
        for index, vector in zip(batch, vectors, strict=True):
            embedded = {"embedding": vector, "embedding_model": embedder.model}
            lines[index] = lines[index].model_copy(update=embedded)
    return lines


async def _restore(repository: MemoryRepository, memory_id: uuid.UUID, line: MemoryLine) -> None:
    """Write the line's `RESTORED` fields and tags over the team's memory."""
    team_id = line.team_id
    await repository.update(memory_id, line.model_dump(include=set(RESTORED)), team_id=team_id)
    tags = await repository.tags(memory_id, team_id=team_id)
    await repository.remove_tags(memory_id, set(tags) - set(line.tags), team_id=team_id)
    await repository.add_tags(memory_id, line.tags, team_id=team_id)


async def export_memories(session: AsyncSession, team_id: uuid.UUID) -> AsyncIterator[str]:
    """The team's active memories as JSON Lines that `import_memories` reads back, oldest first."""
    tags = (
        select(func.array_agg(aggregate_order_by(col(MemoryTag.tag), col(MemoryTag.tag))))
        .where(MemoryTag.team_id == team_id, MemoryTag.memory_id == Memory.id)
        .scalar_subquery()
    )
    statement = (
        select(Memory, tags)
        .where(Memory.team_id == team_id, Memory.status == MemoryStatus.ACTIVE)
        .order_by(col(Memory.created_at), col(Memory.id))
    )
    for memory, memory_tags in (await session.exec(statement)).all():
        exported = MemoryLine.model_validate(memory, update={"tags": memory_tags or []})
        yield exported.model_dump_json(exclude={"team_id"}, exclude_defaults=True, by_alias=True)
