"""The server killed during `add_many` or `memories import`: a prompt `ConnectionLostError`.

Each kill is real (SIGKILL of the embedded server's postmaster, in a data directory of this
module's own). It lands while a `COPY` waits for a lock that another connection holds
(locking `memory` leaves the client blocked on a full socket mid-`COPY`, locking
`memory_tag` leaves it waiting for the server's answer to a sent `COPY`), or at moments
spread over the copies (during one, or between two, where the server's last words reach a
connection that is idle).
"""

import asyncio
import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    ConnectionLostError,
    MemoryCreate,
    MemoryRepository,
    MemoryType,
    Settings,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    get_engine,
    get_session_factory,
    migrate,
)
from skill_store.database import start_embedded_server
from skill_store.repositories.base import translated_errors
from skill_store.settings import get_settings

from ..support import embedded_server

RUNS = 24
MEMORIES = 600  # 3.7 MB with their embeddings: more than sockets buffer
LOST_TIMEOUT = timedelta(seconds=5)
SKILL_STORE = Path(sys.executable).with_name("skill-store")


@dataclass
class Server:
    data_dir: Path
    team_id: uuid.UUID
    killed: int | None = None

    def start(self) -> str:
        """The server's URL, started again once the killed one has exited."""
        while self.killed is not None and psutil.pid_exists(self.killed):
            if psutil.Process(self.killed).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.01)
        return start_embedded_server(self.data_dir)

    def kill(self) -> None:
        self.killed = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(self.killed, signal.SIGKILL)


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[Server]:
    """An embedded server of this module's own."""
    with embedded_server("skill_store_killed_") as (url, data_dir):
        await migrate(url)
        engine = await get_engine(url)
        async with get_session_factory(engine)() as session:
            owner = await UserRepository(session).create(
                UserCreate(email="ada@example.com", display_name="Ada", password="correct horse")
            )
            team = await TeamRepository(session).create(
                TeamCreate(name="Acme", slug="acme", owner_id=owner.id)
            )
            await session.commit()
        await engine.dispose()
        yield Server(data_dir, team.id)


@asynccontextmanager
async def locked(engine: AsyncEngine, table: str | None) -> AsyncIterator[None]:
    """Hold a lock that makes any `COPY` into `table` wait, on a connection the kill cuts."""
    connection = await engine.connect()
    if table is not None:
        await connection.execute(text(f"LOCK TABLE {table} IN SHARE MODE"))
    try:
        yield
    finally:
        await connection.invalidate()
        await connection.close()


async def wait_for_copy(engine: AsyncEngine, *, blocked: bool) -> None:
    """Until a `COPY` runs (`blocked`: waits for a lock)."""
    waiting = " AND wait_event_type = 'Lock'" if blocked else ""
    query = text(f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%'{waiting}")
    for _ in range(400):
        async with engine.connect() as watcher:
            if (await watcher.execute(query)).scalar():
                return
        await asyncio.sleep(0.01)
    raise AssertionError("no COPY ever ran")


async def memory_count(server: Server) -> int:
    engine = await get_engine(server.start())
    async with engine.connect() as connection:
        count = (await connection.execute(text("SELECT count(*) FROM memory"))).scalar_one()
    await engine.dispose()
    return int(count)


def memories(team_id: uuid.UUID) -> list[MemoryCreate]:
    embedding = [1.0] + [0.0] * (get_settings().embedding_dimensions - 1)
    return [
        MemoryCreate(
            team_id=team_id,
            memory_type=MemoryType.SEMANTIC,
            content=f"fact {index}",
            embedding=embedding,
            tags=[f"tag-{index}"],
        )
        for index in range(MEMORIES)
    ]


async def copy_seconds(server: Server, items: list[MemoryCreate]) -> float:
    """How long an `add_many` of `items` runs from its first `COPY` on, the least of two."""
    durations = []
    for _ in range(2):
        engine = await get_engine(server.start())
        async with get_session_factory(engine)() as session:
            task = asyncio.create_task(
                MemoryRepository(session).add_many(items, batch_size=MEMORIES // 6)
            )
            await wait_for_copy(engine, blocked=False)
            started = time.monotonic()
            await task
            durations.append(time.monotonic() - started)
            await session.rollback()
        await engine.dispose()
    return min(durations)


async def add_many_then_roll_back(session: AsyncSession, items: list[MemoryCreate]) -> None:
    """`add_many`, then the end of its transaction, where a kill after the last `COPY` shows."""
    await MemoryRepository(session).add_many(items, batch_size=MEMORIES // 6)
    async with translated_errors():
        await session.rollback()


async def test_add_many_raises_connection_lost_promptly_when_the_server_is_killed(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A `COPY` blocked mid-stream, one waiting for its answer, then kills at moments spread
    over the copies of an `add_many` (during a `COPY`, between two, after the last): each
    cut is a `ConnectionLostError` in words, and asyncio reports nothing.

    A backend can still answer until it notices that its server died, so a kill near the
    end may cut nothing; most kills cut the work.
    """
    settings = Settings(connection_lost_timeout=LOST_TIMEOUT)
    items = memories(server.team_id)
    duration = await copy_seconds(server, items)
    runs = [("memory", 0.0), ("memory_tag", 0.0)] + [(None, run / RUNS) for run in range(RUNS)]
    lost: list[ConnectionLostError] = []
    for lock, moment in runs:
        engine = await get_engine(server.start(), settings=settings)
        try:
            async with locked(engine, lock), get_session_factory(engine)() as session:
                task = asyncio.create_task(add_many_then_roll_back(session, items))
                await wait_for_copy(engine, blocked=lock is not None)
                await asyncio.sleep(moment * duration)
                server.kill()
                try:
                    # Without a bound it could wait for ever: the test's own limit.
                    async with asyncio.timeout(LOST_TIMEOUT.total_seconds()):
                        await task
                except ConnectionLostError as error:
                    lost.append(error)
            gc.collect()  # a future whose exception nobody retrieved says so when collected
        finally:
            await engine.dispose()
    assert len(lost) > len(runs) // 2
    for error in lost:
        assert str(error).startswith("the connection to the database was lost"), error
        assert not re.search("state|another operation|protocol", error.reason), error
    assert [record.getMessage() for record in caplog.records if record.name == "asyncio"] == []
    assert await memory_count(server) == 0


@pytest.fixture
def memory_file() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="skill_store_import_"))
    path = folder / "memories.jsonl"
    line = '{"memory_type": "semantic", "content": "fact %d", "tags": ["imported"]}\n'
    path.write_text("".join(line % index for index in range(MEMORIES)))  # embedded on import
    yield path
    shutil.rmtree(folder)


async def test_import_exits_1_with_one_line_when_the_server_is_killed(
    server: Server, memory_file: Path
) -> None:
    url = server.start()
    engine = await get_engine(url)
    environment = {name: value for name, value in os.environ.items()}
    environment |= {"DATABASE_URL": url, "CONNECTION_LOST_TIMEOUT": "5"}
    environment.pop("EMBEDDING_API_KEY", None)
    try:
        async with locked(engine, "memory"):
            importer = subprocess.Popen(
                [str(SKILL_STORE), "memories", "import", str(memory_file), "--team", "acme"],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                await wait_for_copy(engine, blocked=True)
                server.kill()
                _, stderr = await asyncio.to_thread(importer.communicate, timeout=60)
            finally:
                importer.kill()
    finally:
        await engine.dispose()
    assert importer.returncode == 1
    # Without EMBEDDING_API_KEY the import says once that it embeds with the hashing
    # embedder; then come progress lines, and the one error line.
    warning, *progress, error = stderr.strip().splitlines()
    assert warning.startswith("warning: EMBEDDING_API_KEY is not set"), stderr
    assert all(line.startswith("importing ") for line in progress), stderr
    assert error.startswith("error: the connection to the database was lost"), stderr
    assert await memory_count(server) == 0
