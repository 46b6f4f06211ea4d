"""The tests' own embedded servers: in folders no other process changes, and a dead one is
noticed, with the last lines of its log, instead of failing every later test."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ..support import embedded_server, why_stopped

ROOT = Path(__file__).parents[2]

DEAD_SERVER = """
import os
import re
import signal
import time

import psutil


def test_the_server_dies(session_server):
    pid = int((session_server.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)


def test_next(server_url):
    pass


def test_after_next(server_url):
    pass
"""


def kill(data_dir: Path) -> None:
    """SIGKILL the server's postmaster, and wait until it has exited."""
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)


def test_a_server_of_the_tests_lives_in_a_folder_of_its_own(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with embedded_server("skill_store_own_") as (url, data_dir):
        folder = data_dir.parent
        assert tmp_path_factory.getbasetemp() not in data_dir.parents
        assert folder.stat().st_mode & 0o005 == 0o005  # the server's system user may enter
        assert why_stopped(data_dir) is None
        assert str(data_dir) in url
    assert not folder.exists()


def test_a_dead_server_says_why_with_the_end_of_its_log() -> None:
    with embedded_server("skill_store_dead_") as (_url, data_dir):
        last_line = (data_dir / "log").read_text().splitlines()[-1]
        kill(data_dir)

        why = why_stopped(data_dir)

    assert why is not None
    assert why.startswith(f"the embedded test server in {data_dir} is not running")
    assert last_line in why


def test_a_session_whose_server_dies_ends_saying_why(tmp_path: Path) -> None:
    """One test kills the session's server: the next one ends the session, with the reason."""
    (tmp_path / "test_dead_server.py").write_text(DEAD_SERVER)
    environment = {name: value for name, value in os.environ.items() if name != "TEST_DATABASE_URL"}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.integration.conftest"),
            *("-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "-p", "no:cacheprovider"),
            str(tmp_path / "test_dead_server.py"),
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 3, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "is not running; its log ends:" in output
    assert "database system is ready to accept connections" in output  # from its log
    assert re.search(r"=+ 1 passed in [\d.]+s =+", output), output  # nothing failed after
