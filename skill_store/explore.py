"""A store from synchronous code (notebooks, scripts, a REPL), and results as dataframes."""

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from pydantic import BaseModel
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.database import get_engine, get_session_factory
from skill_store.embeddings import Embedder
from skill_store.errors import NotFoundError
from skill_store.models import (
    AgentDNA,
    AgentStatus,
    MemoryLogRead,
    MemoryRead,
    MemorySearchResult,
    MemoryType,
    RetrievalWeights,
    ScoredMemory,
    TeamRead,
)
from skill_store.repositories import AgentRepository, MemoryRepository, TeamRepository

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]

T = TypeVar("T")

TeamRef = uuid.UUID | str
"""A team, by id or by slug."""

AgentRef = uuid.UUID | str
"""An agent of the team, by id or by slug."""


class Explorer:
    """A read-only, synchronous view of a store, for notebooks, scripts and a REPL.

    Jupyter runs an event loop in its main thread, where `asyncio.run` fails, and the
    asyncpg connections of an engine belong to the loop that opened them. So an Explorer
    runs a loop of its own on a background thread, opens its engine there, and waits for
    each call to finish there: the same code runs in a notebook cell and in a script.

    Each method reads in a session of its own, which is rolled back: nothing is written.
    Results are read models (`TeamRead`, `AgentDNA`, `MemoryRead`, ...); `to_frame` makes a
    dataframe of them. Teams and agents are named by id or by slug.

        with Explorer() as store:
            to_frame(store.memories("demo", memory_type="semantic"))
    """

    def __init__(self, url: str | None = None, *, embedder: Embedder | None = None) -> None:
        """Open an engine on `url`, the configured database, or the embedded server.

        Args:
            url: A PostgreSQL URL; by default `DATABASE_URL`, or the embedded server when unset.
            embedder: Embeds the text queries of `search` and `retrieve`; by default the one
                the settings call for.
        """
        self.embedder = embedder
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="skill-store-explorer", daemon=True
        )
        self._thread.start()
        self.engine = self.run(get_engine(url))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the async API on the explorer's loop and return its result.

        For what the methods do not cover, e.g. `store.run(migrate(store.engine))`. Objects
        bound to a connection (sessions, engines) must come from this loop: `self.engine`.
        """
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        """Dispose of the engine and stop the loop."""
        self.run(self.engine.dispose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`work` in a new session, rolled back when it returns."""

        async def in_session() -> T:
            async with get_session_factory(self.engine)() as session:
                return await work(session)

        return self.run(in_session())

    def teams(self, *, limit: int = 50, offset: int = 0) -> list[TeamRead]:
        """The teams, oldest first."""

        async def work(session: AsyncSession) -> list[TeamRead]:
            found = await TeamRepository(session).list(limit=limit, offset=offset)
            return [TeamRead.model_validate(team) for team in found]

        return self._read(work)

    def agents(self, team: TeamRef, *, status: AgentStatus | None = None) -> list[AgentDNA]:
        """The team's agents by name, optionally only those with `status`.

        Each is its identity document, whose `shared_skill_names` start with the team's.

        Raises:
            NotFoundError: If there is no team with that slug.
        """

        async def work(session: AsyncSession) -> list[AgentDNA]:
            team_id = await _team_id(session, team)
            repository = AgentRepository(session)
            found = await repository.list_for_team(team_id=team_id, status=status)
            return [await repository.dna(agent.id, team_id=team_id) for agent in found]

        return self._read(work)

    def memories(
        self, team: TeamRef, *, limit: int = 50, offset: int = 0, **filters: Any
    ) -> list[MemoryRead]:
        """The team's memories whose columns equal `filters`, oldest first.

        Args:
            team: The team.
            limit: Most memories returned.
            offset: Memories skipped first.
            **filters: Column values, e.g. `memory_type="semantic"`, `status="superseded"`,
                `agent_id=...`.

        Raises:
            NotFoundError: If there is no team with that slug.
            ValueError: If a filter names no column.
        """

        async def work(session: AsyncSession) -> list[MemoryRead]:
            team_id = await _team_id(session, team)
            found = await MemoryRepository(session).list(
                team_id=team_id, limit=limit, offset=offset, **filters
            )
            return [MemoryRead.model_validate(memory) for memory in found]

        return self._read(work)

    def search(
        self,
        query: str | Sequence[float],
        team: TeamRef,
        *,
        agent: AgentRef | None = None,
        user_id: uuid.UUID | None = None,
        memory_types: Iterable[MemoryType] | None = None,
        limit: int = 10,
        min_similarity: float | None = None,
    ) -> list[MemorySearchResult]:
        """The team's memories most similar to `query`, by cosine alone, best first.

        `MemoryRepository.recall` of a text (embedded with `embedder`), or
        `search_by_embedding` of a vector; the other arguments are theirs.

        Raises:
            NotFoundError: If there is no team or agent with that slug.
            EmbeddingDimensionError: If the query's vector does not fit the column.
        """

        async def work(session: AsyncSession) -> list[MemorySearchResult]:
            team_id = await _team_id(session, team)
            agent_id = await _agent_id(session, team_id, agent)
            repository = MemoryRepository(session, embedder=self.embedder)
            if isinstance(query, str):
                return await repository.recall(
                    query,
                    team_id=team_id,
                    agent_id=agent_id,
                    user_id=user_id,
                    memory_types=memory_types,
                    limit=limit,
                    min_similarity=min_similarity,
                )
            return await repository.search_by_embedding(
                query,
                team_id=team_id,
                agent_id=agent_id,
                user_id=user_id,
                memory_types=memory_types,
                limit=limit,
                min_similarity=min_similarity,
            )

        return self._read(work)

    def retrieve(
        self,
        query: str,
        team: TeamRef,
        *,
        agent: AgentRef | None = None,
        user_id: uuid.UUID | None = None,
        conversation_id: uuid.UUID | None = None,
        weights: RetrievalWeights | Mapping[str, float] | None = None,
        limit: int = 10,
        token_budget: int | None = None,
    ) -> list[ScoredMemory]:
        """The team's memories for `query`, as `MemoryRepository.retrieve` ranks them.

        Accesses are not recorded. The arguments are those of `retrieve`.

        Raises:
            NotFoundError: If there is no team or agent with that slug.
            ValueError: If `query` is blank.
        """

        async def work(session: AsyncSession) -> list[ScoredMemory]:
            team_id = await _team_id(session, team)
            return await MemoryRepository(session, embedder=self.embedder).retrieve(
                query,
                team_id=team_id,
                agent_id=await _agent_id(session, team_id, agent),
                user_id=user_id,
                conversation_id=conversation_id,
                weights=weights,
                limit=limit,
                token_budget=token_budget,
            )

        return self._read(work)

    def history(self, memory_id: uuid.UUID, team: TeamRef) -> list[MemoryLogRead]:
        """The audit trail of the team's memory, oldest first (it outlives the memory).

        Raises:
            NotFoundError: If there is no team with that slug.
        """

        async def work(session: AsyncSession) -> list[MemoryLogRead]:
            team_id = await _team_id(session, team)
            found = await MemoryRepository(session).history(memory_id, team_id=team_id)
            return [MemoryLogRead.model_validate(log) for log in found]

        return self._read(work)


async def _team_id(session: AsyncSession, team: TeamRef) -> uuid.UUID:
    if isinstance(team, uuid.UUID):
        return team
    return (await TeamRepository(session).get_by_slug_or_raise(team)).id


async def _agent_id(
    session: AsyncSession, team_id: uuid.UUID, agent: AgentRef | None
) -> uuid.UUID | None:
    if agent is None or isinstance(agent, uuid.UUID):
        return agent
    found = await AgentRepository(session).get_by_slug(agent, team_id=team_id)
    if found is None:
        raise NotFoundError("agent", f"{agent!r} in team {team_id}")
    return found.id


def frame_columns(model: type[BaseModel]) -> list[str]:
    """The columns `to_frame` gives a model's rows: its shown fields, in declared order.

    The fields in the order the model declares them (`id` first), then its computed fields
    (`AgentDNA.effective_skills`), less those its repr hides: embeddings and secrets. Each
    is named as the model dumps it (`metadata` for `metadata_json`).
    """
    return list(_shown(model))


def _shown(model: type[BaseModel]) -> dict[str, str]:
    """The attribute of each column of `frame_columns(model)`, by column."""
    fields = [
        (field.serialization_alias or name, name, field.repr)
        for name, field in model.model_fields.items()
    ]
    computed = [(name, name, field.repr) for name, field in model.model_computed_fields.items()]
    return {column: name for column, name, shown in fields + computed if shown}


def to_frame(items: Iterable[BaseModel]) -> "pd.DataFrame":
    """A dataframe of models of one class (what `Explorer` returns), a row each.

    Columns are `frame_columns(type(item))`. Values are as JSON has them (ids as strings, enums as
    their values, sub-configs such as `personality` and `signals` as dicts: flatten one with
    `pandas.json_normalize(frame["signals"].tolist())`), except moments, which stay
    `datetime`s so that their columns have a datetime dtype.

    Args:
        items: Models of one class; none gives an empty dataframe without columns.

    Returns:
        The dataframe.

    Raises:
        ModuleNotFoundError: If pandas is not installed (`pip install 'skill-store[notebook]'`).
    """
    try:
        import pandas as pd
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "to_frame needs pandas: pip install 'skill-store[notebook]'", name="pandas"
        ) from error

    rows = list(items)
    columns = _shown(type(rows[0])) if rows else {}
    return pd.DataFrame([_row(item, columns) for item in rows], columns=list(columns))


def _row(item: BaseModel, columns: Mapping[str, str]) -> dict[str, Any]:
    as_json = item.model_dump(mode="json")
    values = {column: getattr(item, name) for column, name in columns.items()}
    return {
        column: value if isinstance(value, datetime) else as_json[column]
        for column, value in values.items()
    }
