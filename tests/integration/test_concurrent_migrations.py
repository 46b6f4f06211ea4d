"""Two processes migrating one fresh database at once: both succeed, the schema is made once."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import text

from skill_store.database import alembic_config, get_engine

from ..support import create_database, drop_database

MIGRATOR = """
import asyncio, sys, time
from pathlib import Path

from skill_store.cli import app
from skill_store.database import migrate

how, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.005)
if how == "migrate":
    asyncio.run(migrate())
else:
    app(["db", "upgrade"])
"""
ROUNDS = 2


def start(how: str, url: str, folder: Path) -> subprocess.Popen[str]:
    environment = os.environ | {"DATABASE_URL": url}
    return subprocess.Popen(
        [sys.executable, "-c", MIGRATOR, how, str(folder / how), str(folder / "go")],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_two_processes_migrate_a_fresh_database_at_once(
    server_url: str, tmp_path: Path
) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    for round in range(ROUNDS):
        name = f"skill_store_race_{uuid.uuid4().hex[:8]}"
        url = await create_database(server_url, name)
        folder = tmp_path / str(round)
        folder.mkdir()
        migrators = [start(how, url, folder) for how in ("migrate", "upgrade")]
        try:
            while not all((folder / how).exists() for how in ("migrate", "upgrade")):
                time.sleep(0.01)
            (folder / "go").touch()
            results = [migrator.communicate(timeout=120) for migrator in migrators]
            for migrator, (_, stderr) in zip(migrators, results, strict=True):
                assert migrator.returncode == 0, stderr
            engine = await get_engine(url)
            async with engine.connect() as connection:
                version = await connection.execute(text("SELECT version_num FROM alembic_version"))
                assert version.scalars().all() == [head]
            await engine.dispose()
        finally:
            for migrator in migrators:
                migrator.kill()
            await drop_database(server_url, name)
