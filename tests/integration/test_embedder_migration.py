"""Moving a store to another embedder while it is in use: `migrate_embeddings`.

Each test has a database of its own, a copy of one built once: three teams of memories
embedded at 8 dimensions by the hashing embedder, the largest with its own index. The new
embedders hash too, under names of their own, and record what they are asked.
"""

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    EmbeddingDimensionError,
    EmbeddingMigrationError,
    EmbeddingMigrationProgress,
    EmbeddingModelError,
    EmbeddingServiceError,
    HashingEmbedder,
    MemoryRepository,
    MemoryType,
    NotFoundError,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    abandon_embedding_migration,
    finish_index_builds,
    get_engine,
    get_session_factory,
    migrate_embeddings,
)
from skill_store import embedder_migration as migration
from skill_store.database import run_alembic
from skill_store.embedder_migration import MIGRATION_LOCK, MIGRATOR
from skill_store.embeddings import HASHING_MODEL
from skill_store.team_indexes import EXACT_SEARCH_MAX_ROWS

from ..support import (
    create_database,
    drop_database,
    embedding_dimensions,
    fingerprint,
    migrated_database,
)

DIMENSIONS = 8
NEW_DIMENSIONS = 12
BATCH = 64
TEMPLATE = "skill_store_embedder_template"
TEAM_SIZES = {"big": EXACT_SEARCH_MAX_ROWS + 60, "small": 40, "other": 20}
WORDS = ("tea", "climbing", "rust", "jazz", "maps", "bread", "chess", "rain", "owls")
OLD = HashingEmbedder(DIMENSIONS)


def content(slug: str, number: int) -> str:
    return f"{slug} note {number} about {WORDS[number % 9]} and {WORDS[number // 9 % 9]}"


class Embedder:
    """Hashing vectors of `salt` + text under a model name of its own; records its calls.

    `during(call)` runs inside each call (1 for the first) before it answers.
    """

    def __init__(
        self,
        model: str,
        dimensions: int = NEW_DIMENSIONS,
        *,
        salt: str = "",
        during: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        self.salt = salt
        self.during = during
        self.calls: list[list[str]] = []
        self._hashing = HashingEmbedder(dimensions)

    def vector(self, text: str) -> list[float]:
        return self._hashing.embed_one(self.salt + text)

    def texts(self) -> list[str]:
        return [text for call in self.calls for text in call]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        if self.during is not None:
            await self.during(len(self.calls))
        return [self.vector(text) for text in texts]


@dataclass
class Store:
    engine: AsyncEngine
    factory: async_sessionmaker[AsyncSession]
    teams: dict[str, uuid.UUID]


@dataclass
class Row:
    id: uuid.UUID
    team_id: uuid.UUID
    content: str
    model: str | None
    embedding: list[float] | None
    load_batch: int | None


@pytest.fixture(scope="module")
async def template(server_url: str) -> AsyncIterator[str]:
    """The store every test copies; besides the teams' memories, in `small`, one without a
    vector and one archived."""
    async with migrated_database(server_url, TEMPLATE, dimensions=DIMENSIONS) as engine:
        async with get_session_factory(engine)() as session:
            owner = await UserRepository(session).create(
                UserCreate(email="ops@example.com", display_name="Ops", password="correct horse")
            )
            memories = MemoryRepository(session, embedder=OLD)
            for slug, size in TEAM_SIZES.items():
                team = await TeamRepository(session).create(
                    TeamCreate(name=slug, slug=slug, owner_id=owner.id)
                )
                texts = [content(slug, number) for number in range(size)]
                await memories.add_many(
                    {
                        "team_id": team.id,
                        "memory_type": "semantic",
                        "content": text,
                        "embedding": vector,
                        "embedding_model": HASHING_MODEL,
                    }
                    for text, vector in zip(texts, await OLD.embed(texts), strict=True)
                )
            await memories.create(
                {"team_id": team.id, "memory_type": "semantic", "content": "no vector"}
            )
            archived = await memories.remember("archived", MemoryType.SEMANTIC, team_id=team.id)
            await memories.archive(archived.id, team_id=team.id)
            await session.commit()
        await finish_index_builds(engine)  # the big team's index
        await engine.dispose()  # a template is copied only while nobody is connected
        yield TEMPLATE


@pytest.fixture
async def store(server_url: str, template: str) -> AsyncIterator[Store]:
    name = f"skill_store_embedder_{uuid.uuid4().hex[:8]}"
    with embedding_dimensions(DIMENSIONS):
        engine = await get_engine(await create_database(server_url, name, template=template))
        try:
            async with engine.connect() as connection:
                teams = dict((await connection.execute(text("SELECT slug, id FROM team"))).all())
            yield Store(engine, get_session_factory(engine), teams)
        finally:
            await finish_index_builds(engine)
            await engine.dispose()
            await drop_database(server_url, name)


async def select(store: Store, sql: str, **params: Any) -> list[Any]:
    async with store.engine.connect() as connection:
        return list((await connection.execute(text(sql), params)).all())


async def memories(store: Store) -> list[Row]:
    found = await select(
        store,
        "SELECT id, team_id, content, embedding_model, embedding, load_batch FROM memory"
        " ORDER BY team_id, id",
    )
    return [
        Row(id, team, content, model, None if vector is None else vector.to_list(), batch)
        for id, team, content, model, vector, batch in found
    ]


def embedded_by(embedder: Embedder, row: Row) -> bool:
    return row.embedding is not None and bool(
        np.allclose(row.embedding, embedder.vector(row.content), atol=1e-6)
    )


async def recall(store: Store, embedder: Any, team: str, query: str) -> list[uuid.UUID]:
    async with store.factory() as session:
        hits = await MemoryRepository(session, embedder=embedder).recall(
            query, team_id=store.teams[team], limit=10
        )
    return [hit.id for hit in hits]


async def searches(store: Store, embedder: Any) -> dict[str, list[uuid.UUID]]:
    return {team: await recall(store, embedder, team, "tea and jazz") for team in TEAM_SIZES}


async def search_paths(store: Store, team: str, query: list[float]) -> set[str]:
    found = await select(
        store,
        "SELECT DISTINCT path FROM search_memories(CAST(:query AS vector), :team, NULL, NULL,"
        " NULL, 10, NULL, :bound)",
        query=query,
        team=store.teams[team],
        bound=EXACT_SEARCH_MAX_ROWS,
    )
    return {path for (path,) in found}


async def exact_top(store: Store, team: str, query: list[float]) -> list[uuid.UUID]:
    """The true top 10 of an active team's memories, with index scans off."""
    async with store.engine.connect() as connection:
        await connection.execute(text("SET LOCAL enable_indexscan = off"))
        await connection.execute(text("SET LOCAL enable_bitmapscan = off"))
        found = await connection.execute(
            text(
                "SELECT id FROM memory WHERE team_id = :team AND status = 'active'"
                " ORDER BY embedding <=> CAST(:query AS vector), id LIMIT 10"
            ),
            {"query": query, "team": store.teams[team]},
        )
        return list(found.scalars())


async def shadow_objects(store: Store) -> list[str]:
    """The columns, indexes and trigger of a migration in progress, by name."""
    found = await select(
        store,
        r"SELECT attname FROM pg_attribute WHERE attrelid = 'memory'::regclass"
        r" AND attname LIKE '%\_next' AND NOT attisdropped"
        r" UNION ALL SELECT relname FROM pg_class WHERE relname LIKE 'memory\_next\_%'"
        r" UNION ALL SELECT tgname FROM pg_trigger WHERE tgname = 'trg_memory_embedding_next'"
        r" ORDER BY 1",
    )
    return [name for (name,) in found]


async def schema_check(store: Store) -> None:
    await run_alembic(command.check, store.engine)


async def everything(store: Store) -> dict[str, tuple[int, str]]:
    async with store.factory() as session:
        return await fingerprint(session)


async def test_every_memory_moves_to_the_new_model_and_dimension(store: Store) -> None:
    before = await searches(store, OLD)
    during: list[dict[str, list[uuid.UUID]]] = []

    async def search_meanwhile(call: int) -> None:
        if call == 3:  # two batches written
            during.append(await searches(store, OLD))

    new = Embedder("new-model", during=search_meanwhile)
    progress: list[EmbeddingMigrationProgress] = []
    report = await migrate_embeddings(
        store.engine, new, batch_size=BATCH, on_progress=progress.append
    )

    rows = await memories(store)
    embedded = [row for row in rows if row.embedding is not None]
    moved = len(embedded)
    assert moved == sum(TEAM_SIZES.values()) + 1  # the archived memory too
    assert all(embedded_by(new, row) and row.model == "new-model" for row in embedded)
    assert [(row.content, row.model) for row in rows if row.embedding is None] == [
        ("no vector", None)
    ]
    assert sorted(new.texts()) == sorted(row.content for row in embedded)  # each once
    assert [len(call) for call in new.calls] == [BATCH] * (moved // BATCH) + [moved % BATCH]
    assert (
        report.model,
        report.dimensions,
        report.previous_models,
        report.previous_dimensions,
        report.team_id,
        (report.embedded, report.copied, report.resumed, report.switched),
        report.embed_calls,
        (report.indexes_built, report.indexes_rebuilt),
    ) == (
        "new-model",
        NEW_DIMENSIONS,
        [HASHING_MODEL],
        DIMENSIONS,
        None,
        (moved, 0, 0, moved),
        len(new.calls),
        (2, 0),  # the big team's indexes were built on the new column, and switched with it
    )
    assert [update.done for update in progress] == sorted({update.done for update in progress})
    assert (progress[-1].done, progress[-1].total) == (moved, moved)
    assert all(update.rate > 0 and update.eta is not None for update in progress)

    logged = await select(
        store, "SELECT memory_id, reason FROM memory_log WHERE changed_by = :by", by=MIGRATOR
    )
    assert sorted(logged) == sorted(
        (row.id, "embedder hashing (8 dimensions) → new-model (12 dimensions)") for row in embedded
    )

    # Searches: with the old vectors until the switch, the new ones after it.
    assert during == [before]
    with pytest.raises(EmbeddingModelError):
        await recall(store, OLD, "big", "tea")
    assert len(await recall(store, new, "small", "tea and jazz")) == 10
    query = new.vector(content("big", 7))
    assert await search_paths(store, "big", query) == {"index"}
    assert (await recall(store, new, "big", content("big", 7)))[0] == (
        await exact_top(store, "big", query)
    )[0]
    with embedding_dimensions(NEW_DIMENSIONS):
        await schema_check(store)
    assert await shadow_objects(store) == []


async def test_writes_made_meanwhile_are_embedded_as_they_are_at_the_switch(
    store: Store,
) -> None:
    ordered = [row for row in await memories(store) if row.embedding is not None]
    # The first two batches are written (or being written) when the third call embeds.
    edited, revectored, *rewritten = ordered[: 2 * BATCH]
    embedding, deleted = ordered[2 * BATCH + 1], ordered[2 * BATCH + 2]  # in the third batch
    added: list[uuid.UUID] = []
    locked: list[int] = []  # the texts of each call made while writes to `memory` wait

    async def write_meanwhile(call: int) -> None:
        [(switching,)] = await select(
            store,
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'relation'"
            " AND relation = 'memory'::regclass AND mode = 'ExclusiveLock' AND granted)",
        )
        if switching:
            locked.append(len(new.calls[-1]))
        if call != 3:
            return
        async with store.factory() as session:
            repository = MemoryRepository(session, embedder=OLD)
            for row, change in (
                (edited, {"content": "edited once embedded"}),
                (revectored, {"embedding": OLD.embed_one("another vector")}),
                (embedding, {"content": "edited while embedded"}),
                *((row, {"content": f"{row.content}, rewritten"}) for row in rewritten),
            ):
                await repository.update(row.id, change, team_id=row.team_id)
            await repository.delete(deleted.id, team_id=deleted.team_id)
            new_memory = await repository.remember(
                "written meanwhile", MemoryType.SEMANTIC, team_id=edited.team_id
            )
            added.append(new_memory.id)
            await session.commit()

    new = Embedder("new-model", during=write_meanwhile)
    await migrate_embeddings(store.engine, new, batch_size=BATCH)

    rows = {row.id: row for row in await memories(store)}
    assert deleted.id not in rows
    assert (rows[edited.id].content, rows[embedding.id].content) == (
        "edited once embedded",
        "edited while embedded",
    )
    assert rows[added[0]].content == "written meanwhile"
    assert all(embedded_by(new, row) for row in rows.values() if row.content != "no vector")
    asked = new.texts()
    assert {edited.content, "edited once embedded", revectored.content} <= set(asked)
    assert asked.count(revectored.content) == 2
    assert len(asked) == len(ordered) + 2 * BATCH + 2  # the changed ones again, the new one
    assert sum(locked) <= BATCH  # passes went on until the memories left fit in one batch


async def test_a_memory_written_after_the_last_pass_is_embedded_by_the_switch(
    store: Store,
) -> None:
    calls = math.ceil(sum(row.embedding is not None for row in await memories(store)) / BATCH)
    added: list[uuid.UUID] = []

    async def write_at_the_last_call(call: int) -> None:
        if call == calls:  # one memory left: the passes end, the switch embeds it
            async with store.factory() as session:
                memory = await MemoryRepository(session, embedder=OLD).remember(
                    "written meanwhile", MemoryType.SEMANTIC, team_id=store.teams["small"]
                )
                await session.commit()
            added.append(memory.id)

    new = Embedder("new-model", during=write_at_the_last_call)
    report = await migrate_embeddings(store.engine, new, batch_size=BATCH)

    [row] = [row for row in await memories(store) if row.id in added]
    assert embedded_by(new, row) and row.model == "new-model"
    assert (len(new.calls), new.calls[-1]) == (calls + 1, ["written meanwhile"])
    assert report.switched == sum(TEAM_SIZES.values()) + 2


async def test_one_team_moves_alone_beside_its_index(store: Store) -> None:
    big = store.teams["big"]
    [(old_index, covers)] = await select(
        store, "SELECT index_name, covers FROM memory_team_index(:t)", t=big
    )
    others = "SELECT md5(string_agg(m::text, ',' ORDER BY m.id)) FROM memory AS m"
    others += " WHERE m.team_id <> :t"
    [others_before] = await select(store, others, t=big)
    new = Embedder("other-model", DIMENSIONS, salt="other ")

    report = await migrate_embeddings(store.engine, new, team_id=big, batch_size=BATCH)

    team_rows = [row for row in await memories(store) if row.team_id == big]
    [batch] = {row.load_batch for row in team_rows}
    assert all(embedded_by(new, row) and row.model == "other-model" for row in team_rows)
    assert batch is not None and batch > covers  # read exactly beside the old index
    assert await select(store, others, t=big) == [others_before]
    [(new_index, new_covers)] = await select(
        store, "SELECT index_name, covers FROM memory_team_index(:t)", t=big
    )
    assert (new_index != old_index, new_covers) == (True, batch)
    assert (report.switched, report.indexes_built, report.indexes_rebuilt) == (len(team_rows), 0, 1)
    query = new.vector(content("big", 11))
    assert await search_paths(store, "big", query) == {"index"}
    assert (await recall(store, new, "big", content("big", 11)))[0] == (
        await exact_top(store, "big", query)
    )[0]
    assert len(await recall(store, OLD, "small", "tea")) == 10
    logged = await select(
        store,
        "SELECT DISTINCT reason, count(*) OVER () FROM memory_log WHERE changed_by = :by",
        by=MIGRATOR,
    )
    assert logged == [
        ("embedder hashing (8 dimensions) → other-model (8 dimensions)", len(team_rows))
    ]
    assert await shadow_objects(store) == []


async def test_memories_of_the_new_model_are_carried_over_not_embedded(store: Store) -> None:
    """The same dimension, every team: the memories of the new model keep their vectors."""
    big = store.teams["big"]
    new = Embedder("other-model", DIMENSIONS, salt="other ")
    await migrate_embeddings(store.engine, new, team_id=big, batch_size=BATCH)
    newer = Embedder("other-model", DIMENSIONS, salt="other ")

    report = await migrate_embeddings(store.engine, newer, batch_size=BATCH)

    rows = [row for row in await memories(store) if row.embedding is not None]
    assert all(embedded_by(new, row) and row.model == "other-model" for row in rows)
    assert sorted(newer.texts()) == sorted(row.content for row in rows if row.team_id != big)
    assert (report.copied, report.embedded, report.switched) == (
        TEAM_SIZES["big"],
        len(rows) - TEAM_SIZES["big"],
        len(rows) - TEAM_SIZES["big"],
    )


@pytest.mark.parametrize(
    ("embedder", "team", "message"),
    [
        (Embedder(HASHING_MODEL, DIMENSIONS), None, "nothing to do: every memory with a vector"),
        (Embedder(HASHING_MODEL, DIMENSIONS), "small", "nothing to do: every memory of the team"),
        (Embedder("new-model"), "small", "one team cannot move to 12 dimensions"),
        (Embedder("huge", 2001), None, "vectors have 2001 dimensions: the memories' vector index"),
    ],
    ids=["nothing-to-do", "nothing-to-do-in-the-team", "one-team-new-dimension", "too-many"],
)
async def test_a_refused_migration_changes_nothing(
    store: Store, embedder: Embedder, team: str | None, message: str
) -> None:
    before = await everything(store)
    team_id = None if team is None else store.teams[team]
    with pytest.raises(EmbeddingMigrationError, match=message):
        await migrate_embeddings(store.engine, embedder, team_id=team_id)
    assert await everything(store) == before
    assert await shadow_objects(store) == []
    assert embedder.calls == []


async def test_an_unknown_team_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="team"):
        await migrate_embeddings(
            store.engine, Embedder("new-model", DIMENSIONS), team_id=uuid.uuid4()
        )
    assert await shadow_objects(store) == []


async def test_a_second_migration_at_once_is_refused(store: Store) -> None:
    async with store.engine.connect() as connection:
        holder = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        with pytest.raises(EmbeddingMigrationError, match="another embedder migration is running"):
            await migrate_embeddings(store.engine, Embedder("new-model"))
        await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    assert await shadow_objects(store) == []


def stop_at(call_number: int) -> Callable[[int], Awaitable[None]]:
    async def during(call: int) -> None:
        if call == call_number:
            raise EmbeddingServiceError("the embedding service went away")

    return during


async def test_a_stopped_migration_resumes_and_refuses_another_target(store: Store) -> None:
    first = Embedder("new-model", during=stop_at(3))
    with pytest.raises(EmbeddingServiceError):
        await migrate_embeddings(store.engine, first, batch_size=BATCH)
    [(done,)] = await select(
        store, "SELECT count(*) FROM memory WHERE embedding_model_next IS NOT NULL"
    )
    assert done == 2 * BATCH  # the batch written while the third was embedded too
    before = await everything(store)

    for other, team in (
        (Embedder("else"), None),
        (Embedder("new-model", 16), None),
        (Embedder("new-model"), "small"),
    ):
        with pytest.raises(
            EmbeddingMigrationError,
            match=r"a migration to 'new-model' \(12 dimensions\) of every team is in progress",
        ):
            await migrate_embeddings(
                store.engine, other, team_id=None if team is None else store.teams[team]
            )
        assert other.calls == []
    assert await everything(store) == before

    again = Embedder("new-model")
    report = await migrate_embeddings(store.engine, again, batch_size=BATCH)

    rows = [row for row in await memories(store) if row.embedding is not None]
    assert all(embedded_by(again, row) and row.model == "new-model" for row in rows)
    assert not set(again.texts()) & set(first.calls[0] + first.calls[1])
    assert sorted(first.calls[0] + first.calls[1] + again.texts()) == sorted(
        row.content for row in rows
    )
    assert (report.resumed, report.embedded, report.switched) == (
        2 * BATCH,
        len(rows) - 2 * BATCH,
        len(rows),
    )


async def test_the_schema_check_ignores_a_migration_in_progress_which_can_be_abandoned(
    store: Store,
) -> None:
    rows = await memories(store)
    calls = math.ceil(sum(row.embedding is not None for row in rows) / BATCH)

    async def interrupt(call: int) -> None:
        if call == calls:  # the last batch of the first pass: one memory is left for the switch
            async with store.factory() as session:
                await MemoryRepository(session, embedder=OLD).remember(
                    "written meanwhile", MemoryType.SEMANTIC, team_id=store.teams["small"]
                )
                await session.commit()
        if call == calls + 1:  # at the switch, once the indexes on the new column are built
            raise EmbeddingServiceError("the embedding service went away")

    with pytest.raises(EmbeddingServiceError):
        await migrate_embeddings(
            store.engine, Embedder("new-model", during=interrupt), batch_size=BATCH
        )
    [(key, lists)] = await select(
        store,
        "SELECT lpad(to_hex(memory_team_key(:t)), 16, '0'), memory_team_lists(:t, true)",
        t=store.teams["big"],
    )
    assert set(await shadow_objects(store)) == {
        "embedding_model_next",
        "embedding_next",
        "memory_next_embedder",
        f"memory_next_{key}_0",  # the big team's HNSW and IVF indexes
        f"memory_next_{key}_0_{lists}",
        "trg_memory_embedding_next",
    }

    await schema_check(store)
    assert await abandon_embedding_migration(store.engine) is True

    assert await shadow_objects(store) == []
    after = await memories(store)
    assert [
        (row.id, row.model, row.embedding) for row in after if row.content != "written meanwhile"
    ] == [(row.id, row.model, row.embedding) for row in rows]
    await schema_check(store)
    assert await abandon_embedding_migration(store.engine) is False


async def test_steps_wait_their_turn_behind_a_long_transaction(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(migration, "LOCK_TIMEOUT", "50ms")
    monkeypatch.setattr(migration, "LOCK_RETRY_SECONDS", 0.01)
    caplog.set_level(logging.INFO, logger=migration.__name__)
    async with store.engine.connect() as blocker:
        await blocker.execute(text("UPDATE memory SET importance = 6 WHERE content = 'archived'"))
        running = asyncio.create_task(
            migrate_embeddings(store.engine, Embedder("new-model"), team_id=None)
        )
        while not any("busy" in record.getMessage() for record in caplog.records):
            assert not running.done(), running
            await asyncio.sleep(0.01)
        await blocker.commit()
    report = await running
    assert report.switched == sum(TEAM_SIZES.values()) + 1


async def test_processes_that_searched_before_the_switch_get_no_raw_error(store: Store) -> None:
    """Their connections prepared their statements, and read the column's dimension, before."""
    url = store.engine.url.render_as_string(hide_password=False)
    engines = [await get_engine(url), await get_engine(url)]
    try:
        for engine in engines:
            async with get_session_factory(engine)() as session:
                repository = MemoryRepository(session, embedder=OLD)
                assert await repository.recall("tea", team_id=store.teams["small"])
                assert await repository.list(team_id=store.teams["small"], limit=5)
        new = Embedder("new-model")

        await migrate_embeddings(store.engine, new)

        searching, remembering = (get_session_factory(engine) for engine in engines)
        async with searching() as session:
            repository = MemoryRepository(session, embedder=OLD)
            with pytest.raises(EmbeddingDimensionError, match="has 8 dimensions; expected 12"):
                await repository.search_by_embedding(
                    OLD.embed_one("tea"), team_id=store.teams["small"]
                )
            listed = await repository.list(team_id=store.teams["small"], limit=5)
            assert {len(memory.embedding or []) for memory in listed} == {NEW_DIMENSIONS}
        async with remembering() as session:
            repository = MemoryRepository(session, embedder=new)
            assert await repository.recall("tea", team_id=store.teams["small"])
    finally:
        for engine in engines:
            await engine.dispose()
