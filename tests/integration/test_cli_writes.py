"""The commands that create users, teams, members and agents, and copy memories between teams:
each run as a user runs it, on a database of its own, with `--json` or a line for people, and
one line on stderr for a mistake, after which nothing was written."""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from skill_store import UserRepository, get_session_factory
from skill_store.cli import app
from skill_store.settings import get_settings

from ..support import fingerprint, migrated_database
from .test_cli import on_a_terminal

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
async def store(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_database(server_url, "skill_store_cli_writes") as engine:
        yield engine


@pytest.fixture
def url(store: AsyncEngine) -> str:
    return store.url.render_as_string(hide_password=False)


@pytest.fixture
def run(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()

    async def invoke(*args: str, input: str | None = None) -> Result:
        """The command's result, run in a thread: it runs an event loop of its own."""
        return await asyncio.to_thread(
            CliRunner().invoke, app, list(args), input=input, prog_name="skill-store"
        )

    yield invoke
    get_settings.cache_clear()


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def refused(store: AsyncEngine, result: Result, said: str, before: Any) -> None:
    """`result` is one line on stderr saying `said`, exit status 1, and nothing was written."""
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: {said}\n"
    async with get_session_factory(store)() as session:
        assert await fingerprint(session) == before


async def state(store: AsyncEngine) -> Any:
    async with get_session_factory(store)() as session:
        return await fingerprint(session)


async def test_a_user_is_created_with_a_password_from_stdin(run: Any, store: AsyncEngine) -> None:
    created = as_json(
        await run(
            "users",
            "create",
            "ada@example.com",
            "--name",
            "Ada",
            "--password-stdin",
            "--json",
            input=f"{PASSWORD}\n",
        )
    )
    people = await run(
        "users", "create", "bob@example.com", "--name", "Bob", "--password-stdin", input=PASSWORD
    )

    assert list(created)[:3] == ["id", "email", "display_name"]
    assert (created["email"], created["display_name"]) == ("ada@example.com", "Ada")
    assert not {"password", "password_hash"} & set(created)
    assert people.stdout == "created user bob@example.com (Bob)\n"
    async with get_session_factory(store)() as session:
        users = UserRepository(session)
        assert (await users.authenticate("ada@example.com", PASSWORD)).id.hex == created[
            "id"
        ].replace("-", "")  # type: ignore[union-attr]
        assert await users.authenticate("bob@example.com", PASSWORD) is not None


@pytest.mark.parametrize(
    ("args", "stdin", "said"),
    [
        (
            ["grace@example.com", "--name", "Grace"],
            None,
            "no terminal to ask for the password on: pass it on stdin with --password-stdin",
        ),
        (
            ["grace@example.com", "--name", "Grace", "--password-stdin"],
            "short\n",
            "invalid UserCreate: password: Value error, a password must be 8 to 1024"
            " characters long",
        ),
        (
            ["not-an-email", "--name", "Grace", "--password-stdin"],
            PASSWORD,
            "invalid UserCreate: email: value is not a valid email address: An email address"
            " must have an @-sign.",
        ),
        (
            ["ADA@example.com", "--name", "Ada again", "--password-stdin"],
            PASSWORD,
            "a user with email ada@example.com already exists",
        ),
    ],
    ids=["no-terminal", "short-password", "bad-email", "taken-email"],
)
async def test_a_user_that_cannot_be_created_is_one_line(
    run: Any, store: AsyncEngine, args: list[str], stdin: str | None, said: str
) -> None:
    before = await state(store)

    result = await run("users", "create", *args, input=stdin)

    await refused(store, result, said, before)
    assert "short" not in result.stderr.replace("short-", "")  # no password echoed


async def test_the_password_is_asked_twice_on_a_terminal(
    url: str, store: AsyncEngine, tmp_path: Path
) -> None:
    status, shown = on_a_terminal(
        tmp_path,
        ["users", "create", "grace@example.com", "--name", "Grace"],
        [PASSWORD, PASSWORD],
        DATABASE_URL=url,
    )

    assert status == 0, shown
    assert "Password:" in shown and "Repeat for confirmation:" in shown
    assert PASSWORD not in shown  # not echoed
    async with get_session_factory(store)() as session:
        assert await UserRepository(session).authenticate("grace@example.com", PASSWORD)


async def test_teams_and_members(run: Any, store: AsyncEngine) -> None:
    team = as_json(
        await run(
            "teams", "create", "acme", "--name", "Acme", "--owner", "ada@example.com", "--json"
        )
    )
    member = await run("teams", "add-member", "acme", "bob@example.com")
    admin = as_json(
        await run("teams", "add-member", "acme", "grace@example.com", "--role", "admin", "--json")
    )
    before = await state(store)
    again = await run("teams", "add-member", "acme", "bob@example.com", "--role", "viewer")
    nobody = await run("teams", "create", "globex", "--name", "Globex", "--owner", "x@example.com")
    taken = await run("teams", "create", "acme", "--name", "Acme 2", "--owner", "bob@example.com")
    bad_slug = await run(
        "teams", "create", "Acme Two", "--name", "Acme", "--owner", "bob@example.com"
    )

    assert list(team)[:3] == ["id", "name", "slug"] and team["slug"] == "acme"
    assert member.stdout == "added bob@example.com to team acme as member\n"
    assert (admin["role"], admin["team_id"]) == ("admin", team["id"])
    [listed] = as_json(await run("teams", "list", "--json"))
    assert (listed["slug"], listed["members"]) == ("acme", 3)  # the owner is a member too
    await refused(store, again, "bob@example.com is already a member of team acme", before)
    await refused(store, nobody, "user with email x@example.com does not exist", before)
    await refused(store, taken, "a team with slug 'acme' already exists", before)
    assert bad_slug.stderr.startswith("error: invalid TeamCreate: slug: String should match")


DNA = {
    "tagline": "Finds things",
    "personality": {"system_prompt_template": "You are Nova. {memory_context}", "tone": "direct"},
    "custom_skill_names": ["search"],
    "memory": {"token_budget": 1000},
}


async def test_an_agent_from_an_agentdna_file_is_checked_as_the_api_checks_it(
    run: Any, store: AsyncEngine, tmp_path: Path
) -> None:
    def file(name: str, content: Any) -> str:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    nova = as_json(
        await run(
            "agents",
            "create",
            "nova",
            "--team",
            "acme",
            "--name",
            "Nova",
            "--dna",
            file("nova.json", DNA),
            "--json",
        )
    )
    plain = await run("agents", "create", "plain", "--team", "acme", "--name", "Plain")
    before = await state(store)
    failures = {
        "unknown key": await run(
            "agents",
            "create",
            "x1",
            "--team",
            "acme",
            "--name",
            "X",
            "--dna",
            file("typo.json", {**DNA, "custm_skill_names": []}),
        ),
        "bad value": await run(
            "agents",
            "create",
            "x2",
            "--team",
            "acme",
            "--name",
            "X",
            "--dna",
            file("tone.json", {"personality": {"system_prompt_template": "", "tone": "grumpy"}}),
        ),
        "not JSON": await run(
            "agents",
            "create",
            "x3",
            "--team",
            "acme",
            "--name",
            "X",
            "--dna",
            file("broken.json", "{personality"),
        ),
        "not an object": await run(
            "agents",
            "create",
            "x4",
            "--team",
            "acme",
            "--name",
            "X",
            "--dna",
            file("list.json", [DNA]),
        ),
        "another slug": await run(
            "agents",
            "create",
            "x5",
            "--team",
            "acme",
            "--name",
            "X",
            "--dna",
            file("slug.json", {**DNA, "slug": "other"}),
        ),
        "a team": await run(
            "agents",
            "create",
            "x6",
            "--team",
            "acme",
            "--name",
            "X",
            "--dna",
            file("team.json", {**DNA, "team_id": nova["team_id"]}),
        ),
        "taken slug": await run("agents", "create", "nova", "--team", "acme", "--name", "Nova"),
        "no team": await run("agents", "create", "x7", "--team", "nowhere", "--name", "X"),
    }

    assert list(nova)[:2] == ["id", "team_id"]
    assert (nova["personality"]["tone"], nova["memory"]["token_budget"]) == ("direct", 1000)
    assert nova["effective_skills"] == ["search"]
    assert plain.stdout == "created agent plain (Plain) in team acme\n"
    said = {name: result.stderr for name, result in failures.items()}
    assert said["unknown key"] == (
        "error: invalid AgentCreate: custm_skill_names: Extra inputs are not permitted\n"
    )
    assert said["bad value"].startswith("error: invalid AgentCreate: personality.tone: Input")
    assert said["not JSON"].startswith(f"error: {tmp_path / 'broken.json'} is not a JSON file")
    assert said["not an object"].endswith("does not hold a JSON object (an AgentDNA)\n")
    assert said["another slug"] == "error: the file's slug 'other' is not the slug given, 'x5'\n"
    assert said["a team"] == "error: the file gives a team_id: its team is the one --team names\n"
    assert said["taken slug"] == "error: team acme already has an agent with slug 'nova'\n"
    assert said["no team"] == "error: team 'nowhere' does not exist\n"
    for result in failures.values():
        assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert await state(store) == before


async def test_memories_copied_to_another_team_through_the_command_line(
    run: Any, store: AsyncEngine, tmp_path: Path
) -> None:
    lines = [
        {"memory_type": "semantic", "content": "Ada likes tea", "agent_slug": "nova"},
        {"memory_type": "semantic", "content": "Ada likes cake", "agent_slug": "plain"},
        {"memory_type": "semantic", "content": "Team-wide"},
    ]
    source = tmp_path / "source.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert (await run("memories", "import", str(source), "--team", "acme")).exit_code == 0
    exported = tmp_path / "acme.jsonl"
    for args in (
        ["memories", "export", "--team", "acme", "--output", str(exported)],
        ["teams", "create", "lab", "--name", "Lab", "--owner", "bob@example.com"],
        ["agents", "create", "nova", "--team", "lab", "--name", "Nova"],
    ):
        assert (await run(*args)).exit_code == 0
    before = await state(store)

    lacking = await run("memories", "import", str(exported), "--team", "lab")
    [line] = [n for n, text in enumerate(exported.read_text().splitlines(), 1) if '"plain"' in text]
    await refused(
        store,
        lacking,
        f"{exported}: 1 bad line(s), nothing imported: line {line}: agent 'plain' is not an"
        " agent of team lab: create it, or give the slug of one with --agent-map plain=SLUG",
        before,
    )
    mapped = await run(
        "memories", "import", str(exported), "--team", "lab", "--agent-map", "plain=nova"
    )
    again = await run(
        "memories", "import", str(exported), "--team", "lab", "--agent-map", "plain=nova"
    )

    assert mapped.stdout == (
        "imported 3 memories into lab; skipped 0 already there; embedded 0 lines without an"
        " embedding\n"
    )
    assert again.stdout.startswith("imported 0 memories into lab; skipped 3 already there")
    agents = {
        agent["slug"]: agent["id"]
        for agent in as_json(await run("agents", "list", "--team", "lab", "--json"))
    }
    copied = as_json(await run("memories", "list", "--team", "lab", "--json"))
    assert sorted((m["content"], m["agent_id"]) for m in copied) == [
        ("Ada likes cake", agents["nova"]),
        ("Ada likes tea", agents["nova"]),
        ("Team-wide", None),
    ]
