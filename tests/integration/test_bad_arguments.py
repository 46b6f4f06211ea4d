"""Arguments the database cannot take, given to the repositories' methods: a
`pydantic.ValidationError` naming the parameter, raised before any SQL, and the caller's
transaction still usable.

The methods and their id parameters are read from the repositories' signatures, so a new
method is swept too.
"""

import inspect
import uuid
from collections.abc import Awaitable, Callable
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

import skill_store
from skill_store import (
    Agent,
    MemoryRepository,
    MemoryType,
    Repository,
    StatsRepository,
    Team,
    TeamRowRepository,
)

from .test_repositories import sql_sent

REPOSITORIES = [
    value
    for value in vars(skill_store).values()
    if isinstance(value, type)
    and issubclass(value, Repository | TeamRowRepository | StatsRepository)
    and value not in (Repository, TeamRowRepository)
]


def takes_ids(annotation: Any) -> bool:
    return annotation is uuid.UUID or any(takes_ids(argument) for argument in get_args(annotation))


def id_parameters() -> list[tuple[type, str, str]]:
    """(repository, method, parameter) for each parameter typed as ids of a public method."""
    found = []
    for repository in REPOSITORIES:
        for name, method in inspect.getmembers(repository, inspect.iscoroutinefunction):
            hints = get_type_hints(method)
            found.extend(
                (repository, name, parameter)
                for parameter in inspect.signature(method).parameters
                if parameter in hints and takes_ids(hints[parameter]) and not name.startswith("_")
            )
    return found


ID_PARAMETERS = id_parameters()


def test_the_sweep_finds_the_methods_that_take_ids() -> None:
    swept = {(repository.__name__, method, name) for repository, method, name in ID_PARAMETERS}

    assert ("MemoryRepository", "recall", "team_id") in swept
    assert ("MemoryRepository", "retrieve", "agent_id") in swept
    assert ("MemoryRepository", "update_access", "memory_ids") in swept
    assert ("TeamRepository", "get_by_id", "id") in swept
    assert len(swept) > 80


def value_of(annotation: Any, value: Any) -> Any:
    """`value`, or a list of it where the parameter takes many ids."""
    one = annotation is uuid.UUID or (
        get_origin(annotation) is UnionType and uuid.UUID in get_args(annotation)
    )
    return value if one else [value]


def arguments(method: Callable[..., Any], bad: str) -> dict[str, Any]:
    """Keyword arguments of `method`: a slug for its parameter `bad`, valid values for the
    others it requires (random ids, a word, else None), as the arguments are checked first."""
    hints = get_type_hints(method)
    keywords = {bad: value_of(hints[bad], "kyra")}
    for name, parameter in list(inspect.signature(method).parameters.items())[1:]:
        if name == bad or parameter.default is not parameter.empty:
            continue
        if parameter.kind is parameter.VAR_KEYWORD:
            continue
        hint = hints[name]
        value = value_of(hint, uuid.uuid4()) if takes_ids(hint) else None
        keywords[name] = "tea" if str in (hint, *get_args(hint)) else value
    return keywords


async def assert_refused_before_sql(
    session: AsyncSession, call: Callable[[], Awaitable[Any]], parameter: str
) -> None:
    with sql_sent(session) as statements, pytest.raises(ValidationError) as caught:
        await call()
    assert statements == []
    assert {str(error["loc"][0]) for error in caught.value.errors()} == {parameter}
    assert "SELECT" not in str(caught.value)
    assert len(await MemoryRepository(session).list(team_id=uuid.uuid4())) == 0  # usable


@pytest.mark.parametrize(
    ("repository", "method", "parameter"),
    ID_PARAMETERS,
    ids=[f"{repository.__name__}.{method}.{name}" for repository, method, name in ID_PARAMETERS],
)
async def test_a_slug_where_an_id_belongs_names_the_parameter(
    session: AsyncSession, repository: type, method: str, parameter: str
) -> None:
    bound = getattr(repository(session), method)
    keywords = arguments(getattr(repository, method), parameter)

    await assert_refused_before_sql(session, lambda: bound(**keywords), parameter)


BAD_QUERIES = ["tea\x00", "tea \ud800", "   ", ""]


@pytest.mark.parametrize("query", BAD_QUERIES, ids=["nul", "lone-surrogate", "blank", "empty"])
@pytest.mark.parametrize("method", ["retrieve", "recall", "context_for"])
async def test_a_query_postgresql_cannot_take_names_the_parameter(
    session: AsyncSession, team: Team, agent: Agent, method: str, query: str
) -> None:
    memories = MemoryRepository(session)
    await memories.remember("Ada likes tea", MemoryType.SEMANTIC, team_id=team.id)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "retrieve": lambda: memories.retrieve(query, team_id=team.id),
        "recall": lambda: memories.recall(query, team_id=team.id),
        "context_for": lambda: memories.context_for(
            query, team_id=agent.team_id, agent_id=agent.id
        ),
    }

    await assert_refused_before_sql(session, calls[method], "query")
    assert [hit.content for hit in await memories.retrieve("tea", team_id=team.id)] == [
        "Ada likes tea"
    ]


@pytest.mark.parametrize("slug", ["ky\x00ra", "ky\udcffra"], ids=["nul", "lone-surrogate"])
async def test_a_slug_or_email_postgresql_cannot_take_names_the_parameter(
    session: AsyncSession, team: Team, slug: str
) -> None:
    await assert_refused_before_sql(
        session, lambda: skill_store.TeamRepository(session).get_by_slug(slug), "slug"
    )
    await assert_refused_before_sql(
        session,
        lambda: skill_store.AgentRepository(session).get_by_slug(slug, team_id=team.id),
        "slug",
    )
    await assert_refused_before_sql(
        session, lambda: skill_store.UserRepository(session).get_by_email(slug), "email"
    )


async def test_an_id_given_as_a_string_is_taken(session: AsyncSession, team: Team) -> None:
    memories = MemoryRepository(session)
    memory = await memories.remember("Ada likes tea", MemoryType.SEMANTIC, team_id=team.id)

    found = await memories.get(str(memory.id), team_id=str(team.id))  # type: ignore[arg-type]

    assert found.id == memory.id
