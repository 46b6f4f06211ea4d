"""The commands that read and change the store, on the demo data."""

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from skill_store import cli
from skill_store.cli import app
from skill_store.demo import SUCCESSOR
from skill_store.settings import get_settings

from ..support import create_database
from .test_cli import skill_store


@pytest.fixture(scope="module")
async def demo_url(server_url: str) -> str:
    """A database with the demo, built by running `skill-store demo` as a user would."""
    url = await create_database(server_url, "skill_store_demo")
    first = skill_store(Path.cwd(), "demo", DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert "Kyra" in first.stdout and "Atlas" in first.stdout
    assert "superseded" in first.stdout
    again = skill_store(Path.cwd(), "demo", DATABASE_URL=url)
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout and "--reset" in again.stdout
    return url


@pytest.fixture
def run(demo_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("DATABASE_URL", demo_url)
    get_settings.cache_clear()

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, list(args))

    yield invoke
    get_settings.cache_clear()


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_command_has_help(run: Any) -> None:
    commands = [
        ["demo"],
        ["stats"],
        ["teams", "list"],
        ["agents", "list"],
        ["agents", "show"],
        ["memories", "list"],
        ["memories", "show"],
        ["memories", "history"],
        ["memories", "search"],
        ["memories", "import"],
        ["memories", "export"],
        ["db", "upgrade"],
        ["db", "index"],
    ]
    for command in commands:
        result = run(*command, "--help")
        assert result.exit_code == 0, command
        assert "Usage" in result.stdout


def test_demo_reset_rebuilds_without_duplicates(run: Any) -> None:
    result = run("demo", "--reset")
    assert result.exit_code == 0, result.output
    teams = as_json(run("teams", "list", "--json"))
    assert [team["slug"] for team in teams] == ["demo"]
    assert teams[0]["agents"] == 2
    assert teams[0]["memories"] == 31


def test_stats(run: Any) -> None:
    stats = as_json(run("stats", "--json"))
    assert stats["rows"]["agent"] == 2
    assert stats["rows"]["memory"] == 31
    assert stats["rows"]["message"] == 6
    by_status = {group["status"]: group["count"] for group in stats["memories"]}
    assert by_status.get("superseded") == 1
    assert stats["index_bytes"]["idx_memory_team_type"] > 0
    assert "Rows" in run("stats").stdout


def test_agents(run: Any) -> None:
    agents = as_json(run("agents", "list", "--team", "demo", "--json"))
    assert [agent["slug"] for agent in agents] == ["atlas", "kyra"]
    dna = as_json(run("agents", "show", "--team", "demo", "kyra", "--json"))
    assert dna["personality"]["tone"] == "friendly"
    assert dna["effective_skills"] == ["web-search", "calendar", "small-talk", "reminders"]
    atlas = as_json(run("agents", "show", "--team", "demo", "atlas", "--json"))
    assert "small-talk" not in atlas["effective_skills"]
    assert "kyra" in run("agents", "list", "--team", "demo").stdout


def test_memories_list_show_history(run: Any) -> None:
    memories = as_json(run("memories", "list", "--team", "demo", "--type", "procedural", "--json"))
    assert len(memories) == 4
    assert {memory["memory_type"] for memory in memories} == {"procedural"}
    assert "embedding" not in memories[0]
    superseded = next(
        memory
        for memory in as_json(run("memories", "list", "--team", "demo", "--limit", "100", "--json"))
        if memory["status"] == "superseded"
    )
    shown = as_json(run("memories", "show", "--team", "demo", superseded["id"], "--json"))
    assert shown["tags"] == ["drinks"]
    history = as_json(run("memories", "history", "--team", "demo", superseded["id"], "--json"))
    assert [(log["action"], log["changed_by"]) for log in history] == [
        ("created", "demo"),
        ("superseded", "kyra"),
    ]


def test_memories_search(run: Any) -> None:
    hits = as_json(run("memories", "search", "--team", "demo", "climbing gym", "--json"))
    assert "climbing gym" in hits[0]["content"]
    assert hits == sorted(hits, key=lambda hit: (not hit["is_pinned"], -hit["score"]))
    assert set(hits[0]["signals"]) == {
        "semantic",
        "recency",
        "importance",
        "continuity",
        "relationship",
    }
    private = as_json(
        run("memories", "search", "--team", "demo", "light humour", "--agent", "kyra", "--json")
    )
    assert "Ada responds well to light humour" in [hit["content"] for hit in private]
    without_agent = as_json(run("memories", "search", "--team", "demo", "light humour", "--json"))
    assert "Ada responds well to light humour" not in [hit["content"] for hit in without_agent]


def test_export_then_import_round_trips(run: Any, tmp_path: Path) -> None:
    exported = tmp_path / "memories.jsonl"
    result = run("memories", "export", "--team", "demo", "--output", str(exported))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(lines) == 30
    assert all("team_id" not in line and len(line["embedding"]) > 0 for line in lines)
    by_content = {line["content"]: line for line in lines}
    assert by_content[SUCCESSOR]["tags"] == ["drinks"]
    assert by_content["Ada lives in Lisbon"]["tags"] == ["home"]

    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text(
        json.dumps(
            {
                "memory_type": "semantic",
                "content": "Imported memory",
                "tags": ["new"],
                "metadata": {"source": "file"},
            }
        )
        + "\n"
    )
    result = run("memories", "import", str(fresh), "--team", "demo")
    assert result.exit_code == 0, result.output
    assert "imported 1 memories" in result.stdout
    hits = as_json(run("memories", "search", "--team", "demo", "Imported memory", "--json"))
    assert hits[0]["content"] == "Imported memory"
    assert hits[0]["metadata"] == {"source": "file"}
    again = tmp_path / "again.jsonl"
    assert run("memories", "export", "--team", "demo", "--output", str(again)).exit_code == 0
    [line] = [
        line
        for line in map(json.loads, again.read_text().splitlines())
        if "tags" in line and line["tags"] == ["new"]
    ]
    assert line["metadata"] == {"source": "file"}


def test_import_reports_bad_lines_and_writes_nothing(run: Any, tmp_path: Path) -> None:
    before = as_json(run("stats", "--json"))["rows"]["memory"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"memory_type": "semantic", "content": "fine"}\n'
        '{"memory_type": "nonsense", "content": "bad type"}\n'
        "not json\n"
        '{"memory_type": "semantic", "content": "fine too", "importance": 11}\n'
        '{"memory_type": "semantic", "content": "typo", "importanse": 9, "tag": ["x"]}\n'
    )
    result = run("memories", "import", str(bad), "--team", "demo")
    assert result.exit_code == 1
    assert "line 2: memory_type" in result.stderr
    assert "line 3: not JSON" in result.stderr
    assert "line 4: importance" in result.stderr
    assert "line 5: importanse: Extra inputs are not permitted" in result.stderr
    assert "tag: Extra inputs are not permitted" in result.stderr
    assert "line 1:" not in result.stderr
    assert as_json(run("stats", "--json"))["rows"]["memory"] == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agents", "list", "--team", "nope"], "team 'nope' does not exist"),
        (["agents", "show", "--team", "demo", "nobody"], "agent 'nobody' in team 'demo'"),
        (["memories", "show", "--team", "demo", "00000000-0000-0000-0000-000000000000"], "memory"),
    ],
)
def test_user_errors_are_one_line(run: Any, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_commands_on_an_unmigrated_database_say_what_to_run(empty_database_url: str) -> None:
    result = skill_store(Path.cwd(), "teams", "list", DATABASE_URL=empty_database_url)
    assert result.returncode == 1
    assert "run `skill-store db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_index_builds_each_large_team_index_once(run: Any) -> None:
    result = run("db", "index", "--min-rows", "20")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("built 1 team indexes, dropped 0")
    again = run("db", "index", "--min-rows", "20")
    assert again.stdout.strip().endswith("built 0 team indexes, dropped 0")
    stats = as_json(run("stats", "--json"))
    assert [name for name in stats["index_bytes"] if name.startswith("memory_team_")]


def test_db_index_refuses_a_negative_bound(run: Any) -> None:
    result = run("db", "index", "--min-rows", "-1")
    assert result.exit_code == 2
    assert "--min-rows" in result.output
    assert "greater than or equal to 0" in result.output


def test_importing_an_export_again_adds_nothing(run: Any, tmp_path: Path) -> None:
    exported = tmp_path / "memories.jsonl"
    assert run("memories", "export", "--team", "demo", "--output", str(exported)).exit_code == 0
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert all("id" in line for line in lines)
    before = as_json(run("stats", "--json"))["rows"]

    result = run("memories", "import", str(exported), "--team", "demo")
    assert result.exit_code == 0, result.output
    assert f"imported 0 memories into demo; skipped {len(lines)} already there" in result.stdout
    assert as_json(run("stats", "--json"))["rows"] == before

    changed = tmp_path / "changed.jsonl"
    changed.write_text(json.dumps({**lines[0], "importance": 2}) + "\n")
    result = run("memories", "import", str(changed), "--team", "demo", "--update-existing")
    assert result.exit_code == 0, result.output
    assert "imported 0 memories into demo; updated 1 already there" in result.stdout
    shown = as_json(run("memories", "show", "--team", "demo", lines[0]["id"], "--json"))
    assert shown["importance"] == 2

    twice = tmp_path / "twice.jsonl"
    twice.write_text(json.dumps(lines[1]) + "\n" + json.dumps(lines[1]) + "\n")
    result = run("memories", "import", str(twice), "--team", "demo")
    assert result.exit_code == 1
    assert f"line 2: id {lines[1]['id']} is also on line 1" in result.stderr


def memory_lines(path: Path, *contents: str) -> Path:
    path.write_text(
        "".join(json.dumps({"memory_type": "semantic", "content": c}) + "\n" for c in contents)
    )
    return path


def test_import_reports_progress_with_its_total_a_line_a_batch(run: Any, tmp_path: Path) -> None:
    path = memory_lines(tmp_path / "three.jsonl", "Progress one", "Progress two", "Progress three")

    result = run("memories", "import", str(path), "--team", "demo", "--batch-size", "2")

    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "importing 0 / 3 memories",
        "importing 2 / 3 memories",
        "importing 3 / 3 memories",
    ]


def test_import_on_a_terminal_draws_a_bar_with_the_total(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(cli, "err_console", Console(file=terminal, force_terminal=True))
    path = memory_lines(tmp_path / "two.jsonl", "Bar one", "Bar two")

    result = run("memories", "import", str(path), "--team", "demo")

    assert result.exit_code == 0, result.output
    assert "importing" in terminal.getvalue() and "2/2" in terminal.getvalue()
    assert "━" in terminal.getvalue()  # the bar
    assert result.stderr == ""


def test_import_help_says_how_a_large_file_meets_the_teams_index(run: Any) -> None:
    result = run("memories", "import", "--help")

    assert result.exit_code == 0
    words = " ".join(result.stdout.split())
    assert "loaded beside the team's vector index, which is then rebuilt" in words
