"""Memories to and from JSON Lines: one `MemoryCreate` (without `team_id`) a line.

Each line also has its memory's id and its agent's slug, so that a file exported from one team
imports into another.
"""

import json
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlmodel import SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.embeddings import Embedder
from skill_store.errors import MemoryFileError, NotFoundError
from skill_store.models import (
    Agent,
    Conversation,
    Memory,
    MemoryCreate,
    MemoryStatus,
    MemoryTag,
    MemoryUpdate,
    Message,
    Team,
    User,
)
from skill_store.models._types import INPUT, UUID_ARRAY, Model, Slug
from skill_store.repositories import MemoryRepository

EMBED_BATCH = 256


class _ExportedId(Model):
    """A line's id first, as a row's (`Identified`): None for a line written by hand."""

    id: uuid.UUID | None = None


class MemoryLine(MemoryCreate, _ExportedId):
    """A line of a memory file: the memory, its id where it was exported (if any).

    And the slug of its agent (if it has one), by which another team's agent is found.
    """

    model_config = INPUT
    agent_slug: Slug | None = None


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
    dropped: Mapping[str, int] = field(default_factory=dict)
    """Links to rows the team lacks, left out of the lines added or updated, by kind:
    `conversations` (`source_conversation_id`), `messages` (`source_message_ids`),
    `memories` (`related_to` and `contradicts`). Only kinds with a link left out."""


RESTORED = frozenset(MemoryUpdate.model_fields) & frozenset(MemoryLine.model_fields)
"""What a line with the id of one of the team's memories writes over it (`on_existing="update"`)."""

KEPT = frozenset(MemoryCreate.model_fields) - RESTORED - {"team_id", "tags"}
"""What a memory keeps from its creation (type, agent, user, source, date): a line must agree."""

_NAMED_BY_ID = {"user_id", "source_conversation_id", "source_message_ids"}
"""What a line names by ids, which a refusal does not repeat (both sides would be UUIDs)."""


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


def read_memory_file(path: Path, team_id: uuid.UUID) -> dict[int, MemoryLine]:
    """Parse and validate every line of a JSON Lines file of memories for the team.

    Returns:
        The memories, by line number (blank lines have none).

    Raises:
        MemoryFileError: Naming each bad line's number and problem (not UTF-8, not JSON,
            nested too deeply, not a valid memory, an id given twice, another team's
            `team_id`); nothing is returned.
        OSError: If the file cannot be read.
    """
    items: dict[int, MemoryLine] = {}
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
                    raise ValueError(
                        "team_id is another team's: leave it out to import the line into"
                        " the team imported into"
                    )
                item = MemoryLine.model_validate({**data, "team_id": team_id})
                if item.id is not None:
                    if item.id in first_line_of:
                        raise ValueError(f"id {item.id} is also on line {first_line_of[item.id]}")
                    first_line_of[item.id] = number
                items[number] = item
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
    agent_map: Mapping[str, str] | None = None,
    on_progress: Callable[[int, int], object] = lambda done, total: None,
) -> ImportCounts:
    """Add the memories of a JSON Lines file to the team, embedding those without a vector.

    The file may come from another team (`export_memories` of it). A line's memory is
    attached to the team's agent:

    - of the slug that `agent_map` maps the line's `agent_slug` to, if it maps it;
    - else of the line's `agent_id`, if the team has that agent (a file of the team);
    - else of the line's `agent_slug`.

    A line whose agent the team lacks is refused: a memory of an agent is not made
    team-wide, where every agent of the team would read it. A line about a user (`user_id`)
    who is not a user of the store is refused too. Links to rows the team lacks are left out
    of the memories added or updated, and counted (`ImportCounts.dropped`): the source
    conversation and messages, and the memories it relates to or contradicts that neither
    the team nor the file has. Memories keep their ids (`MemoryLine.id`), in whichever team:
    a team's rows are keyed by `(team_id, id)`, so importing a file twice, into its own team
    or another, adds its memories once, and links between the file's memories hold.

    A line's `embedding_model` names the model of its `embedding`; a line without an
    `embedding` is embedded with `embedder`, and gets its `model`. Every line is checked
    before anything is embedded or written, and the file is added whole or not at all (in
    one savepoint); the caller commits. A line with the id of one of the team's memories is
    skipped, or with `on_existing="update"` restores that memory as the line holds it: every
    field of `RESTORED` is written, those the line leaves out with their defaults
    (importance 5, not pinned, metadata `{}`...), and the memory's tags become the line's.
    Such a line without an `embedding` is embedded too, as a new one is, so that an edited
    content never keeps the old content's vector. What a memory keeps from its creation
    (`KEPT`) an import does not change: a line that says otherwise is refused (`created_at`
    is compared when the line gives one; links, once those the team lacks are left out).

    Args:
        session: The session to write in.
        path: The JSON Lines file.
        team_id: The team imported into.
        embedder: Embeds the lines without an `embedding`.
        batch_size: Memories a `COPY` batch.
        on_existing: What a line with the id of one of the team's memories does.
        agent_map: The slug of an agent of the team for each agent's slug of the file
            (`{"kyra": "atlas"}`) that is not the slug of the team's agent.
        on_progress: Called with (memories written, memories to write) as the import goes.

    Returns:
        How many memories were added, skipped and updated, how many lines embedded, and
        how many links left out.

    Raises:
        MemoryFileError: If any line is not a valid memory, names an agent or user the team
            or the store lacks, or would change what a memory keeps from its creation; every
            refusal names its line (nothing is written).
        NotFoundError: If the team, or an agent `agent_map` maps to, does not exist.
        ConflictError: If a line would update a superseded memory (nothing is written).
        ValueError: If `batch_size` is less than 1 (the file is not read).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    team = (await session.exec(select(Team.slug).where(Team.id == team_id))).first()
    if team is None:
        raise NotFoundError("team", team_id)
    agents = await _Agents.of(session, team_id, team, agent_map or {})
    numbered = read_memory_file(path, team_id)
    present = await _present(session, team_id, numbered.values())
    links = await _Links.of(session, team_id, numbered.values(), present)
    problems: list[str] = []
    unknown_users = await _unknown_users(session, numbered.values())
    for number, line in numbered.items():
        agent_id, refusal = agents.resolve(line)
        if refusal is None and line.user_id in unknown_users:
            refusal = "user_id names no user of this store"
        if refusal is not None:
            problems.append(f"line {number}: {refusal}")
            continue
        numbered[number] = line.model_copy(update={"agent_id": agent_id})
    if problems:
        raise MemoryFileError(path, problems)

    stored = {n: present[line.id] for n, line in numbered.items() if line.id in present}
    new = {n: links.kept(line) for n, line in numbered.items() if n not in stored}
    restored = {n: links.kept(numbered[n]) for n in stored} if on_existing == "update" else {}
    _check_kept(path, restored, stored, links, agents)
    embedded = sum(line.embedding is None for line in [*new.values(), *restored.values()])
    items = await _embed_missing(list(new.values()), embedder)
    updates = await _embed_missing(list(restored.values()), embedder)
    memory_ids = [stored[n].id for n in restored]
    repository = MemoryRepository(session)
    done = 0
    on_progress(done, len(items))
    async with repository.writing():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            ids = [item.id for item in chunk]
            done += await repository.add_many(chunk, batch_size=batch_size, ids=ids)
            on_progress(done, len(items))
        for memory_id, line in zip(memory_ids, updates, strict=True):
            await _restore(repository, memory_id, line)
    dropped = {kind: count for kind, count in links.dropped.items() if count}
    if on_existing == "update":
        return ImportCounts(added=done, updated=len(restored), embedded=embedded, dropped=dropped)
    return ImportCounts(added=done, skipped=len(stored), embedded=embedded, dropped=dropped)


@dataclass
class _Agents:
    """The team's agents, by id and by slug, and how a line's agent is found among them."""

    team: str
    by_id: dict[uuid.UUID, str]
    by_slug: dict[str, uuid.UUID]
    agent_map: Mapping[str, str]

    @classmethod
    async def of(
        cls, session: AsyncSession, team_id: uuid.UUID, team: str, agent_map: Mapping[str, str]
    ) -> "_Agents":
        """The team's agents; every agent `agent_map` maps to must be one of them.

        Raises:
            NotFoundError: If one is not.
        """
        statement = select(Agent.id, Agent.slug).where(Agent.team_id == team_id)
        rows = (await session.exec(statement)).all()
        agents = cls(team, dict(rows), {slug: id for id, slug in rows}, agent_map)
        for slug in agent_map.values():
            if slug not in agents.by_slug:
                raise NotFoundError("agent", f"{slug!r} in team {team!r}")
        return agents

    def resolve(self, line: MemoryLine) -> tuple[uuid.UUID | None, str | None]:
        """The team's agent of the line, or None for a team-wide memory; else why not."""
        slug = line.agent_slug
        if slug is not None and slug in self.agent_map:
            return self.by_slug[self.agent_map[slug]], None
        if line.agent_id is not None and line.agent_id in self.by_id:
            return line.agent_id, None
        if slug is not None and slug in self.by_slug:
            return self.by_slug[slug], None
        if slug is not None:
            return None, (
                f"agent '{slug}' is not an agent of team {self.team}: create it, or give"
                f" the slug of one with --agent-map {slug}=SLUG"
            )
        if line.agent_id is not None:
            return None, (
                f"agent_id names no agent of team {self.team}, and the line has no"
                " agent_slug to find one by"
            )
        return None, None

    def named(self, agent_id: uuid.UUID | None) -> str:
        """An agent of the team in words."""
        return "none (team-wide)" if agent_id is None else f"'{self.by_id[agent_id]}'"


@dataclass
class _Links:
    """The rows of the team that the file's links may name, and the links left out."""

    conversations: set[uuid.UUID]
    messages: set[uuid.UUID]
    memories: set[uuid.UUID]
    dropped: dict[str, int] = field(
        default_factory=lambda: {"conversations": 0, "messages": 0, "memories": 0}
    )

    @classmethod
    async def of(
        cls,
        session: AsyncSession,
        team_id: uuid.UUID,
        lines: Collection[MemoryLine],
        present: Mapping[uuid.UUID, Any],
    ) -> "_Links":
        """The team's rows among those that the lines, and the memories they name, link to."""
        stored = list(present.values())
        conversations = {line.source_conversation_id for line in lines}
        messages = {i for item in [*lines, *stored] for i in item.source_message_ids or []}
        memories = {
            i for line in lines for i in [*(line.related_to or []), *(line.contradicts or [])]
        }
        return cls(
            await _ids_of_team(session, Conversation, team_id, conversations - {None}),
            await _ids_of_team(session, Message, team_id, messages),
            {line.id for line in lines if line.id is not None}
            | await _ids_of_team(session, Memory, team_id, memories),
        )

    def kept(self, line: MemoryLine) -> MemoryLine:
        """The line without its links to rows the team lacks (counted)."""
        changes: dict[str, Any] = {}
        conversation = line.source_conversation_id
        if conversation is not None and conversation not in self.conversations:
            changes["source_conversation_id"] = None
            self.dropped["conversations"] += 1
        for name, known, kind in (
            ("source_message_ids", self.messages, "messages"),
            ("related_to", self.memories, "memories"),
            ("contradicts", self.memories, "memories"),
        ):
            ids: list[uuid.UUID] | None = getattr(line, name)
            if ids is not None and (left := [i for i in ids if i in known]) != ids:
                changes[name] = left
                self.dropped[kind] += len(ids) - len(left)
        return line.model_copy(update=changes) if changes else line

    def of_team(self, name: str, value: Any) -> Any:
        """A stored value, its messages the team lacks left out as `kept` leaves a line's.

        (Only messages: a memory's conversation and other memories have foreign keys or are
        kept as the memory holds them, but its messages outlive none of their deletes.)
        """
        if name == "source_message_ids" and value is not None:
            return [i for i in value if i in self.messages]
        return value


async def _ids_of_team(
    session: AsyncSession, table: type[SQLModel], team_id: uuid.UUID, ids: Collection[Any]
) -> set[uuid.UUID]:
    """Those of `ids` that are ids of rows of the team in `table`."""
    if not ids:
        return set()
    columns = sa.inspect(table).columns
    # One array parameter, not one parameter an id: a file may hold more than the 32,767
    # parameters a statement can take.
    statement = sa.select(columns["id"]).where(
        columns["team_id"] == team_id, columns["id"] == sa.any_(sa.cast(list(ids), UUID_ARRAY))
    )
    return set((await session.exec(statement)).scalars())  # type: ignore[call-overload]


async def _unknown_users(session: AsyncSession, lines: Iterable[MemoryLine]) -> set[uuid.UUID]:
    """The users the lines are about who are not users of the store."""
    named = list({line.user_id for line in lines if line.user_id is not None})
    if not named:
        return set()
    statement = select(User.id).where(col(User.id) == sa.any_(sa.cast(named, UUID_ARRAY)))
    return set(named) - set((await session.exec(statement)).all())


async def _present(
    session: AsyncSession, team_id: uuid.UUID, lines: Iterable[MemoryLine]
) -> dict[uuid.UUID, Any]:
    """The team's memories with the ids of `lines`, by id, each with its `KEPT` columns."""
    given = [line.id for line in lines if line.id is not None]
    columns = sa.inspect(Memory).columns
    statement = sa.select(columns["id"], *(columns[name] for name in sorted(KEPT))).where(
        columns["team_id"] == team_id, columns["id"] == sa.any_(sa.cast(given, UUID_ARRAY))
    )
    rows = (await session.exec(statement)).all()  # type: ignore[call-overload]
    return {row.id: row for row in rows}


def _check_kept(
    path: Path,
    lines: Mapping[int, MemoryLine],
    stored: Mapping[int, Any],
    links: _Links,
    agents: _Agents,
) -> None:
    """Refuse lines that would change what their memories keep from their creation.

    Args:
        path: The file, for the error.
        lines: The lines that restore memories, by number.
        stored: The `KEPT` columns of each one's memory, by the line's number.
        links: The team's rows, which the links compared are reduced to.
        agents: The team's agents, which name the agents compared.

    Raises:
        MemoryFileError: Naming each such line and field, with both values in words.
    """
    problems = []
    for number, line in lines.items():
        for name in sorted(KEPT):
            value = getattr(line, name)
            kept = links.of_team(name, getattr(stored[number], name))
            if value == kept or (name == "created_at" and value is None):
                continue
            if name == "agent_id":
                said = f"its agent is {agents.named(value)} in the file but {agents.named(kept)}"
            elif name in _NAMED_BY_ID:
                said = f"its {name} differs from the memory's"
            else:
                said = f"{name} is {_words(value)} in the file but {_words(kept)}"
            problems.append(
                f"line {number}: {said} in team {agents.team}; an import does not change it"
            )
    if problems:
        raise MemoryFileError(path, problems)


def _words(value: Any) -> str:
    """A value as a refusal shows it: a moment or an enum's value as it is written."""
    if value is None:
        return "none"
    text = value.isoformat() if hasattr(value, "isoformat") else getattr(value, "value", value)
    return repr(str(text))


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
    """The team's active memories as JSON Lines that `import_memories` reads back, oldest first.

    Each line has the memory's id, and the slug of its agent (`agent_slug`) beside its
    `agent_id`, by which an import into another team finds that team's agent.
    """
    tags = (
        select(func.array_agg(aggregate_order_by(col(MemoryTag.tag), col(MemoryTag.tag))))
        .where(MemoryTag.team_id == team_id, MemoryTag.memory_id == Memory.id)
        .scalar_subquery()
    )
    agent_slug = (
        select(Agent.slug)
        .where(Agent.team_id == team_id, Agent.id == Memory.agent_id)
        .scalar_subquery()
    )
    statement = (
        select(Memory, tags, agent_slug)
        .where(Memory.team_id == team_id, Memory.status == MemoryStatus.ACTIVE)
        .order_by(col(Memory.created_at), col(Memory.id))
    )
    for memory, memory_tags, slug in (await session.exec(statement)).all():
        exported = MemoryLine.model_validate(
            memory, update={"tags": memory_tags or [], "agent_slug": slug}
        )
        yield exported.model_dump_json(exclude={"team_id"}, exclude_defaults=True)
