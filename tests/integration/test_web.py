"""`skill_store.web` and `examples/web.py`, through an HTTP client, on a database of their own.

The example app commits, so it runs on a migrated database of its own (`DATABASE_URL`),
entered through its lifespan as a server would, and the tests read the database directly.
"""

import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Header
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    DatabaseUnreachableError,
    SchemaNotMigratedError,
    TeamRepository,
    UserRepository,
    check_connection,
    get_engine,
    get_session_factory,
)
from skill_store.database import latest_revision
from skill_store.settings import get_settings
from skill_store.web import team_session

from ..support import migrated_database

EXAMPLE = Path(__file__).parents[2] / "examples" / "web.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("web_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
async def database(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_database(server_url, "skill_store_web") as engine:
        yield engine


@pytest.fixture
def database_url(database: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = database.url.render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


async def new_team(database: AsyncEngine, slug: str) -> uuid.UUID:
    async with get_session_factory(database)() as session:
        owner = await UserRepository(session).create(
            {"email": f"{slug}@example.com", "display_name": slug, "password": "correct horse"}
        )
        team = await TeamRepository(session).create(
            {"name": slug, "slug": slug, "owner_id": owner.id}
        )
        await session.commit()
        return team.id


async def memory_count(database: AsyncEngine, team_id: uuid.UUID) -> tuple[int, int]:
    """The team's memories and audit rows, as committed."""
    async with database.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT (SELECT count(*) FROM memory WHERE team_id = :team),"
                " (SELECT count(*) FROM memory_log WHERE team_id = :team)"
            ),
            {"team": team_id},
        )
        memories, logs = result.one()
        return memories, logs


@pytest.fixture
async def client(example: ModuleType, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = example.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_remember_retrieve_and_list(client: httpx.AsyncClient, database: AsyncEngine) -> None:
    slug = f"web-{uuid.uuid4().hex[:8]}"
    team_id = await new_team(database, slug)
    team = {"X-Team": slug}

    remembered = await client.post(
        "/memories",
        headers=team,
        json=[
            {"content": "Ada prefers tea to coffee", "tags": ["drinks"]},
            {"content": "Ada climbs at the gym on Tuesdays", "memory_type": "episodic"},
        ],
    )
    assert remembered.status_code == 201, remembered.text
    memories = remembered.json()
    assert [memory["content"] for memory in memories] == [
        "Ada prefers tea to coffee",
        "Ada climbs at the gym on Tuesdays",
    ]
    assert all(memory["team_id"] == str(team_id) for memory in memories)
    assert all("embedding" not in memory for memory in memories)
    assert await memory_count(database, team_id) == (2, 2)  # committed, with the audit rows

    retrieved = await client.get("/retrieve", params={"query": "tea"}, headers=team)
    assert retrieved.status_code == 200, retrieved.text
    hits = retrieved.json()
    assert hits[0]["content"] == "Ada prefers tea to coffee"
    assert hits[0]["score"] >= hits[-1]["score"]

    listed = await client.get("/memories", headers=team)
    assert listed.status_code == 200, listed.text
    # Both were written by one transaction, so they are equally new.
    assert {memory["id"] for memory in listed.json()} == {memory["id"] for memory in memories}

    one = await client.get(f"/memories/{memories[0]['id']}", headers=team)
    assert one.status_code == 200, one.text
    assert one.json()["content"] == "Ada prefers tea to coffee"


async def test_another_teams_memory_is_not_found(
    client: httpx.AsyncClient, database: AsyncEngine
) -> None:
    ours, theirs = (f"web-{uuid.uuid4().hex[:8]}" for _ in range(2))
    await new_team(database, ours)
    await new_team(database, theirs)
    remembered = await client.post(
        "/memories", headers={"X-Team": theirs}, json=[{"content": "The launch code is 1234"}]
    )
    assert remembered.status_code == 201, remembered.text
    [memory] = remembered.json()

    found = await client.get(f"/memories/{memory['id']}", headers={"X-Team": ours})
    assert found.status_code == 404
    assert found.json() == {"detail": f"memory {memory['id']} does not exist"}
    assert (await client.get("/memories", headers={"X-Team": ours})).json() == []
    retrieved = await client.get(
        "/retrieve", params={"query": "launch code"}, headers={"X-Team": ours}
    )
    assert retrieved.json() == []


async def test_a_failed_write_keeps_nothing(
    client: httpx.AsyncClient, database: AsyncEngine
) -> None:
    slug = f"web-{uuid.uuid4().hex[:8]}"
    team_id = await new_team(database, slug)
    missing_agent = str(uuid.uuid4())

    response = await client.post(
        "/memories",
        headers={"X-Team": slug},
        json=[
            {"content": "Written first, then undone"},
            {"content": "By an agent the team does not have", "agent_id": missing_agent},
        ],
    )

    assert response.status_code == 409, response.text
    # The team role is not shown the key's values: the constraint is named in words.
    assert response.json() == {
        "detail": "the agent named by the memory is not of the memory's team"
    }
    assert await memory_count(database, team_id) == (0, 0)


async def test_health_reports_the_servers_versions_and_the_schemas_revision(
    client: httpx.AsyncClient, database: AsyncEngine
) -> None:
    response = await client.get("/health")

    assert response.status_code == 200, response.text
    health = response.json()
    async with database.connect() as connection:
        server, pgvector = (
            await connection.execute(
                text(
                    "SELECT current_setting('server_version'),"
                    " (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
                )
            )
        ).one()
    assert health == {
        "server_version": server,
        "pgvector_version": pgvector,
        "schema_revision": latest_revision(),
        "latest_revision": latest_revision(),
        "migrated": True,
        "latency_ms": health["latency_ms"],
    }
    assert health["latency_ms"] > 0


async def test_check_connection_of_an_unmigrated_and_an_unreachable_database(
    empty_database_url: str,
) -> None:
    engine = await get_engine(empty_database_url)
    try:
        empty = await check_connection(engine)
    finally:
        await engine.dispose()
    assert (empty.schema_revision, empty.pgvector_version, empty.migrated) == (None, None, False)

    unreachable = await get_engine("postgresql://ada:secret-password@127.0.0.1:1/store")
    try:
        with pytest.raises(DatabaseUnreachableError, match=r"127\.0\.0\.1:1") as caught:
            await check_connection(unreachable)
    finally:
        await unreachable.dispose()
    assert "secret-password" not in str(caught.value)


async def test_the_lifespan_refuses_an_unmigrated_database(empty_database_url: str) -> None:
    from skill_store.web import store_lifespan

    app = FastAPI()
    with pytest.raises(SchemaNotMigratedError, match="skill-store db upgrade"):
        async with store_lifespan(app, url=empty_database_url):
            pass
    assert app.state.skill_store_engine is None


async def test_a_team_session_sees_its_team_only_whatever_sql_it_sends(
    database: AsyncEngine, database_url: str
) -> None:
    from skill_store.web import store_lifespan

    ours, theirs = (f"web-{uuid.uuid4().hex[:8]}" for _ in range(2))
    teams = {ours: await new_team(database, ours), theirs: await new_team(database, theirs)}

    async def caller_team(x_team: Annotated[str, Header()]) -> uuid.UUID:
        return teams[x_team]

    app = FastAPI(lifespan=store_lifespan)

    @app.get("/count")
    async def count(session: Annotated[AsyncSession, team_session(caller_team)]) -> int:
        result = await session.exec(text("SELECT count(*) FROM team"))  # type: ignore[call-overload]
        return int(result.scalar_one())

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/count", headers={"X-Team": ours})

    assert response.status_code == 200, response.text
    assert response.json() == 1  # the database holds several teams; the session sees its own


def test_importing_the_web_module_without_fastapi_says_what_to_install() -> None:
    blocked = "import sys; sys.modules['fastapi'] = None; import skill_store.web"
    result = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60, env=os.environ
    )

    assert result.returncode == 1
    assert 'pip install "skill-store[web]"' in result.stderr.splitlines()[-1]
