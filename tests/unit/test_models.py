"""Validation rules, hidden secrets, enums and table layout of the models (no database)."""

import json
import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from skill_store import (
    AgentBoundaries,
    AgentCreate,
    AgentModelConfig,
    AgentPersonality,
    AgentStatus,
    AgentUpdate,
    Conversation,
    ConversationCreate,
    ConversationStatus,
    ConversationUpdate,
    Memory,
    MemoryCreate,
    MemorySource,
    MemoryStatus,
    MemoryTagCreate,
    MemoryTier,
    MemoryType,
    MemoryUpdate,
    MessageCreate,
    MessageRole,
    MessageUpdate,
    Team,
    TeamCreate,
    TeamMembershipCreate,
    TeamRead,
    TeamUpdate,
    User,
    UserCreate,
    UserRead,
    UserRole,
    UserUpdate,
    get_settings,
)
from skill_store.models import metadata
from skill_store.models.enums import pg_enum
from tests.unit.helpers import MINIMAL, USER_ID, assert_rejected, build

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
BAD_TEXT = [pytest.param("a\x00b", id="nul"), pytest.param("a\ud800b", id="lone-surrogate")]
GOOD_TEXT = "Café ☕ 𝄞 ünïcode"


# --- Memory scores --------------------------------------------------------------------------

SCORE_BOUNDS = [("importance", 1), ("importance", 10), ("confidence", 0.0), ("confidence", 1.0)]
SCORE_OUTSIDE = [("importance", 0), ("importance", 11), ("confidence", -0.01), ("confidence", 1.01)]


@pytest.mark.parametrize("model", [MemoryCreate, MemoryUpdate])
@pytest.mark.parametrize(("field", "value"), SCORE_BOUNDS)
def test_memory_score_bounds_accepted(model: type[BaseModel], field: str, value: float) -> None:
    assert getattr(build(model, **{field: value}), field) == value


@pytest.mark.parametrize("model", [MemoryCreate, MemoryUpdate])
@pytest.mark.parametrize(("field", "value"), SCORE_OUTSIDE)
def test_memory_score_just_outside_rejected(
    model: type[BaseModel], field: str, value: float
) -> None:
    assert_rejected(model, (field,), **{field: value})


def test_memory_create_defaults() -> None:
    memory = build(MemoryCreate)
    assert (memory.importance, memory.confidence, memory.is_pinned) == (5, 1.0, False)
    assert (memory.tier, memory.source_type) == (MemoryTier.WARM, MemorySource.EXTRACTION)
    assert (memory.embedding, memory.metadata_json, memory.tags) == (None, {}, [])


def test_memory_expires_at_must_be_timezone_aware() -> None:
    assert build(MemoryCreate, expires_at=NOW).expires_at == NOW
    assert_rejected(MemoryCreate, ("expires_at",), expires_at=NOW.replace(tzinfo=None))


# --- Email, password, slug ------------------------------------------------------------------


@pytest.mark.parametrize("model", [UserCreate, UserUpdate])
def test_valid_email_accepted(model: type[BaseModel]) -> None:
    assert build(model, email="grace.hopper@navy.example.org").email == (
        "grace.hopper@navy.example.org"
    )


@pytest.mark.parametrize("model", [UserCreate, UserUpdate])
@pytest.mark.parametrize(
    "email", ["ada", "ada@", "@example.com", "ada@@example.com", "ada example@example.com", ""]
)
def test_malformed_email_rejected(model: type[BaseModel], email: str) -> None:
    assert_rejected(model, ("email",), email=email)


@pytest.mark.parametrize("model", [UserCreate, UserUpdate])
def test_password_is_secret_and_at_least_8_characters(model: type[BaseModel]) -> None:
    user = build(model, password="8 chars!")
    assert isinstance(user.password, SecretStr)
    assert user.password.get_secret_value() == "8 chars!"
    assert "8 chars!" not in repr(user)
    assert "8 chars!" not in str(user)
    assert_rejected(model, ("password",), password="7 chars")


@pytest.mark.parametrize("model", [UserCreate, UserUpdate])
@pytest.mark.parametrize("length", [7, 1025])
def test_a_password_of_the_wrong_length_is_refused_in_words(
    model: type[BaseModel], length: int
) -> None:
    build(model, password="x" * 1024)
    with pytest.raises(ValidationError) as info:
        build(model, password="x" * length)
    assert [error["msg"] for error in info.value.errors()] == [
        "Value error, a password must be 8 to 1024 characters long"
    ]


SLUG_FIELDS = [
    (TeamCreate, "slug"),
    (TeamUpdate, "slug"),
    (AgentCreate, "slug"),
    (AgentUpdate, "slug"),
    (AgentBoundaries, "escalates_to"),
]


@pytest.mark.parametrize(("model", "field"), SLUG_FIELDS)
@pytest.mark.parametrize("slug", ["ab", "a1", "99", "acme-corp", "a--b", "x" * 100])
def test_valid_slug_accepted(model: type[BaseModel], field: str, slug: str) -> None:
    assert getattr(build(model, **{field: slug}), field) == slug


@pytest.mark.parametrize(("model", "field"), SLUG_FIELDS)
@pytest.mark.parametrize(
    "slug",
    ["", "a", "-acme", "acme-", "Acme", "acme_corp", "acme corp", "acme.io", "é-acme", "x" * 101],
)
def test_malformed_slug_rejected(model: type[BaseModel], field: str, slug: str) -> None:
    assert_rejected(model, (field,), **{field: slug})


# --- Embeddings -----------------------------------------------------------------------------


@pytest.fixture
def three_dimensions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Configure EMBEDDING_DIMENSIONS=3 for one test; later tests see the usual settings."""
    get_settings.cache_clear()
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "3")
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("model", [MemoryCreate, MemoryUpdate])
def test_embedding_of_configured_length_or_none_accepted(model: type[BaseModel]) -> None:
    vector = [0.5] * get_settings().embedding_dimensions
    assert build(model, embedding=vector).embedding == vector
    assert build(model, embedding=None).embedding is None


@pytest.mark.parametrize("model", [MemoryCreate, MemoryUpdate])
@pytest.mark.parametrize("change", [-1, +1], ids=["one-short", "one-long"])
def test_embedding_of_wrong_length_rejected(model: type[BaseModel], change: int) -> None:
    vector = [0.5] * (get_settings().embedding_dimensions + change)
    assert_rejected(model, ("embedding",), embedding=vector)


@pytest.mark.parametrize("model", [MemoryCreate, MemoryUpdate])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_embedding_with_non_finite_number_rejected(model: type[BaseModel], bad: float) -> None:
    vector = [0.5] * get_settings().embedding_dimensions
    vector[7] = bad
    assert_rejected(model, ("embedding", 7), embedding=vector)


@pytest.mark.usefixtures("three_dimensions")
def test_embedding_length_follows_settings() -> None:
    assert build(MemoryCreate, embedding=[0.1, 0.2, 0.3]).embedding == [0.1, 0.2, 0.3]
    assert_rejected(MemoryCreate, ("embedding",), embedding=[0.5] * 1536)


# --- Text and JSON that PostgreSQL cannot store ---------------------------------------------

# (model, the fields holding `text`, where the error is reported)
TEXT_CASES = [
    pytest.param(MemoryCreate, lambda s: {"content": s}, ("content",), id="memory-content"),
    pytest.param(MemoryUpdate, lambda s: {"content": s}, ("content",), id="memory-update-content"),
    pytest.param(MessageCreate, lambda s: {"content": s}, ("content",), id="message-content"),
    pytest.param(AgentCreate, lambda s: {"name": s}, ("name",), id="agent-name"),
    pytest.param(UserCreate, lambda s: {"display_name": s}, ("display_name",), id="user-name"),
    pytest.param(
        AgentCreate,
        lambda s: {"custom_skill_names": ["search", s]},
        ("custom_skill_names", 1),
        id="agent-skill-names",
    ),
    pytest.param(
        TeamCreate,
        lambda s: {"shared_skill_names": [s]},
        ("shared_skill_names", 0),
        id="team-skill-names",
    ),
    pytest.param(MemoryCreate, lambda s: {"tags": ["ok", s]}, ("tags", 1), id="memory-tags"),
    pytest.param(MemoryTagCreate, lambda s: {"tag": s}, ("tag",), id="memory-tag"),
    pytest.param(
        AgentCreate,
        lambda s: {"personality": {"system_prompt_template": s}},
        ("personality", "system_prompt_template"),
        id="personality-prompt",
    ),
    pytest.param(
        AgentPersonality,
        lambda s: {"voice_examples": [{"user_message": s, "agent_response": "Hi"}]},
        ("voice_examples", 0, "user_message"),
        id="voice-example-user-message",
    ),
    pytest.param(
        MemoryCreate, lambda s: {"metadata_json": {"note": s}}, ("metadata_json",), id="meta-value"
    ),
    pytest.param(
        MemoryCreate, lambda s: {"metadata_json": {s: 1}}, ("metadata_json",), id="meta-key"
    ),
    pytest.param(
        ConversationCreate,
        lambda s: {"metadata_json": {"a": {"b": [s]}}},
        ("metadata_json",),
        id="conversation-meta-nested",
    ),
    pytest.param(
        TeamCreate, lambda s: {"settings": {"theme": s}}, ("settings",), id="team-settings-value"
    ),
    pytest.param(
        TeamCreate, lambda s: {"settings": {s: {}}}, ("settings",), id="team-settings-key"
    ),
    pytest.param(
        MessageCreate,
        lambda s: {"tool_calls": [{"name": "search", "arguments": {"q": s}}]},
        ("tool_calls",),
        id="message-tool-calls",
    ),
    pytest.param(
        MessageCreate, lambda s: {"tool_results": {s: "ok"}}, ("tool_results",), id="tool-results"
    ),
]


@pytest.mark.parametrize(("model", "fields", "loc"), TEXT_CASES)
@pytest.mark.parametrize("bad", BAD_TEXT)
def test_text_postgresql_cannot_store_rejected(
    model: type[BaseModel],
    fields: Callable[[str], dict[str, Any]],
    loc: tuple[str | int, ...],
    bad: str,
) -> None:
    assert_rejected(model, loc, **fields(bad))


@pytest.mark.parametrize(("model", "fields", "loc"), TEXT_CASES)
def test_unicode_text_accepted_unchanged(
    model: type[BaseModel], fields: Callable[[str], dict[str, Any]], loc: tuple[str | int, ...]
) -> None:
    dumped = json.dumps(build(model, **fields(GOOD_TEXT)).model_dump(mode="json"))
    assert json.dumps(GOOD_TEXT)[1:-1] in dumped


NON_FINITE_JSON = [
    pytest.param(MemoryCreate, "metadata_json", {"score": math.nan}, id="memory-meta-nan"),
    pytest.param(MemoryUpdate, "metadata_json", {"a": [1, math.inf]}, id="memory-update-meta-inf"),
    pytest.param(ConversationCreate, "metadata_json", {"a": -math.inf}, id="conversation-meta"),
    pytest.param(ConversationUpdate, "metadata_json", {"a": math.nan}, id="conversation-update"),
    pytest.param(TeamCreate, "settings", {"limits": {"rate": math.nan}}, id="team-settings"),
    pytest.param(MessageCreate, "tool_calls", [{"arguments": {"x": math.nan}}], id="tool-calls"),
    pytest.param(MessageCreate, "tool_results", [math.inf], id="tool-results"),
    pytest.param(AgentModelConfig, "provider_overrides", {"top_p": math.nan}, id="overrides"),
]


@pytest.mark.parametrize(("model", "field", "value"), NON_FINITE_JSON)
def test_non_finite_number_in_json_rejected(model: type[BaseModel], field: str, value: Any) -> None:
    assert_rejected(model, (field,), **{field: value})


def test_json_of_every_kind_accepted_unchanged() -> None:
    document = {"s": "x", "i": 1, "f": 0.5, "b": True, "n": None, "l": [1, "a", {"k": []}]}
    assert build(MemoryCreate, metadata_json=document).metadata_json == document
    assert build(MessageCreate, tool_calls=[document]).tool_calls == [document]


@pytest.mark.parametrize(
    "settings",
    [{"a": ("\x00",)}, {"a": (math.nan,)}, {"a": {1, 2}}, {"a": uuid.uuid4()}],
    ids=["nul-in-tuple", "nan-in-tuple", "set", "uuid"],
)
def test_json_that_cannot_be_stored_is_rejected_in_any_container(settings: Any) -> None:
    assert_rejected(TeamCreate, ("settings", "a"), settings=settings)


# --- Literals and enums ---------------------------------------------------------------------


@pytest.mark.parametrize("model", [MessageCreate, MessageUpdate])
@pytest.mark.parametrize("rating", ["positive", "negative", None])
def test_feedback_rating_choices_accepted(model: type[BaseModel], rating: str | None) -> None:
    assert build(model, feedback_rating=rating).feedback_rating == rating


@pytest.mark.parametrize("model", [MessageCreate, MessageUpdate])
@pytest.mark.parametrize("rating", ["neutral", "Positive", ""])
def test_unknown_feedback_rating_rejected(model: type[BaseModel], rating: str) -> None:
    assert_rejected(model, ("feedback_rating",), feedback_rating=rating)


ENUM_FIELDS = [
    (MemoryCreate, "memory_type", "nonsense"),
    (MemoryCreate, "tier", "lukewarm"),
    (MemoryCreate, "source_type", "rumour"),
    (MemoryUpdate, "status", "deleted"),
    (MemoryUpdate, "tier", "HOT"),
    (MessageCreate, "role", "bot"),
    (ConversationCreate, "status", "open"),
    (ConversationUpdate, "status", "done"),
    (AgentCreate, "status", "retired"),
    (AgentUpdate, "status", "Active"),
    (TeamMembershipCreate, "role", "superuser"),
]


@pytest.mark.parametrize(("model", "field", "label"), ENUM_FIELDS)
def test_unknown_enum_label_rejected(model: type[BaseModel], field: str, label: str) -> None:
    assert_rejected(model, (field,), **{field: label})


def test_enum_label_becomes_enum_member() -> None:
    memory = build(MemoryCreate, memory_type="user_profile", tier="hot", source_type="explicit")
    assert memory.memory_type is MemoryType.USER_PROFILE
    assert memory.tier is MemoryTier.HOT
    assert memory.source_type is MemorySource.EXPLICIT


# (enum, PostgreSQL type name, labels from the spec, a column using it)
ENUMS = [
    (UserRole, "user_role", ["owner", "admin", "member", "viewer"], "team_membership.role"),
    (AgentStatus, "agent_status", ["draft", "active", "paused", "archived"], "agent.status"),
    (
        ConversationStatus,
        "conversation_status",
        ["active", "idle", "closed"],
        "conversation.status",
    ),
    (MessageRole, "message_role", ["user", "assistant", "system", "tool"], "message.role"),
    (
        MemoryType,
        "memory_type_enum",
        [
            "semantic",
            "episodic",
            "procedural",
            "agent_private",
            "shared",
            "identity",
            "user_profile",
        ],
        "memory.memory_type",
    ),
    (
        MemoryStatus,
        "memory_status",
        ["active", "superseded", "archived", "disputed"],
        "memory.status",
    ),
    (MemoryTier, "memory_tier", ["hot", "warm", "cold"], "memory.tier"),
    (
        MemorySource,
        "memory_source",
        ["extraction", "explicit", "system", "feedback", "consolidation", "compaction"],
        "memory.source_type",
    ),
]


@pytest.mark.parametrize(("enum", "type_name", "labels", "column"), ENUMS)
def test_enum_labels_match_spec_and_are_stored_by_value(
    enum: type[StrEnum], type_name: str, labels: list[str], column: str
) -> None:
    assert [member.value for member in enum] == labels
    assert pg_enum(enum, type_name).enums == labels
    assert pg_enum(enum, type_name).name == type_name
    table, name = column.split(".")
    column_type = metadata.tables[table].c[name].type
    assert (column_type.name, column_type.enums) == (type_name, labels)


# --- Read models, tags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("read_model", "secrets"),
    [(UserRead, {"password", "password_hash"}), (TeamRead, {"webhook_secret"})],
)
def test_read_models_have_no_secret_fields(read_model: type[BaseModel], secrets: set[str]) -> None:
    assert secrets.isdisjoint(read_model.model_fields)


def test_user_read_from_table_row_drops_password_hash() -> None:
    user = User.model_validate({**MINIMAL[UserCreate], "password_hash": "$argon2id$secret-hash"})
    user.id, user.created_at, user.updated_at = USER_ID, NOW, NOW
    dumped = UserRead.model_validate(user).model_dump()
    assert dumped["id"] == USER_ID
    assert "password_hash" not in dumped
    assert "secret-hash" not in repr(UserRead.model_validate(user))


def test_team_read_from_table_row_drops_webhook_secret() -> None:
    team = Team.model_validate(build(TeamCreate, webhook_secret="whsec_123"))
    assert team.webhook_secret == "whsec_123"
    team.created_at = team.updated_at = NOW
    dumped = TeamRead.model_validate(team).model_dump()
    assert dumped["slug"] == "acme"
    assert "webhook_secret" not in dumped


def test_memory_create_tags_are_stripped_and_not_carried_to_table() -> None:
    create = build(MemoryCreate, tags=["tea", "  drinks "])
    assert create.tags == ["tea", "drinks"]
    memory = Memory.model_validate(create)
    assert isinstance(memory.id, uuid.UUID)
    assert memory.content == create.content
    assert "tags" not in memory.model_dump()
    assert not hasattr(memory, "tags")


TAG_FIELDS = [
    pytest.param(MemoryCreate, lambda tag: {"tags": [tag]}, ("tags", 0), id="MemoryCreate"),
    pytest.param(MemoryTagCreate, lambda tag: {"tag": tag}, ("tag",), id="MemoryTagCreate"),
]


@pytest.mark.parametrize(("model", "fields", "loc"), TAG_FIELDS)
@pytest.mark.parametrize("tag", ["", "x" * 101], ids=["empty", "too-long"])
def test_empty_or_long_tag_rejected(
    model: type[BaseModel],
    fields: Callable[[str], dict[str, Any]],
    loc: tuple[str | int, ...],
    tag: str,
) -> None:
    assert_rejected(model, loc, **fields(tag))


@pytest.mark.parametrize(("model", "fields", "loc"), TAG_FIELDS)
def test_whitespace_only_tag_rejected(
    model: type[BaseModel], fields: Callable[[str], dict[str, Any]], loc: tuple[str | int, ...]
) -> None:
    assert_rejected(model, loc, **fields("   "))


# --- Tables ---------------------------------------------------------------------------------

TIMESTAMPS = {"created_at", "updated_at"}
EXPECTED_COLUMNS = {
    "user": {"id", "email", "password_hash", "display_name", "is_active"} | TIMESTAMPS,
    "team": {
        "id",
        "language",
        "name",
        "slug",
        "owner_id",
        "settings",
        "shared_skill_names",
        "webhook_url",
        "webhook_secret",
        "conversation_retention_days",
    }
    | TIMESTAMPS,
    "team_membership": {"id", "user_id", "team_id", "role", "created_at"},
    "agent": {
        "id",
        "team_id",
        "name",
        "slug",
        "tagline",
        "avatar_emoji",
        "personality",
        "shared_skill_names",
        "custom_skill_names",
        "disabled_skill_names",
        "model_config",
        "memory_config",
        "boundaries",
        "status",
        "created_by",
        "model_name",
        "personality_prompt",
    }
    | TIMESTAMPS,
    "conversation": {
        "id",
        "team_id",
        "agent_id",
        "user_id",
        "title",
        "status",
        "message_count",
        "total_input_tokens",
        "total_output_tokens",
        "token_count",
        "summary",
        "metadata",
        "last_message_at",
    }
    | TIMESTAMPS,
    "message": {
        "id",
        "team_id",
        "conversation_id",
        "agent_id",
        "role",
        "content",
        "tool_calls",
        "tool_results",
        "token_count",
        "model",
        "feedback_rating",
        "feedback_comment",
        "created_at",
    },
    "memory": {
        "id",
        "load_batch",
        "team_id",
        "agent_id",
        "user_id",
        "memory_type",
        "content",
        "subject",
        "embedding",
        "embedding_model",
        "importance",
        "confidence",
        "access_count",
        "is_pinned",
        "source_type",
        "source_conversation_id",
        "source_message_ids",
        "extraction_model",
        "version",
        "superseded_by",
        "contradicts",
        "related_to",
        "metadata",
        "tier",
        "status",
        "last_accessed_at",
        "expires_at",
        "text_config",
        "search_text",
    }
    | TIMESTAMPS,
    "memory_log": {
        "id",
        "memory_id",
        "team_id",
        "action",
        "old_content",
        "new_content",
        "old_importance",
        "new_importance",
        "old_tier",
        "new_tier",
        "old_status",
        "new_status",
        "changed_by",
        "reason",
        "conversation_id",
        "related_memory_ids",
        "created_at",
    },
    "memory_tag": {"id", "team_id", "memory_id", "tag", "created_at"},
}


def test_there_are_exactly_the_nine_tables() -> None:
    assert set(metadata.tables) == set(EXPECTED_COLUMNS)
    assert len(metadata.tables) == 9


@pytest.mark.parametrize(("table", "columns"), EXPECTED_COLUMNS.items())
def test_table_columns(table: str, columns: set[str]) -> None:
    assert {column.name for column in metadata.tables[table].columns} == columns


@pytest.mark.parametrize(
    ("column", "expression"),
    [
        ("agent.model_name", "model_config ->> 'model_name'"),
        ("agent.personality_prompt", "personality ->> 'system_prompt_template'"),
        ("conversation.token_count", "total_input_tokens + total_output_tokens"),
    ],
)
def test_generated_columns(column: str, expression: str) -> None:
    table, name = column.split(".")
    computed = metadata.tables[table].c[name].computed
    assert computed is not None
    assert (str(computed.sqltext), computed.persisted) == (expression, True)


@pytest.mark.parametrize(
    ("model", "attribute", "column"),
    [
        (Memory, "metadata_json", "metadata"),
        (Conversation, "metadata_json", "metadata"),
    ],
)
def test_python_attribute_maps_to_column(model: type[Any], attribute: str, column: str) -> None:
    assert getattr(model, attribute).property.columns[0].name == column
