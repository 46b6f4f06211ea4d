"""`skill-store embeddings migrate` as a user runs it, against a local OpenAI-compatible stub.

The store starts at 8 dimensions, embedded by the hashing embedder; the stub's model gives 12.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from skill_store import (
    EmbeddingDimensionError,
    HashingEmbedder,
    MemoryRepository,
    OpenAIEmbedder,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    finish_index_builds,
    get_session_factory,
)
from skill_store.cli import app
from skill_store.embedder_migration import MIGRATION_LOCK, MIGRATOR
from skill_store.embeddings import HASHING_MODEL
from skill_store.settings import get_settings
from skill_store.team_indexes import EXACT_SEARCH_MAX_ROWS

from ..support import FakeEmbeddingService, fingerprint, migrated_database, serving

SKILL_STORE = Path(sys.executable).with_name("skill-store")
DIMENSIONS = 8
NEW_DIMENSIONS = 12
BATCH = 50
SIZES = {"big": EXACT_SEARCH_MAX_ROWS + 20, "small": 30}
MODEL = "stub-embedding"
KEY = "sk-stub-key"
OLD = HashingEmbedder(DIMENSIONS)


def stub_vector(text: str, dimensions: int) -> list[float]:
    """The stub model's vector: unlike the store's, and alike for alike texts."""
    return HashingEmbedder(dimensions).embed_one(f"stub {text}")


@asynccontextmanager
async def populated(server_url: str) -> AsyncIterator[AsyncEngine]:
    """A committed store of its own: a team with its index, a small one."""
    name = f"skill_store_embeddings_cli_{uuid.uuid4().hex[:8]}"
    async with migrated_database(server_url, name, dimensions=DIMENSIONS) as engine:
        async with get_session_factory(engine)() as session:
            owner = await UserRepository(session).create(
                UserCreate(email="ops@example.com", display_name="Ops", password="correct horse")
            )
            for slug, size in SIZES.items():
                team = await TeamRepository(session).create(
                    TeamCreate(name=slug, slug=slug, owner_id=owner.id)
                )
                texts = [f"{slug} note {number} about tea" for number in range(size)]
                await MemoryRepository(session).add_many(
                    {"team_id": team.id, "memory_type": "semantic", "content": text}
                    | {"embedding": vector, "embedding_model": HASHING_MODEL}
                    for text, vector in zip(texts, await OLD.embed(texts), strict=True)
                )
            await session.commit()
        await finish_index_builds(engine)
        yield engine


@pytest.fixture
async def store(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with populated(server_url) as engine:
        yield engine


@pytest.fixture(scope="module")
async def unchanged_store(server_url: str) -> AsyncIterator[AsyncEngine]:
    """For the commands that must change nothing."""
    async with populated(server_url) as engine:
        yield engine


@pytest.fixture
def service() -> Iterator[FakeEmbeddingService]:
    with serving(FakeEmbeddingService(stub_vector)) as service:
        yield service


def url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=False)


def environment(engine: AsyncEngine, dimensions: int, **more: str) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDING_", "DATABASE_"))}
    return kept | {"DATABASE_URL": url(engine), "EMBEDDING_DIMENSIONS": str(dimensions)} | more


def stub_environment(engine: AsyncEngine, service: FakeEmbeddingService) -> dict[str, str]:
    return environment(
        engine,
        NEW_DIMENSIONS,
        EMBEDDING_MODEL=MODEL,
        EMBEDDING_API_KEY=KEY,
        EMBEDDING_BASE_URL=service.base_url,
    )


def skill_store(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SKILL_STORE), *args], env=env, capture_output=True, text=True, timeout=300
    )


# Whether a session holds the advisory lock of a running migration.
HELD = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = :high AND objid = :low"
    " AND objsubid = 1"
)


async def select(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql), params)).all())


async def test_a_killed_migration_resumes_and_finishes(
    store: AsyncEngine, service: FakeEmbeddingService
) -> None:
    contents = {content for (content,) in await select(store, "SELECT content FROM memory")}
    teams = dict(await select(store, "SELECT slug, id FROM team"))
    service.hold_from = 4  # the fourth batch's request waits: three batches are embedded
    migrate = [str(SKILL_STORE), "embeddings", "migrate", "--batch-size", str(BATCH)]
    killed = subprocess.Popen(
        migrate,
        env=stub_environment(store, service),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert await asyncio.to_thread(service.holding.wait, 120), "no fourth batch asked for"
        [(written,)] = await select(
            store, "SELECT count(*) FROM memory WHERE embedding_model_next IS NOT NULL"
        )
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    finally:
        killed.kill()
    assert killed.returncode == -signal.SIGKILL
    assert written >= 2 * BATCH  # committed; the third batch's write may have been too

    # Meanwhile the store works as before, and its schema matches the models.
    async with get_session_factory(store)() as session:
        memories = MemoryRepository(session, embedder=OLD)
        assert await memories.recall("big note 7 about tea", team_id=teams["big"])
        assert await memories.recall("small note 7 about tea", team_id=teams["small"])
    checked = skill_store("db", "check", env=environment(store, DIMENSIONS))
    assert checked.returncode == 0, checked.stderr
    assert "no drift" in checked.stdout

    service.hold_from = None
    service.release.set()
    while await select(store, HELD, high=MIGRATION_LOCK >> 32, low=MIGRATION_LOCK & 0xFFFFFFFF):
        await asyncio.sleep(0.05)  # the killed process's server connection ends
    resumed = skill_store(*migrate[1:], "--json", env=stub_environment(store, service))

    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed"] >= written
    assert report["resumed"] + report["embedded"] == report["switched"] == len(contents)
    assert (report["model"], report["dimensions"], report["previous_dimensions"]) == (
        MODEL,
        NEW_DIMENSIONS,
        DIMENSIONS,
    )
    progress = resumed.stderr.strip().splitlines()
    assert progress and all(line.startswith("embedded ") for line in progress), resumed.stderr
    assert progress[-1].startswith(f"embedded {report['embedded']} / {report['embedded']} memories")

    rows = await select(store, "SELECT id, content, embedding_model, embedding FROM memory")
    for _id, content, model, vector in rows:
        assert model == MODEL
        assert np.allclose(vector.to_list(), stub_vector(content, NEW_DIMENSIONS), atol=1e-6)
    asked = Counter(service.texts())
    assert set(asked) == contents
    assert max(asked.values()) <= 2  # the batches cut short by the kill, asked again
    assert sum(asked.values()) <= len(contents) + 2 * BATCH
    logged = await select(
        store,
        "SELECT count(DISTINCT memory_id), count(*) FROM memory_log WHERE changed_by = :by",
        by=MIGRATOR,
    )
    assert logged == [(len(contents), len(contents))]

    # Afterwards: searches with the new embedder, an error for a vector of the old length.
    stub = OpenAIEmbedder(MODEL, KEY, NEW_DIMENSIONS, base_url=service.base_url)
    async with get_session_factory(store)() as session:
        memories = MemoryRepository(session, embedder=stub)
        [best, *_] = await memories.recall("big note 7 about tea", team_id=teams["big"])
        assert best.content == "big note 7 about tea"
        with pytest.raises(EmbeddingDimensionError, match="has 8 dimensions; expected 12"):
            await memories.search_by_embedding(OLD.embed_one("tea"), team_id=teams["big"])
    [(index,)] = await select(store, "SELECT index_name FROM memory_team_index(:t)", t=teams["big"])
    assert index is not None
    checked = skill_store("db", "check", env=environment(store, NEW_DIMENSIONS))
    assert checked.returncode == 0, checked.stderr


@pytest.fixture
def run(unchanged_store: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The command in this process, with these settings (the offline embedder by default)."""

    def invoke(*args: str, **settings: str) -> Result:
        for name, value in environment(unchanged_store, DIMENSIONS, **settings).items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("EMBEDDING_API_KEY", raising=False)
        get_settings.cache_clear()
        return CliRunner().invoke(app, ["embeddings", *args])

    yield invoke
    monkeypatch.undo()
    get_settings.cache_clear()


async def everything(engine: AsyncEngine) -> dict[str, tuple[int, str]]:
    async with get_session_factory(engine)() as session:
        return await fingerprint(session)


@pytest.mark.parametrize(
    ("args", "settings", "message"),
    [
        ([], {}, "error: nothing to do: every memory with a vector was embedded by 'hashing'"),
        (
            ["--team", "small"],
            {"EMBEDDING_DIMENSIONS": "12"},
            "error: one team cannot move to 12 dimensions: the vector column has 8",
        ),
        (["--team", "nope"], {"EMBEDDING_DIMENSIONS": "12"}, "error: team 'nope' does not exist"),
        (
            [],
            {"EMBEDDING_DIMENSIONS": "2001"},
            "error: invalid configuration: EMBEDDING_DIMENSIONS: Input should be less than or"
            " equal to 2000",
        ),
        (["--batch-size", "0"], {}, "error: --batch-size must be at least 1, got 0"),
    ],
    ids=["nothing-to-do", "one-team-new-dimension", "unknown-team", "too-many", "batch-size"],
)
async def test_a_refusal_is_one_line_and_changes_nothing(
    unchanged_store: AsyncEngine, run: Any, args: list[str], settings: dict[str, str], message: str
) -> None:
    before = await everything(unchanged_store)
    result = await asyncio.to_thread(run, "migrate", *args, **settings)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert await everything(unchanged_store) == before


async def test_abandon_without_a_migration_says_so(run: Any) -> None:
    result = await asyncio.to_thread(run, "abandon")
    assert (result.exit_code, result.stdout) == (0, "no embedder migration to abandon\n")
