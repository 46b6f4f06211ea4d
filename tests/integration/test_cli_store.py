"""The commands that read and change the store, on the demo data."""

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
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
        return CliRunner().invoke(app, list(args), prog_name="skill-store")

    yield invoke
    get_settings.cache_clear()


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def command_paths(command: Any = None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group of the command line, as the words that run it."""
    command = command or typer.main.get_command(app)
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += command_paths(sub, (*path, name))
    return found


COMMANDS = command_paths()


def first_sentence(text: str) -> str:
    words = " ".join(text.split("\n\n")[0].split())
    return words[: words.index(".") + 1] if "." in words else words


@pytest.mark.parametrize(
    "path", COMMANDS, ids=[" ".join(path) or "skill-store" for path in COMMANDS]
)
def test_every_command_has_help_without_types_and_with_whole_sentences(
    run: Any, path: tuple[str, ...]
) -> None:
    result = run(*path, "--help")

    assert result.exit_code == 0, result.output
    usage = result.stdout.splitlines()[0]
    assert usage.startswith(f"Usage: skill-store {' '.join(path)}".rstrip())
    assert not re.search(r"[<>{}]", usage), usage
    assert not re.search(r"<(bool|str|int|path|uuid|UUID)", result.stdout), result.stdout
    words = " ".join(result.stdout.split())
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    assert " ".join((command.help or "").split("\n\n")[0].split()) in words  # one paragraph
    for name, sub in getattr(command, "commands", {}).items():
        assert f"{name} {first_sentence(sub.help or '')}" in words  # whole, not cut with "..."


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
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Invalid value for '--min-rows'")
    assert "greater than or equal to 0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


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


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["memories", "list"], "Missing option '--team'; see `skill-store memories list --help`"),
        (["memories", "list", "--team", "demo", "--bogus"], "No such option: --bogus"),
        (["memories", "list", "--team", "demo", "--limit", "many"], "Invalid value for '--limit'"),
        (["memories", "show", "--team", "demo"], "Missing argument 'ID'"),
        (["memories", "lst"], "No such command 'lst'"),
        (["teams", "add-member", "demo", "a@b.co", "--role", "boss"], "'boss' is not one of"),
    ],
    ids=[
        "missing-option",
        "unknown-option",
        "bad-value",
        "missing-argument",
        "unknown-command",
        "bad-role",
    ],
)
def test_a_usage_error_is_one_line_and_exit_status_1(run: Any, args: list[str], said: str) -> None:
    result = run(*args)

    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert said in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


OTHER_OWNER = "ada@demo.example.com"


@pytest.fixture(scope="module")
def quiet(demo_url: str) -> str:
    """A team of the demo's owner with two memories whose ids share their first 12 digits."""
    made = skill_store(
        Path.cwd(),
        "teams",
        "create",
        "quiet",
        "--name",
        "Quiet",
        "--owner",
        OTHER_OWNER,
        DATABASE_URL=demo_url,
    )
    assert made.returncode == 0, made.stderr
    return "quiet"


TWINS = ["ab12cd34-ef56-4000-8000-000000000001", "ab12cd34-ef56-4000-8000-000000000002"]


def test_the_ids_tables_show_are_taken_by_show_and_history(
    run: Any, quiet: str, tmp_path: Path
) -> None:
    path = tmp_path / "twins.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": twin, "memory_type": "semantic", "content": f"Twin {n}"}) + "\n"
            for n, twin in enumerate(TWINS)
        )
    )
    assert run("memories", "import", str(path), "--team", quiet).exit_code == 0
    demo_ids = [
        memory["id"] for memory in as_json(run("memories", "list", "--team", "demo", "--json"))
    ]

    listed = run("memories", "list", "--team", quiet).stdout
    shown = [line.split()[0] for line in listed.splitlines() if line.startswith(" ab12")]
    short = run("memories", "list", "--team", "demo", "--limit", "3").stdout

    assert sorted(shown) == TWINS  # as many digits as tell them apart: here, all
    assert f" {demo_ids[0][:8]} " in short  # 8 digits where no other memory shares them
    for full in [*TWINS, demo_ids[0][:8]]:
        team = "demo" if full == demo_ids[0][:8] else quiet
        shows = run("memories", "show", "--team", team, full, "--json")
        assert as_json(shows)["id"].startswith(full)
        assert run("memories", "history", "--team", team, full).exit_code == 0
    for prefix, said in [
        ("ab12cd34", "ab12cd34 starts the ids of several memories of team quiet: give more"),
        ("ffff0000", "memory ffff0000 in team 'quiet' does not exist"),
        ("ab1", "'ab1' is not a memory id, nor its first 4 or more hexadecimal digits"),
        ("kyra", "'kyra' is not a memory id, nor its first 4 or more hexadecimal digits"),
    ]:
        refused = run("memories", "show", "--team", quiet, prefix)
        assert refused.exit_code == 1
        assert refused.stderr == f"error: {said}\n"


def table_rows(output: str) -> list[str]:
    """The lines of a table's rows: after its header's rule, up to the blank line after."""
    lines = output.splitlines()
    start = next(n for n, line in enumerate(lines) if set(line.strip()) == {"─"}) + 1
    return [line for line in lines[start:] if line.strip()]


def test_tables_fit_80_columns_a_memory_a_line_whole_ids_first(demo_url: str) -> None:
    memories = json.loads(
        skill_store(
            Path.cwd(),
            "memories",
            "list",
            "--team",
            "demo",
            "--limit",
            "100",
            "--json",
            DATABASE_URL=demo_url,
        ).stdout
    )
    listed = skill_store(
        Path.cwd(),
        "memories",
        "list",
        "--team",
        "demo",
        "--limit",
        "100",
        DATABASE_URL=demo_url,
        COLUMNS="80",
    )
    searched = skill_store(
        Path.cwd(),
        "memories",
        "search",
        "--team",
        "demo",
        "what does Ada like to drink",
        DATABASE_URL=demo_url,
        COLUMNS="80",
    )

    assert listed.returncode == 0 and searched.returncode == 0, listed.stderr + searched.stderr
    for output in (listed.stdout, searched.stdout):
        assert max(len(line.rstrip()) for line in output.splitlines()) <= 80, output
    rows = table_rows(listed.stdout)
    assert len(rows) == len(memories)  # one line each: nothing wrapped
    assert [row.split()[0] for row in rows] == [memory["id"][:8] for memory in memories]
    assert any(row.rstrip().endswith("…") for row in rows)  # long contents cut, not wrapped
    hits = table_rows(searched.stdout)
    assert len(hits) == 2 * 10  # each hit: its content, then its signals
    assert all(re.fullmatch(r"\d+ +\d\.\d{3} +[0-9a-f]{8} .*", hit.strip()) for hit in hits[::2])
    assert all(
        re.fullmatch(r"(pinned; )?sem \S+ rec \S+ imp \S+ cont \S+ rel \S+", hit.strip())
        for hit in hits[1::2]
    )


def test_an_empty_result_is_a_line(run: Any, quiet: str) -> None:
    empty = run("teams", "create", "empty", "--name", "Empty", "--owner", OTHER_OWNER)
    assert empty.exit_code == 0, empty.output

    for args, said in [
        (["memories", "list", "--team", "empty"], "team empty has no memories"),
        (
            ["memories", "list", "--team", "empty", "--type", "procedural"],
            "team empty has no procedural memories",
        ),
        (["memories", "search", "--team", "empty", "tea"], "no memory of team empty matches 'tea'"),
        (["agents", "list", "--team", "empty"], "team empty has no agents"),
    ]:
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == said


def test_show_is_for_people_unless_json(run: Any) -> None:
    [memory] = as_json(run("memories", "list", "--team", "demo", "--limit", "1", "--json"))

    shown = run("memories", "show", "--team", "demo", memory["id"]).stdout
    agent = run("agents", "show", "--team", "demo", "kyra").stdout

    with pytest.raises(json.JSONDecodeError):
        json.loads(shown)
    lines = {line.split()[0]: line.split(maxsplit=1)[1:] for line in shown.splitlines()}
    lines = {name: [value.strip() for value in values] for name, values in lines.items()}
    assert lines["id"] == [memory["id"]]
    assert lines["content"] == [memory["content"]]
    assert "embedding" not in lines and "metadata_json" not in lines
    assert list(as_json(run("memories", "show", "--team", "demo", memory["id"], "--json")))[:2] == [
        "id",
        "team_id",
    ]
    assert re.search(r"^personality\.tone +friendly *$", agent, re.MULTILINE), agent
    with pytest.raises(json.JSONDecodeError):
        json.loads(agent)


def test_the_offline_warning_comes_once_and_only_with_something_embedded(
    demo_url: str, quiet: str, tmp_path: Path
) -> None:
    def stderr(*args: str) -> list[str]:
        result = skill_store(Path.cwd(), *args, DATABASE_URL=demo_url, EMBEDDING_API_KEY="")
        return [line for line in result.stderr.splitlines() if line.startswith("warning:")]

    exported = tmp_path / "demo.jsonl"
    assert (
        skill_store(
            Path.cwd(),
            "memories",
            "export",
            "--team",
            "demo",
            "--output",
            str(exported),
            DATABASE_URL=demo_url,
        ).returncode
        == 0
    )
    unembedded = memory_lines(tmp_path / "one.jsonl", "Offline one", "Offline two")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"memory_type": "semantic"}\n')
    warning = "warning: EMBEDDING_API_KEY is not set: texts are embedded with the offline"

    assert stderr("memories", "list", "--team", "demo") == []
    assert stderr("memories", "import", str(exported), "--team", "demo") == []  # vectors given
    assert stderr("memories", "import", str(bad), "--team", quiet) == []  # refused
    assert stderr("memories", "show", "--team", "demo", "nothing") == []  # an error
    [embedded] = stderr("memories", "import", str(unembedded), "--team", quiet)
    [searched] = stderr("memories", "search", "--team", "demo", "tea")
    assert embedded.startswith(warning) and searched.startswith(warning)
