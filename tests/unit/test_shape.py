"""One shape for the public API: how methods take their arguments, how models order and name
their fields. Read from the signatures and the models, so a new method or model is checked too.
"""

import inspect
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

import skill_store
from skill_store import (
    Memory,
    MemoryRead,
    MemorySearchResult,
    MemoryType,
    Repository,
    ScoredMemory,
    StatsRepository,
    TeamRowRepository,
    models,
)

REPOSITORIES = [
    value
    for value in vars(skill_store).values()
    if isinstance(value, type)
    and issubclass(value, Repository | TeamRowRepository | StatsRepository)
]

WRITTEN = {"data", "memory_type", "tier", "status", "role", "tags", "rating", "comment", "at"}
"""Positional after the row: what the call writes on it, or the moment it reads it at."""

PAIRED = {"b", "password"}
"""Positional after the row: the other half of a pair (`relate(a, b)`, an email's password)."""


def public_methods() -> list[tuple[str, inspect.Signature]]:
    return [
        (f"{repository.__name__}.{name}", inspect.signature(method))
        for repository in REPOSITORIES
        for name, method in inspect.getmembers(repository, inspect.iscoroutinefunction)
        if not name.startswith("_")
    ]


METHODS = public_methods()


def test_every_public_method_is_read() -> None:
    names = {name for name, _ in METHODS}
    assert {"MemoryRepository.search_by_embedding", "TeamRepository.add_member"} <= names
    assert len(names) > 60


@pytest.mark.parametrize(("method", "signature"), METHODS, ids=[name for name, _ in METHODS])
def test_the_team_is_a_keyword_and_options_follow_the_row_by_keyword(
    method: str, signature: inspect.Signature
) -> None:
    parameters = list(signature.parameters.values())[1:]  # after self
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    keywords = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}

    assert "team_id" not in positional
    assert set(positional[1:]) <= WRITTEN | PAIRED, positional
    if "team_id" in signature.parameters:
        assert "team_id" in keywords


async def test_a_call_in_an_old_shape_is_a_type_error_naming_the_method() -> None:
    memories = skill_store.MemoryRepository(None)  # type: ignore[arg-type]  (no SQL is sent)

    with pytest.raises(TypeError, match=r"^MemoryRepository.with_tag\(\) too many positional"):
        await memories.with_tag(uuid.uuid4(), "tea")  # type: ignore[arg-type, misc]
    with pytest.raises(TypeError, match=r"^MemoryRepository.get\(\) missing a required"):
        await memories.get(uuid.uuid4())  # type: ignore[call-arg]


def test_context_for_takes_what_retrieve_takes() -> None:
    retrieve = inspect.signature(skill_store.MemoryRepository.retrieve).parameters
    context_for = inspect.signature(skill_store.MemoryRepository.context_for).parameters

    assert list(context_for) == list(retrieve)
    assert context_for["agent_id"].default is inspect.Parameter.empty  # its agent's budget


MODELS = [
    value
    for name in models.__all__
    if isinstance(value := getattr(models, name), type)
    and issubclass(value, BaseModel)
    and "id" in value.model_fields
]


@pytest.mark.parametrize("model", MODELS, ids=[model.__name__ for model in MODELS])
def test_id_is_every_models_first_field(model: type[BaseModel]) -> None:
    assert next(iter(model.model_fields)) == "id"


FAMILIES = [
    (getattr(models, name), getattr(models, f"{name}Read"))
    for name in ("Memory", "MemoryLog", "MemoryTag", "Conversation", "Message", "User", "Team")
] + [(models.TeamMembership, models.TeamMembershipRead), (models.Agent, models.AgentDNA)]


@pytest.mark.parametrize(("table", "read"), FAMILIES, ids=[table.__name__ for table, _ in FAMILIES])
def test_a_table_and_its_read_model_order_their_fields_alike(
    table: type[BaseModel], read: type[BaseModel]
) -> None:
    shared = [name for name in read.model_fields if name in table.model_fields]
    assert [name for name in table.model_fields if name in read.model_fields] == shared


NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def a_memory() -> Memory:
    """A row as the repositories make one: validated, its values given in no order."""
    return Memory.model_validate(
        {
            "last_accessed_at": NOW,
            "metadata": {"source": "chat"},
            "content": "Prefers tea",
            "memory_type": MemoryType.SEMANTIC,
            "team_id": uuid.uuid4(),
            "created_at": NOW,
            "updated_at": NOW,
        }
    )


def test_a_memory_dumps_id_first_and_its_metadata_as_metadata() -> None:
    memory = a_memory()
    hit = MemorySearchResult.model_validate(memory, update={"similarity": 0.5})

    for dumped in (
        memory.model_dump(mode="json"),
        MemoryRead.model_validate(memory).model_dump(),
        hit.model_dump(mode="json"),
    ):
        assert list(dumped)[:6] == [
            "id",
            "team_id",
            "agent_id",
            "user_id",
            "memory_type",
            "content",
        ]
        assert dumped["metadata"] == {"source": "chat"}
        assert "metadata_json" not in dumped
    assert '"metadata":{"source":"chat"}' in hit.model_dump_json()


def test_every_hit_has_a_similarity() -> None:
    assert MemorySearchResult.model_fields["similarity"].annotation is float
    assert ScoredMemory.model_fields["similarity"].annotation == float | None
    assert list(ScoredMemory.model_fields)[-3:] == ["similarity", "score", "signals"]
