"""FastAPI on the store: the engine for the app's lifetime, a session a request, errors as statuses.

Needs the `web` extra (`pip install "skill-store[web]"`); `import skill_store` does not import
this module. `examples/web.py` is a whole app:

    app = FastAPI(lifespan=store_lifespan)
    add_exception_handlers(app)

    @app.get("/teams")
    async def teams(session: SessionDep) -> list[TeamRead]: ...
"""

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

try:
    from fastapi import FastAPI, Request, params
    from fastapi.responses import JSONResponse
except ModuleNotFoundError as error:
    raise ModuleNotFoundError(
        'skill_store.web needs FastAPI: pip install "skill-store[web]"', name=error.name
    ) from error
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.database import ensure_migrated, get_engine, get_session_factory, migrate
from skill_store.errors import (
    AccessDeniedError,
    ConflictError,
    ConnectionLostError,
    DatabaseUnreachableError,
    EmbeddingDimensionError,
    EmbeddingModelError,
    EmbeddingServiceError,
    NotFoundError,
    SchemaNotMigratedError,
    StatementTimeoutError,
)
from skill_store.repositories.base import translated_errors
from skill_store.settings import Settings
from skill_store.tenancy import scope_to_team


@asynccontextmanager
async def store_lifespan(
    app: FastAPI,
    *,
    url: str | None = None,
    settings: Settings | None = None,
    upgrade: bool = False,
) -> AsyncIterator[None]:
    """Create the store's engine when the app starts, and dispose of it when the app stops.

    Pass it as `FastAPI(lifespan=store_lifespan)`, or enter it in the app's own lifespan
    (`async with store_lifespan(app): yield`). Without a URL and without `DATABASE_URL`, the
    engine starts the embedded server, which stops when the process exits. The app does not
    start on a database that cannot be reached or is not migrated: the error says why.

    Args:
        app: The application; its `state` keeps the engine for the dependencies.
        url: A PostgreSQL URL; by default `DATABASE_URL`, or the embedded server when unset.
        settings: Settings for the engine; by default `get_settings()`.
        upgrade: Migrate the schema to the latest revision at start (instead of requiring it).

    Raises:
        DatabaseUnreachableError: If the database cannot be reached.
        SchemaNotMigratedError: If the schema is not at the latest revision and not `upgrade`.
    """
    engine = await get_engine(url, settings=settings)
    try:
        await (migrate(engine) if upgrade else ensure_migrated(engine))
        app.state.skill_store_engine = engine
        yield
    finally:
        app.state.skill_store_engine = None
        await engine.dispose()


def store_engine(request: Request) -> AsyncEngine:
    """The engine `store_lifespan` created: a dependency, e.g. for `check_connection`.

    Raises:
        RuntimeError: If the app was not started with `store_lifespan`.
    """
    engine: AsyncEngine | None = getattr(request.app.state, "skill_store_engine", None)
    if engine is None:
        raise RuntimeError("the app has no store engine: create it with lifespan=store_lifespan")
    return engine


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    return get_session_factory(store_engine(request))


@asynccontextmanager
async def _committed(session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """`session`, committed if the block succeeds; closing it rolls back what was not."""
    async with session:
        yield session
        async with translated_errors():
            await session.commit()


async def request_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session for the request, unscoped (it acts as the tables' owner: administration).

    The transaction commits once the route returns, before the response is sent (so a
    failed commit is the response), and rolls back if the route raises, `HTTPException`
    included. Use it through `SessionDep`.
    """
    async with _committed(_sessions(request)()) as session:
        yield session


SessionDep = Annotated[AsyncSession, params.Depends(request_session, scope="function")]
"""A route parameter `session: SessionDep` gets the request's session (`request_session`)."""

EngineDep = Annotated[AsyncEngine, params.Depends(store_engine)]
"""A route parameter `engine: EngineDep` gets the app's engine (`store_engine`)."""


def team_session(current_team: Callable[..., Any]) -> params.Depends:
    """A dependency: the request's session, scoped to the caller's team with `scope_to_team`.

    The session sees and writes only that team's rows, whatever SQL it sends (the database's
    row-level security), and commits or rolls back as `request_session` does.

    Args:
        current_team: The app's own dependency that authenticates the caller and returns the
            id (a UUID) of the team the caller acts for; FastAPI resolves its parameters.

    Returns:
        For a route parameter: `session: Annotated[AsyncSession, team_session(current_team)]`.
    """

    async def scoped(
        request: Request, team_id: Annotated[uuid.UUID, params.Depends(current_team)]
    ) -> AsyncIterator[AsyncSession]:
        async with _committed(scope_to_team(_sessions(request)(), team_id)) as session:
            yield session

    return params.Depends(scoped, scope="function")


STATUS_CODES: dict[type[Exception], int] = {
    ValidationError: 422,
    EmbeddingDimensionError: 422,
    EmbeddingModelError: 422,
    NotFoundError: 404,
    ConflictError: 409,
    AccessDeniedError: 403,
    SchemaNotMigratedError: 503,
    DatabaseUnreachableError: 503,
    ConnectionLostError: 503,
    EmbeddingServiceError: 503,
    StatementTimeoutError: 504,
}
"""The HTTP status of each error of the store that `add_exception_handlers` answers."""


async def _error_response(_request: Request, error: Exception) -> JSONResponse:
    detail: Any = str(error)
    if isinstance(error, ValidationError):  # the fields, never the values (secrets)
        detail = error.errors(include_url=False, include_input=False, include_context=False)
    status = next(STATUS_CODES[kind] for kind in type(error).__mro__ if kind in STATUS_CODES)
    return JSONResponse({"detail": detail}, status_code=status)


def add_exception_handlers(app: FastAPI) -> None:
    """Answer the store's errors with their HTTP status and message (`STATUS_CODES`).

    A memory of another team is a 404, a unique or foreign-key clash a 409, bad input that
    passed the request's validation a 422 naming the fields, an unreachable database a 503.
    Other errors keep FastAPI's handling (a 500).

    Args:
        app: The application.
    """
    for kind in STATUS_CODES:
        app.add_exception_handler(kind, _error_response)
