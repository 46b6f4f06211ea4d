"""Bad input the models reject before any SQL: limits, and properties over generated input."""

import math
import re
from enum import StrEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from skill_store import (
    MAX_CONTENT_LENGTH,
    MAX_MESSAGE_LENGTH,
    AgentCreate,
    AgentModelConfig,
    AgentStatus,
    AgentUpdate,
    ConversationCreate,
    ConversationStatus,
    ConversationUpdate,
    MemoryCreate,
    MemorySource,
    MemoryStatus,
    MemoryTagCreate,
    MemoryTier,
    MemoryType,
    MemoryUpdate,
    MessageCreate,
    MessageRole,
    TeamCreate,
    TeamMembershipCreate,
    TeamUpdate,
    UserCreate,
    UserRole,
    UserUpdate,
    get_settings,
)
from skill_store.models._types import SLUG_PATTERN
from tests.unit.helpers import PERSONALITY, assert_rejected, build

# --- Content length limits ------------------------------------------------------------------

LIMITS = [
    pytest.param(MemoryCreate, MAX_CONTENT_LENGTH, id="memory"),
    pytest.param(MemoryUpdate, MAX_CONTENT_LENGTH, id="memory-update"),
    pytest.param(MessageCreate, MAX_MESSAGE_LENGTH, id="message"),
]


@pytest.mark.parametrize(("model", "limit"), LIMITS)
def test_content_at_the_limit_accepted_in_characters_not_bytes(
    model: type[BaseModel], limit: int
) -> None:
    content = "é" * (limit - 1) + "𝄞"
    assert build(model, content=content).content == content  # type: ignore[attr-defined]


@pytest.mark.parametrize(("model", "limit"), LIMITS)
def test_content_past_the_limit_rejected(model: type[BaseModel], limit: int) -> None:
    assert_rejected(model, ("content",), content="x" * (limit + 1))


# --- Properties over generated input --------------------------------------------------------

PROPERTY = settings(max_examples=60, deadline=None)

GOOD_CHARACTER = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
GOOD_TEXT = st.text(GOOD_CHARACTER, max_size=10)
BAD_CHARACTER = st.just("\x00") | st.characters(categories=("Cs",))
BAD_TEXT = st.builds(lambda a, bad, b: a + bad + b, GOOD_TEXT, BAD_CHARACTER, GOOD_TEXT)
"""Text PostgreSQL cannot store: a NUL or a lone surrogate somewhere in it."""

# Every free-text field of the Create models (JSON, slugs and emails are checked below).
TEXT_FIELDS = [
    (UserCreate, "display_name"),
    (TeamCreate, "name"),
    (TeamCreate, "webhook_url"),
    (TeamCreate, "webhook_secret"),
    (AgentCreate, "name"),
    (AgentCreate, "tagline"),
    (AgentCreate, "avatar_emoji"),
    (ConversationCreate, "title"),
    (ConversationCreate, "summary"),
    (MessageCreate, "content"),
    (MessageCreate, "model"),
    (MessageCreate, "feedback_comment"),
    (MemoryCreate, "content"),
    (MemoryCreate, "subject"),
    (MemoryCreate, "extraction_model"),
    (MemoryTagCreate, "tag"),
]


@PROPERTY
@given(case=st.sampled_from(TEXT_FIELDS), bad=BAD_TEXT)
def test_text_postgresql_cannot_store_is_rejected_in_every_text_field(
    case: tuple[type[BaseModel], str], bad: str
) -> None:
    model, field = case
    assert_rejected(model, (field,), **{field: bad})


@PROPERTY
@given(bad=BAD_TEXT, where=st.sampled_from(["skill", "rule", "voice", "trait"]))
def test_text_postgresql_cannot_store_is_rejected_inside_agent_sub_configs(
    bad: str, where: str
) -> None:
    fields, loc = {
        "skill": ({"custom_skill_names": [bad]}, ("custom_skill_names", 0)),
        "rule": (
            {"personality": {**PERSONALITY, "never_rules": ["ok", bad]}},
            ("personality", "never_rules", 1),
        ),
        "voice": (
            {
                "personality": {
                    **PERSONALITY,
                    "voice_examples": [{"user_message": "hi", "agent_response": bad}],
                }
            },
            ("personality", "voice_examples", 0, "agent_response"),
        ),
        "trait": (
            {"personality": {**PERSONALITY, "traits": {bad: 0.5}}},
            ("personality", "traits"),
        ),
    }[where]
    with pytest.raises(ValidationError) as info:
        build(AgentCreate, **fields)
    # (A key's position in `loc` is the key itself, not always comparable when it is bad.)
    assert [error["loc"][: len(loc)] for error in info.value.errors()] == [loc]


JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | GOOD_TEXT
)
GOOD_JSON = st.recursive(
    JSON_LEAF,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(GOOD_TEXT, children, max_size=3)
    ),
    max_leaves=8,
)
GOOD_OBJECT = st.dictionaries(GOOD_TEXT, GOOD_JSON, max_size=4)


def _with(base: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**base, key: value}


def _poisoned(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A container holding a poisoned value somewhere, or a key PostgreSQL cannot store."""
    return st.one_of(
        st.builds(
            lambda items, poison, at: [*items[:at], poison, *items[at:]],
            st.lists(GOOD_JSON, max_size=3),
            children,
            st.integers(0, 3),
        ),
        st.builds(_with, GOOD_OBJECT, GOOD_TEXT, children),
        st.builds(_with, GOOD_OBJECT, BAD_TEXT, GOOD_JSON),
    )


POISON = BAD_TEXT | st.sampled_from([math.nan, math.inf, -math.inf])
POISONED_OBJECT = st.builds(
    _with, GOOD_OBJECT, GOOD_TEXT, st.recursive(POISON, _poisoned, max_leaves=6)
) | st.builds(_with, GOOD_OBJECT, BAD_TEXT, GOOD_JSON)
"""A JSON object with, at any depth, text PostgreSQL cannot store (as a key or value) or a
non-finite number."""

JSON_FIELDS = [
    (TeamCreate, "settings"),
    (TeamUpdate, "settings"),
    (ConversationCreate, "metadata_json"),
    (ConversationUpdate, "metadata_json"),
    (MessageCreate, "tool_calls"),
    (MessageCreate, "tool_results"),
    (MemoryCreate, "metadata_json"),
    (MemoryUpdate, "metadata_json"),
    (AgentModelConfig, "provider_overrides"),
]


@PROPERTY
@given(case=st.sampled_from(JSON_FIELDS), document=POISONED_OBJECT)
def test_json_postgresql_cannot_store_is_rejected_at_any_depth(
    case: tuple[type[BaseModel], str], document: dict[str, Any]
) -> None:
    model, field = case
    assert_rejected(model, (field,), **{field: document})


@PROPERTY
@given(case=st.sampled_from(JSON_FIELDS), document=GOOD_OBJECT)
def test_json_that_postgresql_can_store_is_accepted_unchanged(
    case: tuple[type[BaseModel], str], document: dict[str, Any]
) -> None:
    model, field = case
    assert getattr(build(model, **{field: document}), field) == document


DIMENSIONS = get_settings().embedding_dimensions


@PROPERTY
@given(
    model=st.sampled_from([MemoryCreate, MemoryUpdate]),
    length=st.integers(0, 2 * DIMENSIONS).filter(lambda n: n != DIMENSIONS),
)
def test_embedding_of_any_other_length_is_rejected(model: type[BaseModel], length: int) -> None:
    assert_rejected(model, ("embedding",), embedding=[0.5] * length)


@PROPERTY
@given(
    model=st.sampled_from([MemoryCreate, MemoryUpdate]),
    at=st.integers(0, DIMENSIONS - 1),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
)
def test_embedding_with_a_non_finite_value_anywhere_is_rejected(
    model: type[BaseModel], at: int, bad: float
) -> None:
    embedding = [0.5] * DIMENSIONS
    embedding[at] = bad
    assert_rejected(model, ("embedding", at), embedding=embedding)


@PROPERTY
@given(
    model=st.sampled_from([MemoryCreate, MemoryUpdate]),
    importance=st.integers().filter(lambda n: not 1 <= n <= 10),
)
def test_importance_outside_1_to_10_is_rejected(model: type[BaseModel], importance: int) -> None:
    assert_rejected(model, ("importance",), importance=importance)


@PROPERTY
@given(
    model=st.sampled_from([MemoryCreate, MemoryUpdate]),
    confidence=st.floats().filter(lambda x: not 0.0 <= x <= 1.0),
)
def test_confidence_outside_0_to_1_is_rejected(model: type[BaseModel], confidence: float) -> None:
    assert_rejected(model, ("confidence",), confidence=confidence)


@PROPERTY
@given(importance=st.integers(1, 10), confidence=st.floats(0.0, 1.0))
def test_scores_inside_their_ranges_are_accepted(importance: int, confidence: float) -> None:
    memory = build(MemoryCreate, importance=importance, confidence=confidence)
    assert (memory.importance, memory.confidence) == (importance, confidence)


SLUG_MODELS = [TeamCreate, TeamUpdate, AgentCreate, AgentUpdate]


@PROPERTY
@given(
    model=st.sampled_from(SLUG_MODELS),
    slug=st.text(max_size=12).filter(lambda s: re.fullmatch(SLUG_PATTERN, s) is None),
)
def test_slug_not_matching_the_pattern_is_rejected(model: type[BaseModel], slug: str) -> None:
    assert_rejected(model, ("slug",), slug=slug)


@PROPERTY
@given(
    model=st.sampled_from(SLUG_MODELS),
    slug=st.from_regex(SLUG_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 100),
)
def test_slug_matching_the_pattern_is_accepted(model: type[BaseModel], slug: str) -> None:
    assert build(model, slug=slug).slug == slug  # type: ignore[attr-defined]


ALNUM = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)


@PROPERTY
@given(
    model=st.sampled_from([UserCreate, UserUpdate]),
    email=st.text(max_size=20).filter(lambda s: "@" not in s)
    | st.builds(lambda a, b, c: f"{a}@{b}@{c}.com", ALNUM, ALNUM, ALNUM)
    | st.builds(lambda a: f"{a}@", ALNUM)
    | st.builds(lambda b: f"@{b}.com", ALNUM),
)
def test_malformed_email_is_rejected(model: type[BaseModel], email: str) -> None:
    assert_rejected(model, ("email",), email=email)


ENUM_FIELDS = [
    (TeamMembershipCreate, "role", UserRole),
    (AgentCreate, "status", AgentStatus),
    (AgentUpdate, "status", AgentStatus),
    (ConversationCreate, "status", ConversationStatus),
    (ConversationUpdate, "status", ConversationStatus),
    (MessageCreate, "role", MessageRole),
    (MemoryCreate, "memory_type", MemoryType),
    (MemoryCreate, "source_type", MemorySource),
    (MemoryCreate, "tier", MemoryTier),
    (MemoryUpdate, "tier", MemoryTier),
    (MemoryUpdate, "status", MemoryStatus),
]


@PROPERTY
@given(case=st.sampled_from(ENUM_FIELDS), data=st.data())
def test_unknown_enum_label_is_rejected(
    case: tuple[type[BaseModel], str, type[StrEnum]], data: st.DataObject
) -> None:
    model, field, enum = case
    labels = {member.value for member in enum}
    label = data.draw(
        st.text(max_size=15).filter(lambda s: s not in labels)
        | st.sampled_from(sorted(labels)).map(str.upper)
        | st.sampled_from(sorted(labels)).map(lambda s: f" {s}")
    )
    assert_rejected(model, (field,), **{field: label})
