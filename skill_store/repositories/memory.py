"""Long-term memory: team-scoped vector search, versions, links, tags and history.

Every read that takes a `team_id` returns only that team's memories. Mutating methods take
`actor` and `reason`, which the database's audit trigger writes to `memory_log`.
"""

import logging
import uuid
import weakref
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from pydantic import AfterValidator, BaseModel, TypeAdapter
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.embeddings import Embedder, embedder_from_settings
from skill_store.errors import (
    ConflictError,
    ConnectionLostError,
    EmbeddingDimensionError,
    EmbeddingModelError,
    NotFoundError,
)
from skill_store.models import (
    Agent,
    Memory,
    MemoryContext,
    MemoryCreate,
    MemoryLog,
    MemorySearchResult,
    MemorySignals,
    MemoryStatus,
    MemoryTag,
    MemoryTier,
    MemoryType,
    MemoryUpdate,
    RetrievalWeights,
    ScoredMemory,
)
from skill_store.models._types import INT4_MAX, Moment, PgStr, VectorLike, as_vector
from skill_store.models.memory import Tag
from skill_store.repositories._bulk import (
    COPY_COLUMNS,
    TAG_COPY_COLUMNS,
    copy_records,
    insert_records,
    memory_records,
    uuid4s,
)
from skill_store.repositories._search import (
    EMBEDDING_COLUMN,
    EMBEDDING_MODELS,
    READ_FIELDS,
    RETRIEVE,
    SEARCH,
    SIGNALS,
)
from skill_store.repositories.base import (
    TeamRowRepository,
    check_page,
    translated_errors,
    validate,
)
from skill_store.settings import get_settings
from skill_store.team_indexes import (
    EXACT_SEARCH_MAX_ROWS,
    LOAD_BATCH_MIN_ROWS,
    LOAD_BATCH_SHARE,
    written,
)
from skill_store.tenancy import TEAM_SETTING

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text, as the model that reads the context would."""


def approximate_tokens(text: str) -> int:
    """The default `TokenCounter`: one token per four characters, rounded up.

    Four characters a token is the usual average of English text for the tokenizers of
    current models (more tokens for code and other languages): fast, needs no tokenizer,
    and errs little. Pass the model's own tokenizer for exact budgets.
    """
    return -(-len(text) // 4)


RETRIEVAL_DEPTH = 50
"""Fewest candidates `retrieve` takes from each of vector and lexical recall (else 4 * limit)."""

MAX_QUERY_WORDS = 64
"""Most words of a query `retrieve` reads (in the query's configuration and as written)."""

RETRIEVE_MAX_LIMIT = INT4_MAX // 4
"""Most memories `retrieve` returns: its 4 * limit candidates must fit an `integer`."""

logger = logging.getLogger(__name__)


class _Attribution(BaseModel):
    actor: PgStr
    reason: PgStr


def _not_blank(query: str) -> str:
    if not query.strip():
        raise ValueError("query must not be blank")
    return query


Query = Annotated[PgStr, AfterValidator(_not_blank)]
"""A text to search for: not blank, and storable by PostgreSQL (no NUL, no lone surrogate)."""

_tag = TypeAdapter(Tag)
_moment = TypeAdapter(Moment)
_tags = TypeAdapter(list[Tag])
_many = TypeAdapter(list[MemoryCreate])

_COLUMN_DIMENSIONS: weakref.WeakKeyDictionary[sa.Engine, int] = weakref.WeakKeyDictionary()
"""The dimension of `memory.embedding` in each engine's database, once read."""

# The teams of `teams` (with the memories `loaded` of each) loaded beside their index, each
# with a new load batch: see `skill_store.team_indexes`.
_LOAD_BATCHES = sa.text("""
SELECT t.team, nextval('memory_load_batch')
FROM unnest(CAST(:teams AS uuid[]), CAST(:loaded AS integer[])) AS t (team, loaded)
CROSS JOIN LATERAL memory_team_index(t.team) AS x
WHERE x.covers IS NOT NULL AND t.loaded >= greatest(:min_rows, :share * x.row_count)""")


class MemoryRepository(TeamRowRepository[Memory, MemoryCreate, MemoryUpdate]):
    """Memories of teams, searched by cosine similarity of their embeddings."""

    model = Memory
    create_model = MemoryCreate
    update_model = MemoryUpdate

    def __init__(
        self,
        session: AsyncSession,
        *,
        embedder: Embedder | None = None,
        token_counter: TokenCounter = approximate_tokens,
    ) -> None:
        super().__init__(session)
        self._embedder = embedder
        self.token_counter = token_counter

    @property
    def embedder(self) -> Embedder:
        """What `remember` and `recall` embed text with: the one given, else the settings'."""
        if self._embedder is None:
            self._embedder = embedder_from_settings()
        return self._embedder

    # -- attribution and checks ---------------------------------------------------------

    @asynccontextmanager
    async def writing_as(
        self, actor: str | None = None, reason: str | None = None
    ) -> AsyncIterator[None]:
        """A write whose audit rows name `actor` and `reason` (default `system`, none).

        Raises:
            pydantic.ValidationError: If `actor` or `reason` holds characters PostgreSQL
                cannot store (NUL, lone surrogates).
        """
        attributed = actor is not None or reason is not None
        if attributed:
            _Attribution(actor=actor or "", reason=reason or "")
        async with self.writing():
            if attributed:
                await self._attribute(actor or "", reason or "")
            yield
        if attributed:
            await self._attribute("", "")

    async def _attribute(self, actor: str, reason: str) -> None:
        await self._set_locally({"skill_store.actor": actor, "skill_store.reason": reason})

    async def _set_locally(self, settings: Mapping[str, str]) -> None:
        """Set server settings until the end of the transaction (`SET LOCAL`)."""
        await self.session.exec(
            select(*(func.set_config(name, value, True) for name, value in settings.items()))
        )

    async def column_dimensions(self, *, fresh: bool = False) -> int:
        """The dimension of the database's `memory.embedding` column, read once per engine.

        Args:
            fresh: Read it again.
        """
        engine = self.session.get_bind().engine
        if fresh or engine not in _COLUMN_DIMENSIONS:
            async with translated_errors():
                dimensions = int((await self.session.exec(EMBEDDING_COLUMN)).one())
            _COLUMN_DIMENSIONS[engine] = dimensions
        return _COLUMN_DIMENSIONS[engine]

    async def _dimensions_for(self, lengths: Iterable[int]) -> int:
        """The column's dimension, read again if one of `lengths` differs from the one read.

        An embedder migration in another process may have changed it since.
        """
        dimensions = await self.column_dimensions()
        if any(length != dimensions for length in lengths):
            dimensions = await self.column_dimensions(fresh=True)
        return dimensions

    async def _vector(self, embedding: VectorLike) -> NDArray[np.float32]:
        """`embedding` checked by `as_vector` against the column's dimension."""
        return as_vector(embedding, await self._dimensions_for([len(embedding)]))

    async def _vector_rows(self, statement: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        """The rows of a statement that gives the column's dimension first in each.

        The query was checked against the dimension read before; should the column have
        changed since (a new migration), the statement did not pass the query to the database
        function, which would have raised and aborted the caller's transaction.

        Raises:
            EmbeddingDimensionError: If `parameters["query"]` has another dimension.
        """
        async with translated_errors():
            # The statement runs on the session's connection, outside the ORM, which would
            # have flushed the session's changes first: so that they count, as they would.
            await self.session.flush()
            connection = await self.session.connection()
            rows: Sequence[Any] = (await connection.execute(statement, parameters)).all()
        dimensions = int(rows[0][0])
        _COLUMN_DIMENSIONS[self.session.get_bind().engine] = dimensions
        _check_length(parameters["query"], dimensions)
        return rows

    async def _check_model(
        self,
        team_id: uuid.UUID,
        agent_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        memory_types: Sequence[MemoryType] | None = None,
    ) -> None:
        """Check that the vectors a search may return were made by `embedder`'s model.

        Only the memories the search's filters let through count (not expired ones, nor
        other agents' private ones); memories whose model is not known (`embedding_model`
        None) are not compared.

        Raises:
            EmbeddingModelError: If such a memory has a vector of another model.
        """
        query_model = self.embedder.model
        parameters = {
            "team_id": team_id,
            "agent_id": agent_id,
            "user_id": user_id,
            "memory_types": memory_types,
        }
        async with translated_errors():
            models = (await self.session.exec(EMBEDDING_MODELS, params=parameters)).one()
        stored = list(dict.fromkeys(model for model in models if model is not None))
        if stored and stored != [query_model]:
            raise EmbeddingModelError(stored, query_model)

    # -- writes -------------------------------------------------------------------------

    async def create(
        self,
        data: MemoryCreate | Mapping[str, Any],
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Memory:
        """Insert a memory and its tags, together or not at all.

        Raises:
            pydantic.ValidationError: If the data is invalid.
            EmbeddingDimensionError: If the embedding's length differs from the column's.
            ConflictError: If the team, agent, user or source conversation does not exist,
                or the agent or source conversation is of another team.
        """
        validated = validate(MemoryCreate, data)
        if validated.embedding is not None:
            await self._vector(validated.embedding)
        memory = Memory.model_validate(validated, update=_dated(validated))
        async with self.writing_as(actor, reason):
            self.session.add(memory)
            await self.session.flush()
            await self._insert_tags(memory.team_id, memory.id, validated.tags)
        written(self.session, [memory.team_id])
        return memory

    async def update(
        self,
        id: uuid.UUID,
        data: MemoryUpdate | Mapping[str, Any],
        *,
        team_id: uuid.UUID,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Memory:
        """Apply the fields set in `data` (see `TeamRowRepository.update`), attributed.

        A new `embedding` without an `embedding_model` makes the memory's model unknown (None).

        Raises:
            ConflictError: If the memory is superseded: a replaced version stays as it was.
        """
        validated = validate(MemoryUpdate, data)
        if validated.embedding is not None:
            await self._vector(validated.embedding)
        if {"embedding", "embedding_model"} & validated.model_fields_set == {"embedding"}:
            validated = validated.model_copy(update={"embedding_model": None})
        async with self.writing_as(actor, reason):
            current = await self._locked(team_id, id)
            if current.status == MemoryStatus.SUPERSEDED:
                raise ConflictError(
                    f"memory {id} is superseded by {current.superseded_by} and cannot change"
                )
            return await super().update(id, validated, team_id=team_id)

    async def delete(
        self,
        id: uuid.UUID,
        *,
        team_id: uuid.UUID,
        actor: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Delete the team's memory (its history stays in `memory_log`)."""
        statement = sa.delete(Memory).where(col(Memory.team_id) == team_id, col(Memory.id) == id)
        async with self.writing_as(actor, reason):
            result = await self.session.exec(statement)
        return bool(result.rowcount)

    async def supersede(
        self,
        memory_id: uuid.UUID,
        data: MemoryCreate | Mapping[str, Any],
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Memory:
        """Replace an active memory by a new version of it, in one step.

        The new memory gets `version + 1`; the old one becomes `superseded`, pointing to it.
        Both are of the team of `data`. A new version of a pinned memory is pinned, unless
        `data` sets `is_pinned` itself (a `MemoryCreate` whose `is_pinned` was given, or a
        mapping with the key): only then does `data`'s value decide.

        Raises:
            NotFoundError: If that team has no such memory.
            ConflictError: If it is not active (e.g. superseded meanwhile).
        """
        validated = validate(MemoryCreate, data)
        if validated.embedding is not None:
            await self._vector(validated.embedding)
        async with self.writing_as(actor, reason):
            old = await self._locked(validated.team_id, memory_id)
            if old.status != MemoryStatus.ACTIVE:
                raise ConflictError(f"memory {memory_id} is {old.status.value}, not active")
            pinned = (
                {} if "is_pinned" in validated.model_fields_set else {"is_pinned": old.is_pinned}
            )
            new = Memory.model_validate(
                validated, update={"version": old.version + 1, **pinned, **_dated(validated)}
            )
            self.session.add(new)
            await self.session.flush()
            await self._insert_tags(new.team_id, new.id, validated.tags)
            old.status = MemoryStatus.SUPERSEDED
            old.superseded_by = new.id
        written(self.session, [new.team_id])
        return new

    async def _locked(self, team_id: uuid.UUID, memory_id: uuid.UUID) -> Memory:
        memory = await self.session.get(
            Memory, (team_id, memory_id), with_for_update=True, populate_existing=True
        )
        if memory is None:
            raise NotFoundError("memory", memory_id)
        return memory

    async def _link(
        self,
        a: uuid.UUID,
        b: uuid.UUID,
        field: str,
        status: MemoryStatus | None,
        team_id: uuid.UUID,
        actor: str | None,
        reason: str | None,
    ) -> tuple[Memory, Memory]:
        if a == b:
            raise ValueError("a memory cannot be linked to itself")
        async with self.writing_as(actor, reason):
            first, second = [await self._locked(team_id, id) for id in sorted((a, b))]
            for memory, other in ((first, second), (second, first)):
                links = getattr(memory, field) or []
                setattr(memory, field, list(dict.fromkeys([*links, other.id])))
                if status is not None:
                    memory.status = status
        return (first, second) if first.id == a else (second, first)

    async def mark_contradiction(
        self,
        a: uuid.UUID,
        b: uuid.UUID,
        *,
        team_id: uuid.UUID,
        actor: str | None = None,
        reason: str | None = None,
    ) -> tuple[Memory, Memory]:
        """Record that two memories of the team contradict each other; both become `disputed`.

        Raises:
            NotFoundError: If the team has no memory with one of the ids.
        """
        return await self._link(
            a, b, "contradicts", MemoryStatus.DISPUTED, team_id, actor=actor, reason=reason
        )

    async def relate(
        self,
        a: uuid.UUID,
        b: uuid.UUID,
        *,
        team_id: uuid.UUID,
        actor: str | None = None,
        reason: str | None = None,
    ) -> tuple[Memory, Memory]:
        """Link two memories of the team as related, both ways.

        Raises:
            NotFoundError: If the team has no memory with one of the ids.
        """
        return await self._link(a, b, "related_to", None, team_id, actor=actor, reason=reason)

    async def pin(
        self,
        memory_id: uuid.UUID,
        *,
        team_id: uuid.UUID,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Memory:
        """Pin the team's memory (retrieval keeps pinned memories)."""
        return await self.update(
            memory_id, {"is_pinned": True}, team_id=team_id, actor=actor, reason=reason
        )

    async def unpin(
        self,
        memory_id: uuid.UUID,
        *,
        team_id: uuid.UUID,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Memory:
        """Unpin the team's memory."""
        return await self.update(
            memory_id, {"is_pinned": False}, team_id=team_id, actor=actor, reason=reason
        )

    async def set_tier(
        self,
        memory_id: uuid.UUID,
        tier: MemoryTier,
        *,
        team_id: uuid.UUID,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Memory:
        """Move the team's memory to a storage tier (logged as promoted or demoted)."""
        return await self.update(
            memory_id, {"tier": tier}, team_id=team_id, actor=actor, reason=reason
        )

    async def archive(
        self,
        memory_id: uuid.UUID,
        *,
        team_id: uuid.UUID,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Memory:
        """Archive the team's memory: it stays, with its history, but is no longer retrieved."""
        return await self.update(
            memory_id,
            {"status": MemoryStatus.ARCHIVED},
            team_id=team_id,
            actor=actor,
            reason=reason,
        )

    async def update_access(self, memory_ids: Iterable[uuid.UUID], *, team_id: uuid.UUID) -> int:
        """Count one retrieval of each of the team's memories (atomic under concurrency).

        Returns:
            How many memories were touched (ids of other teams' memories touch nothing).
        """
        ids = sa.cast(list(memory_ids), sa.ARRAY(sa.Uuid))
        statement = select(func.update_memory_access(sa.cast(team_id, sa.Uuid), ids))
        async with translated_errors():
            touched = int((await self.session.exec(statement)).one())
        return touched

    async def expire(
        self,
        *,
        team_id: uuid.UUID,
        now: datetime | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Archive every active memory of the team whose `expires_at` has passed.

        Returns:
            How many memories were archived.
        """
        moment = _moment.validate_python(now) if now is not None else func.now()
        statement = (
            sa.update(Memory)
            .where(
                col(Memory.team_id) == team_id,
                col(Memory.status) == MemoryStatus.ACTIVE,
                col(Memory.expires_at) <= moment,
            )
            .values(status=MemoryStatus.ARCHIVED)
            .execution_options(synchronize_session=False)
        )
        async with self.writing_as(actor, reason):
            result = await self.session.exec(statement)
        return int(result.rowcount)

    # -- bulk -------------------------------------------------------------------------

    async def add_many(
        self,
        items: Iterable[MemoryCreate | Mapping[str, Any]],
        *,
        batch_size: int = 1000,
        ids: Sequence[uuid.UUID | None] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Insert many memories and their tags with PostgreSQL `COPY`, all or none of them.

        Every item is validated as `MemoryCreate` (tags included), and every embedding's
        length checked against the column, before anything is sent. Embeddings given as
        float32 NumPy arrays are checked and sent as they are, the fastest. The rows are then
        copied in batches of `batch_size` in one savepoint: on any error nothing of the call
        remains and the caller's transaction stays usable. The audit trigger writes a
        `created` row to `memory_log` for each memory, naming `actor` and `reason`.
        Items that are already `MemoryCreate` instances are taken as validated, as by
        `create`. The session's connection must have pgvector's codecs (`get_engine`
        registers them); memories inserted are not loaded into the session. A session scoped
        to a team (`scope_to_team`) sends batched INSERTs instead, since PostgreSQL allows no
        `COPY FROM` under row-level security. `ids`, in the order of `items`, keeps given
        ids (an export's, say; None: a new one).

        Returns:
            How many memories were inserted.

        Raises:
            pydantic.ValidationError: If any item is invalid; every error's `loc` starts with
                the item's position in `items` (0-based), e.g. `(17, "content")`.
            EmbeddingDimensionError: If an embedding's length differs from the column's (a
                note names the first such item's position).
            ConflictError: If a team, agent, user or source conversation does not exist, or
                an agent or source conversation is of another team.
            AccessDeniedError: If a scoped session adds memories of another team.
            ValueError: If `batch_size` is less than 1, or `ids` is not one per item.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        validated = _many.validate_python(list(items))
        if not validated:
            return 0
        new_ids = uuid4s(len(validated))
        if ids is not None:
            if len(ids) != len(validated):
                raise ValueError(f"{len(ids)} ids given for {len(validated)} items")
            new_ids = [given or new for given, new in zip(ids, new_ids, strict=True)]
        expected = await self._dimensions_for(
            len(item.embedding) for item in validated if item.embedding is not None
        )
        for position, item in enumerate(validated):
            if item.embedding is not None:
                try:
                    _check_length(item.embedding, expected)
                except EmbeddingDimensionError as error:
                    error.add_note(f"item {position} of the items to add")
                    raise
        async with self.writing_as(actor, reason):
            # Dated items: the others get the transaction's time, as the column default.
            moment = None
            columns: tuple[str, ...] = COPY_COLUMNS
            if any(item.created_at is not None for item in validated):
                moment = (await self.session.exec(select(func.now()))).one()
                columns = (*COPY_COLUMNS, "created_at", "last_accessed_at")
            batches = await self._load_batches(validated)
            if batches:
                columns = (*columns, "load_batch")
            connection = await self.session.connection()
            driver = (await connection.get_raw_connection()).driver_connection
            # PostgreSQL refuses COPY FROM under row-level security: scoped sessions INSERT.
            insert_rows = insert_records if TEAM_SETTING in self.session.info else copy_records
            try:
                for start in range(0, len(validated), batch_size):
                    tags: list[tuple[uuid.UUID, uuid.UUID, str]] = []
                    end = start + batch_size
                    memories = memory_records(
                        validated[start:end], new_ids[start:end], tags, moment, batches
                    )
                    await insert_rows(driver, "memory", memories, columns)
                    if tags:
                        tag_rows = [
                            (tag_id, *tag)
                            for tag_id, tag in zip(uuid4s(len(tags)), tags, strict=True)
                        ]
                        await insert_rows(driver, "memory_tag", tag_rows, TAG_COPY_COLUMNS)
            except ConnectionLostError:
                await connection.invalidate()  # so that no rollback is sent to a lost server
                raise
        written(self.session, {item.team_id for item in validated})
        return len(validated)

    async def _load_batches(self, items: Sequence[MemoryCreate]) -> dict[uuid.UUID, int] | None:
        """A new load batch for each team with many memories beside its index among `items`.

        See `skill_store.team_indexes`. None if there is none.
        """
        loaded = Counter(item.team_id for item in items)
        if max(loaded.values()) < LOAD_BATCH_MIN_ROWS:
            return None
        parameters = {
            "teams": list(loaded),
            "loaded": list(loaded.values()),
            "min_rows": LOAD_BATCH_MIN_ROWS,
            "share": LOAD_BATCH_SHARE,
        }
        rows = (await self.session.exec(_LOAD_BATCHES, params=parameters)).all()  # type: ignore[call-overload]
        return dict(rows) or None

    # -- text ---------------------------------------------------------------------------

    async def remember(
        self,
        content: str,
        memory_type: MemoryType,
        *,
        team_id: uuid.UUID,
        actor: str | None = None,
        reason: str | None = None,
        **fields: Any,
    ) -> Memory:
        """Store `content` as a memory of the team, embedded with `embedder`.

        The memory's `embedding_model` is the embedder's `model`.

        Args:
            content: What to remember; it is also the text embedded.
            memory_type: The kind of memory.
            team_id: The team the memory belongs to.
            actor: Who writes it, for the audit trail.
            reason: Why, for the audit trail.
            **fields: Any other `MemoryCreate` field but `embedding` and `embedding_model`
                (e.g. `agent_id`, `tags`).

        Raises:
            TypeError: If `fields` holds an `embedding` or `embedding_model`: use `create`
                to pass a vector.
            pydantic.ValidationError: If the data is invalid (checked before embedding).
            EmbeddingDimensionError: If the embedder's vectors do not fit the column.
            ConflictError: If the team, agent, user or source conversation does not exist,
                or the agent or source conversation is of another team.
        """
        if {"embedding", "embedding_model"} & fields.keys():
            raise TypeError("remember() embeds the content itself; use create() to pass a vector")
        data = {"team_id": team_id, "content": content, "memory_type": memory_type, **fields}
        validated = validate(MemoryCreate, data)
        [embedding] = await self.embedder.embed([validated.content])
        embedded = {"embedding": embedding, "embedding_model": self.embedder.model}
        return await self.create(validated.model_copy(update=embedded), actor=actor, reason=reason)

    async def recall(
        self,
        query: Query,
        *,
        team_id: uuid.UUID,
        agent_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        memory_types: Iterable[MemoryType] | None = None,
        limit: int = 20,
        min_similarity: float | None = None,
    ) -> list[MemorySearchResult]:
        """The team's memories most similar to the text `query`, embedded with `embedder`.

        The arguments after `query` are those of `search_by_embedding`, by keyword.

        Raises:
            pydantic.ValidationError: If `query` is blank or holds text PostgreSQL cannot
                store (NUL, lone surrogates), or an id is not a UUID; before any SQL.
            EmbeddingModelError: If a memory the search may return was embedded by another
                model (memories of unknown model are searched as they are).
            EmbeddingDimensionError: If the embedder's vectors do not fit the column.
        """
        types = None if memory_types is None else [MemoryType(t) for t in memory_types]
        await self._check_model(team_id, agent_id, user_id, types)
        [embedding] = await self.embedder.embed([query])
        return await self.search_by_embedding(
            embedding,
            team_id=team_id,
            agent_id=agent_id,
            user_id=user_id,
            memory_types=types,
            limit=limit,
            min_similarity=min_similarity,
        )

    async def retrieve(
        self,
        query: Query,
        *,
        team_id: uuid.UUID,
        agent_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        conversation_id: uuid.UUID | None = None,
        weights: RetrievalWeights | Mapping[str, float] | None = None,
        limit: int = 20,
        token_budget: int | None = None,
        query_embedding: VectorLike | None = None,
        now: datetime | None = None,
        record_access: bool = False,
    ) -> list[ScoredMemory]:
        """The team's memories for `query`, ranked by five weighted signals, in one statement.

        Candidates come from vector recall (`search_memories`, with the agent and user
        filters of `search_by_embedding`) and lexical recall (full text in the agent's
        language, else the team's), at least `RETRIEVAL_DEPTH` or 4 * `limit` from each.
        Of a query of more than `MAX_QUERY_WORDS` words, those rarest in a sample of the
        team count (the first in the query among equals), so a long query costs no more
        than one of that many words. The `limit` most relevant candidates are scored, with
        the memories linked to the three strongest and every pinned memory. Each signal is
        in [0, 1]:

        - `semantic`: relevance, the mean of the cosine similarity min-max scaled over the
          candidates and the lexical score (the summed inverse document frequency in the
          team of the query words the memory holds; past 2,000 memories, with common
          words' frequencies estimated from a sample) divided by the candidates' highest
          (either alone when the other found nothing), min-max scaled over the `limit`
          most relevant and clipped to [0, 1] (a pinned or linked memory may lie beyond);
        - `recency`: 0.5 ** (age / `Settings.recency_half_life`), the age being the time
          since the memory was created or last accessed (before `now`);
        - `importance`: `importance / 10 * confidence`;
        - `continuity`: 1 for a memory of `conversation_id`; 0.5 * the recency of its
          conversation's last message for one of the same user's other conversations with
          this agent; else 0 (a conversation without messages too);
        - `relationship`: 1 for a memory linked (`related_to`, `contradicts`) to one of the
          three strongest candidates; 0.5 for one about `user_id`, or about the same user
          or subject as one of them; else 0.

        score = Σ weight * signal. Pinned memories come first, then by score, then by id.
        Superseded, archived, disputed and expired memories are never returned.

        Args:
            query: What to remember, as text.
            team_id: The team whose memories are searched.
            agent_id: The agent asking: its memories and the team-wide ones; its language
                chooses the lexical configuration.
            user_id: The user concerned: memories about them and about no one.
            conversation_id: The current conversation, for continuity.
            weights: The signals' weights; default the agent's `retrieval_weights`, else
                `RetrievalWeights()`. A weight of 0 turns its signal off.
            limit: Most memories returned.
            token_budget: If set, the memories are packed in order, each kept if the
                contents so far, one a line, still fit in so many tokens (`token_counter`).
            query_embedding: The query's vector, if the caller has one (its model is not
                checked); else `embedder` embeds `query`, after checking that the team's
                vectors are of its model.
            now: The moment of the query for recency and continuity (default the
                database's `now()`).
            record_access: Count one access of each memory returned (under a `token_budget`,
                of each memory it keeps), once whatever the plan.

        Raises:
            pydantic.ValidationError: If `query` is blank or holds text PostgreSQL cannot
                store (NUL, lone surrogates), an id is not a UUID, or `weights` or `now` is
                invalid; before any SQL.
            ValueError: If `limit` is not between 1 and `RETRIEVE_MAX_LIMIT`, `token_budget`
                less than 1, or the embedding not finite or all zeros.
            EmbeddingModelError: If `embedder` embeds the query and a memory the call may
                return was embedded by another model (memories of unknown model are not
                checked).
            EmbeddingDimensionError: If the query's vector does not fit the column.
        """
        _check_retrieval(limit, token_budget)
        chosen = None if weights is None else RetrievalWeights.model_validate(weights)
        moment = None if now is None else _moment.validate_python(now)
        if query_embedding is None:
            await self._check_model(team_id, agent_id, user_id)
            [query_embedding] = await self.embedder.embed([query])
        parameters = {
            "query": await self._vector(query_embedding),
            "query_text": query,
            "team_id": team_id,
            "agent_id": agent_id,
            "user_id": user_id,
            "conversation_id": conversation_id,
            "limit": limit,
            "depth": max(RETRIEVAL_DEPTH, 4 * limit),
            "weights": None if chosen is None else _weights(chosen),
            "fallback_weights": _weights(RetrievalWeights()),
            "half_life": get_settings().recency_half_life.total_seconds(),
            "now": moment,
            # Under a budget, only the memories it keeps count as accessed.
            "record_access": record_access and token_budget is None,
            "exact_max_rows": EXACT_SEARCH_MAX_ROWS,
        }
        rows = await self._vector_rows(RETRIEVE, parameters)
        scored = [_scored(row) for row in rows if row[_ID] is not None]
        if token_budget is None:
            return scored
        kept = self._pack(scored, token_budget, lambda memory: memory.content)[0]
        if record_access and kept:
            await self.update_access([memory.id for memory in kept], team_id=team_id)
        return kept

    async def context_for(
        self,
        query: Query,
        *,
        team_id: uuid.UUID,
        agent_id: uuid.UUID,
        user_id: uuid.UUID | None = None,
        conversation_id: uuid.UUID | None = None,
        weights: RetrievalWeights | Mapping[str, float] | None = None,
        limit: int = 20,
        token_budget: int | None = None,
        query_embedding: VectorLike | None = None,
        now: datetime | None = None,
        record_access: bool = False,
    ) -> MemoryContext:
        """The agent's memories for `query`, packed into its `memory.token_budget`.

        `retrieve` with the same arguments, the agent's `retrieval_weights` by default; each
        memory it returns is a line `- <content>` of `text`, in rank order, while the lines
        fit in the budget by `token_counter` (a memory that does not fit is skipped, later
        smaller ones may still be kept). `text` fills the `{memory_context}` of the agent's
        `system_prompt_template`. The agent's memory configuration is read in one query.

        Args:
            query: What to remember, as text.
            team_id: The team whose memories are searched.
            agent_id: The agent asking, of the team: its budget and weights, its memories
                and the team-wide ones.
            user_id: As for `retrieve`.
            conversation_id: As for `retrieve`.
            weights: The signals' weights; default the agent's `retrieval_weights`.
            limit: Most memories considered before packing.
            token_budget: The budget; default the agent's `memory.token_budget`.
            query_embedding: As for `retrieve`.
            now: As for `retrieve`.
            record_access: Count one access of each memory kept in `text`.

        Raises:
            pydantic.ValidationError: If `query` is blank or holds text PostgreSQL cannot
                store (NUL, lone surrogates), or an id is not a UUID; before any SQL.
            ValueError: As `retrieve`, before any SQL.
            NotFoundError: If the team has no such agent.
            EmbeddingModelError: If an active memory of the team was embedded by another model.
            EmbeddingDimensionError: If the query's vector does not fit the column.
        """
        _check_retrieval(limit, token_budget)
        statement = select(col(Agent.memory)).where(Agent.team_id == team_id, Agent.id == agent_id)
        async with translated_errors():
            config = (await self.session.exec(statement)).first()
        if config is None:
            raise NotFoundError("agent", agent_id)
        scored = await self.retrieve(
            query,
            team_id=team_id,
            agent_id=agent_id,
            user_id=user_id,
            conversation_id=conversation_id,
            weights=config.retrieval_weights if weights is None else weights,
            limit=limit,
            query_embedding=query_embedding,
            now=now,
        )
        budget = config.token_budget if token_budget is None else token_budget
        memories, text = self._pack(scored, budget, lambda memory: f"- {memory.content}")
        if record_access and memories:
            await self.update_access([memory.id for memory in memories], team_id=team_id)
        return MemoryContext(memories=memories, tokens=self.token_counter(text), text=text)

    def _pack(
        self, memories: list[ScoredMemory], budget: int, line: Callable[[ScoredMemory], str]
    ) -> tuple[list[ScoredMemory], str]:
        """The memories whose lines, taken in order, fit in `budget` tokens; and the text."""
        kept: list[ScoredMemory] = []
        lines: list[str] = []
        for memory in memories:
            candidate = line(memory)
            if self.token_counter("\n".join([*lines, candidate])) <= budget:
                kept.append(memory)
                lines.append(candidate)
        return kept, "\n".join(lines)

    # -- tags ---------------------------------------------------------------------------

    async def _insert_tags(
        self, team_id: uuid.UUID, memory_id: uuid.UUID, tags: Iterable[str]
    ) -> None:
        rows = [
            {"id": uuid.uuid4(), "team_id": team_id, "memory_id": memory_id, "tag": tag}
            for tag in dict.fromkeys(tags)
        ]
        if rows:
            statement = (
                insert(MemoryTag).values(rows).on_conflict_do_nothing(constraint="uq_memory_tag")
            )
            await self.session.exec(statement)

    async def add_tags(
        self, memory_id: uuid.UUID, tags: Iterable[str], *, team_id: uuid.UUID
    ) -> list[str]:
        """Add tags to the team's memory (ones it has already are kept once).

        Returns:
            All the memory's tags.

        Raises:
            ConflictError: If the team has no such memory.
        """
        valid = _tags.validate_python(list(tags))
        async with self.writing():
            await self._insert_tags(team_id, memory_id, valid)
        return await self.tags(memory_id, team_id=team_id)

    async def remove_tags(
        self, memory_id: uuid.UUID, tags: Iterable[str], *, team_id: uuid.UUID
    ) -> int:
        """Remove tags from the team's memory.

        Returns:
            How many were removed.
        """
        statement = sa.delete(MemoryTag).where(
            col(MemoryTag.team_id) == team_id,
            col(MemoryTag.memory_id) == memory_id,
            col(MemoryTag.tag).in_(_tags.validate_python(list(tags))),
        )
        async with self.writing():
            result = await self.session.exec(statement)
        return int(result.rowcount)

    async def tags(self, memory_id: uuid.UUID, *, team_id: uuid.UUID) -> list[str]:
        """The tags of the team's memory, alphabetically."""
        statement = (
            select(MemoryTag.tag)
            .where(MemoryTag.team_id == team_id, MemoryTag.memory_id == memory_id)
            .order_by(col(MemoryTag.tag))
        )
        async with translated_errors():
            return list((await self.session.exec(statement)).all())

    async def with_tag(self, tag: str, *, team_id: uuid.UUID, limit: int = 100) -> Sequence[Memory]:
        """The team's memories with this tag, newest first."""
        check_page(limit)
        statement = (
            select(Memory)
            .join(
                MemoryTag,
                sa.and_(
                    col(MemoryTag.team_id) == col(Memory.team_id),
                    col(MemoryTag.memory_id) == col(Memory.id),
                ),
            )
            .where(
                Memory.team_id == team_id,
                MemoryTag.team_id == team_id,
                MemoryTag.tag == _tag.validate_python(tag),
            )
            .order_by(col(Memory.created_at).desc(), col(Memory.id))
            .limit(limit)
        )
        async with translated_errors():
            return (await self.session.exec(statement)).all()

    # -- reads --------------------------------------------------------------------------

    async def get(self, memory_id: uuid.UUID, *, team_id: uuid.UUID) -> Memory:
        """The team's memory with this id.

        Raises:
            NotFoundError: If the team has no such memory (another team's is not revealed).
        """
        statement = select(Memory).where(Memory.id == memory_id, Memory.team_id == team_id)
        async with translated_errors():
            memory = (await self.session.exec(statement)).first()
        if memory is None:
            raise NotFoundError("memory", memory_id)
        return memory

    async def search_by_embedding(
        self,
        embedding: VectorLike,
        *,
        team_id: uuid.UUID,
        agent_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        memory_types: Iterable[MemoryType] | None = None,
        limit: int = 20,
        min_similarity: float | None = None,
    ) -> list[MemorySearchResult]:
        """The team's active, unexpired memories most similar to `embedding`, best first.

        With `agent_id`: that agent's memories and the team-wide ones (no agent);
        `agent_private` memories only ever reach their own agent. With `user_id`: memories
        about that user and those about no one. Equal similarities are ordered by id.

        One statement: the database function `search_memories` searches a team with at most
        `EXACT_SEARCH_MAX_ROWS` candidates exactly, a larger one through the team's own HNSW
        index, which holds no other team's memories. Where that index is not built yet (the
        process that wrote builds it in the background, see `skill_store.team_indexes`), or
        its scan ends with too few hits for the filters, the search is exact too.

        Raises:
            EmbeddingDimensionError: If the embedding's length differs from the column's.
        """
        check_page(limit)
        parameters = {
            "query": await self._vector(embedding),
            "team_id": team_id,
            "agent_id": agent_id,
            "user_id": user_id,
            "memory_types": None if memory_types is None else [MemoryType(t) for t in memory_types],
            "limit": limit,
            "min_similarity": min_similarity,
            "exact_max_rows": EXACT_SEARCH_MAX_ROWS,
        }
        rows = await self._vector_rows(SEARCH, parameters)
        return [_search_result(row) for row in rows if row[_ID] is not None]

    async def find_similar(
        self,
        embedding: VectorLike,
        *,
        team_id: uuid.UUID,
        threshold: float = 0.92,
        agent_id: uuid.UUID | None = None,
        memory_types: Iterable[MemoryType] | None = None,
        limit: int = 10,
    ) -> list[MemorySearchResult]:
        """The team's memories at least `threshold` similar to `embedding`: near-duplicates."""
        return await self.search_by_embedding(
            embedding,
            team_id=team_id,
            agent_id=agent_id,
            memory_types=memory_types,
            limit=limit,
            min_similarity=threshold,
        )

    async def history(self, memory_id: uuid.UUID, *, team_id: uuid.UUID) -> Sequence[MemoryLog]:
        """The audit trail of the team's memory, oldest first (it outlives the memory)."""
        statement = (
            select(MemoryLog)
            .where(MemoryLog.team_id == team_id, MemoryLog.memory_id == memory_id)
            .order_by(col(MemoryLog.created_at), col(MemoryLog.id))
        )
        async with translated_errors():
            return (await self.session.exec(statement)).all()

    async def content_at(
        self, memory_id: uuid.UUID, at: datetime, *, team_id: uuid.UUID
    ) -> str | None:
        """The content of the team's memory at a moment, from its history.

        Returns:
            None if the team had no such memory then.
        """
        moment = _moment.validate_python(at)
        statement = select(
            func.reconstruct_memory_at(
                sa.cast(team_id, sa.Uuid), sa.cast(memory_id, sa.Uuid), moment
            )
        )
        async with translated_errors():
            content = (await self.session.exec(statement)).one()
        return None if content is None else str(content)


def _check_retrieval(limit: int, token_budget: int | None) -> None:
    if not 1 <= limit <= RETRIEVE_MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {RETRIEVE_MAX_LIMIT:,}, got {limit}")
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"token_budget must be at least 1, got {token_budget}")


def _check_length(embedding: VectorLike, expected: int) -> None:
    if len(embedding) != expected:
        raise EmbeddingDimensionError(expected=expected, got=len(embedding))


# Where a hit's values are in a row of `SEARCH` or `RETRIEVE`: after the column's dimension,
# the memory's fields, then what the statement adds.
_FIELDS = slice(1, 1 + len(READ_FIELDS))
_ID = _FIELDS.start + READ_FIELDS.index("id")
_AFTER_FIELDS = _FIELDS.stop


def _read_fields(row: Sequence[Any]) -> dict[str, Any]:
    """The `MemoryRead` fields of a hit's row; the database's own data is not validated."""
    return dict(zip(READ_FIELDS, row[_FIELDS], strict=True))


def _search_result(row: Sequence[Any]) -> MemorySearchResult:
    """A search hit from its row of `SEARCH`."""
    return MemorySearchResult.model_construct(**_read_fields(row), similarity=row[_AFTER_FIELDS])


def _dated(item: MemoryCreate) -> dict[str, datetime]:
    """An imported memory's date, which is also when it was last used; else nothing."""
    if item.created_at is None:
        return {}
    return {"created_at": item.created_at, "last_accessed_at": item.created_at}


def _scored(row: Sequence[Any]) -> ScoredMemory:
    """A retrieved memory from its row of `RETRIEVE`."""
    similarity, score, *signals = row[_AFTER_FIELDS:]
    return ScoredMemory.model_construct(
        **_read_fields(row),
        similarity=similarity,
        score=score,
        signals=MemorySignals.model_construct(**dict(zip(SIGNALS, signals, strict=True))),
    )


def _weights(weights: RetrievalWeights) -> list[float]:
    return [getattr(weights, name) for name in SIGNALS]
