"""AgentDNA: its sub-models (defaults, choices, ranges), effective skills, and jsonb storage."""

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from skill_store import (
    Agent,
    AgentBoundaries,
    AgentCreate,
    AgentDNA,
    AgentMemoryConfig,
    AgentModelConfig,
    AgentPersonality,
    AgentStatus,
    AgentUpdate,
    RetrievalWeights,
    VoiceExample,
)
from skill_store.models import metadata
from skill_store.models._types import PydanticJSONB
from tests.unit.helpers import MINIMAL, PERSONALITY, TEAM_ID, assert_rejected, build

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
AGENT_ID = uuid.UUID(int=42)

# --- Defaults -------------------------------------------------------------------------------

DEFAULT_WEIGHTS = {
    "semantic": 0.35,
    "recency": 0.20,
    "importance": 0.20,
    "continuity": 0.15,
    "relationship": 0.10,
}

# (model, its whole dump when only the required fields are given)
DEFAULTS = [
    (
        AgentPersonality,
        {
            **PERSONALITY,
            "tone": "friendly",
            "verbosity": "balanced",
            "formality": "adaptive",
            "language": "en",
            "traits": {},
            "voice_examples": [],
            "always_rules": [],
            "never_rules": [],
            "custom_instructions": "",
        },
    ),
    (VoiceExample, {**MINIMAL[VoiceExample], "context": ""}),
    (
        AgentModelConfig,
        {
            "model_name": "anthropic/claude-sonnet-4.5",
            "temperature": 0.7,
            "max_output_tokens": 4096,
            "provider_overrides": {},
        },
    ),
    (
        AgentMemoryConfig,
        {
            "token_budget": 2000,
            "retrieval_weights": DEFAULT_WEIGHTS,
            "auto_extract": True,
            "auto_pin_preferences": True,
            "summarize_interval": 20,
            "remember_commands": ["remember this", "don't forget", "keep in mind", "note that"],
        },
    ),
    (
        AgentBoundaries,
        {
            "can_do": [],
            "cannot_do": [],
            "escalates_to": None,
            "max_autonomy": "execute",
            "allowed_domains": [],
            "max_tool_calls_per_turn": 10,
        },
    ),
    (RetrievalWeights, DEFAULT_WEIGHTS),
]


@pytest.mark.parametrize(("model", "expected"), DEFAULTS, ids=[m.__name__ for m, _ in DEFAULTS])
def test_sub_model_defaults_match_spec(model: type[BaseModel], expected: dict[str, Any]) -> None:
    assert build(model).model_dump() == expected


def test_default_retrieval_weights_sum_to_one() -> None:
    assert math.isclose(sum(RetrievalWeights().model_dump().values()), 1.0)


def test_mutable_defaults_are_not_shared() -> None:
    first, second = AgentMemoryConfig(), AgentMemoryConfig()
    first.remember_commands.append("jot down")
    assert "jot down" not in second.remember_commands


def test_agent_create_defaults() -> None:
    agent = build(AgentCreate)
    assert (agent.tagline, agent.avatar_emoji, agent.status) == ("", "", AgentStatus.DRAFT)
    assert agent.shared_skill_names == agent.custom_skill_names == agent.disabled_skill_names == []
    assert agent.model == AgentModelConfig()
    assert agent.memory == AgentMemoryConfig()
    assert agent.boundaries == AgentBoundaries()
    assert agent.created_by is None


def test_agent_create_requires_personality() -> None:
    data = {**MINIMAL[AgentCreate]}
    del data["personality"]
    with pytest.raises(ValidationError) as info:
        AgentCreate.model_validate(data)
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [(("personality",), "missing")]


# --- Literal choices ------------------------------------------------------------------------

LITERALS = {
    (AgentPersonality, "tone"): [
        "professional",
        "friendly",
        "casual",
        "academic",
        "playful",
        "empathetic",
        "direct",
        "custom",
    ],
    (AgentPersonality, "verbosity"): ["concise", "balanced", "detailed", "verbose"],
    (AgentPersonality, "formality"): ["formal", "semi-formal", "informal", "adaptive"],
    (AgentBoundaries, "max_autonomy"): ["execute", "suggest", "ask"],
}


@pytest.mark.parametrize(("model", "field"), LITERALS)
def test_literal_choices_are_exactly_the_spec(model: type[BaseModel], field: str) -> None:
    assert list(get_args(model.model_fields[field].annotation)) == LITERALS[model, field]


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [(model, field, value) for (model, field), values in LITERALS.items() for value in values],
)
def test_each_literal_choice_accepted(model: type[BaseModel], field: str, value: str) -> None:
    assert getattr(build(model, **{field: value}), field) == value


@pytest.mark.parametrize(("model", "field"), LITERALS)
@pytest.mark.parametrize("value", ["sarcastic", "Friendly", "", None])
def test_unknown_literal_choice_rejected(model: type[BaseModel], field: str, value: Any) -> None:
    assert_rejected(model, (field,), **{field: value})


@pytest.mark.parametrize("language", ["en", "fr", "zh"])
def test_two_letter_language_accepted(language: str) -> None:
    assert build(AgentPersonality, language=language).language == language


@pytest.mark.parametrize("language", ["EN", "eng", "e", "en-US", ""])
def test_language_other_than_two_lowercase_letters_rejected(language: str) -> None:
    assert_rejected(AgentPersonality, ("language",), language=language)


# --- Numeric ranges -------------------------------------------------------------------------

# (model, field, lowest accepted, highest accepted, just below, just above)
RANGES = [
    (AgentModelConfig, "temperature", 0.0, 2.0, -0.01, 2.01),
    (AgentModelConfig, "max_output_tokens", 100, 32000, 99, 32001),
    (AgentMemoryConfig, "token_budget", 100, 8000, 99, 8001),
    (AgentBoundaries, "max_tool_calls_per_turn", 1, 50, 0, 51),
    *[(RetrievalWeights, name, 0.0, 1.0, -0.01, 1.01) for name in DEFAULT_WEIGHTS],
]


@pytest.mark.parametrize(("model", "field", "low", "high", "below", "above"), RANGES)
def test_numeric_range_bounds_accepted(
    model: type[BaseModel], field: str, low: float, high: float, below: float, above: float
) -> None:
    assert getattr(build(model, **{field: low}), field) == low
    assert getattr(build(model, **{field: high}), field) == high


@pytest.mark.parametrize(("model", "field", "low", "high", "below", "above"), RANGES)
def test_numeric_range_just_outside_rejected(
    model: type[BaseModel], field: str, low: float, high: float, below: float, above: float
) -> None:
    assert_rejected(model, (field,), **{field: below})
    assert_rejected(model, (field,), **{field: above})


def test_trait_weights_between_0_and_1() -> None:
    traits = {"curious": 0.0, "humorous": 1.0, "empathetic": 0.8}
    assert build(AgentPersonality, traits=traits).traits == traits
    assert_rejected(AgentPersonality, ("traits", "curious"), traits={"curious": -0.01})
    assert_rejected(AgentPersonality, ("traits", "curious"), traits={"curious": 1.01})


def test_summarize_interval_at_least_1() -> None:
    assert build(AgentMemoryConfig, summarize_interval=1).summarize_interval == 1
    assert_rejected(AgentMemoryConfig, ("summarize_interval",), summarize_interval=0)


@pytest.mark.parametrize("model", [AgentCreate, AgentUpdate])
def test_sub_config_errors_are_located_inside_the_agent(model: type[BaseModel]) -> None:
    memory = {"retrieval_weights": {"semantic": 1.5}}
    assert_rejected(model, ("memory", "retrieval_weights", "semantic"), memory=memory)
    assert_rejected(model, ("model", "temperature"), model={"temperature": 3})
    assert_rejected(model, ("personality", "tone"), personality={**PERSONALITY, "tone": "rude"})


# --- effective_skills -----------------------------------------------------------------------


def agent_dna(**fields: Any) -> AgentDNA:
    """An AgentDNA with the minimal agent fields, an id and timestamps."""
    base = {**MINIMAL[AgentCreate], "id": AGENT_ID, "created_at": NOW, "updated_at": NOW}
    return AgentDNA.model_validate({**base, **fields})


@pytest.mark.parametrize(
    ("shared", "custom", "disabled", "expected"),
    [
        pytest.param([], [], [], [], id="none"),
        pytest.param(["search"], ["draw"], [], ["search", "draw"], id="shared-then-custom"),
        pytest.param(["search", "calc"], ["draw"], ["calc"], ["search", "draw"], id="off-shared"),
        pytest.param(["search"], ["draw", "sing"], ["draw"], ["search", "sing"], id="off-custom"),
        pytest.param(["a", "b"], ["b", "c"], ["b"], ["a", "c"], id="off-in-both"),
        pytest.param(["b", "a"], ["a", "c", "b"], [], ["b", "a", "c"], id="repeats-first-kept"),
        pytest.param(["x", "x"], [], ["x"], [], id="all-disabled"),
        pytest.param(["z", "y"], ["x"], ["unknown"], ["z", "y", "x"], id="unknown-disabled"),
    ],
)
def test_effective_skills(
    shared: list[str], custom: list[str], disabled: list[str], expected: list[str]
) -> None:
    dna = agent_dna(
        shared_skill_names=shared, custom_skill_names=custom, disabled_skill_names=disabled
    )
    assert dna.effective_skills == expected
    assert dna.model_dump()["effective_skills"] == expected


# --- Table instance and conversions ---------------------------------------------------------


def test_agent_table_keeps_sub_configs_as_pydantic_models() -> None:
    agent = Agent.model_validate(build(AgentCreate, boundaries={"max_autonomy": "ask"}))
    assert isinstance(agent.personality, AgentPersonality)
    assert isinstance(agent.model, AgentModelConfig)
    assert isinstance(agent.memory, AgentMemoryConfig)
    assert isinstance(agent.boundaries, AgentBoundaries)
    assert agent.personality.system_prompt_template == PERSONALITY["system_prompt_template"]
    assert agent.boundaries.max_autonomy == "ask"


@pytest.mark.parametrize("model", [Agent, AgentCreate, AgentUpdate])
def test_personality_dict_becomes_agent_personality(model: type[BaseModel]) -> None:
    data = MINIMAL[AgentCreate] if model is not AgentUpdate else {}
    agent = model.model_validate({**data, "personality": {**PERSONALITY}})
    assert agent.personality == AgentPersonality(**PERSONALITY)


def test_agent_dna_from_table_instance() -> None:
    create = build(
        AgentCreate, shared_skill_names=["search", "calc"], disabled_skill_names=["calc"]
    )
    agent = Agent.model_validate(create)
    agent.id, agent.created_at, agent.updated_at = AGENT_ID, NOW, NOW

    dna = AgentDNA.model_validate(agent)

    assert (dna.id, dna.team_id, dna.slug) == (AGENT_ID, TEAM_ID, "kyra")
    assert (dna.created_at, dna.updated_at) == (NOW, NOW)
    assert dna.personality == create.personality
    assert dna.model.model_name == "anthropic/claude-sonnet-4.5"
    assert dna.effective_skills == ["search"]


# --- jsonb storage of the sub-configs -------------------------------------------------------

SUB_CONFIG_COLUMNS = [
    ("personality", "personality", AgentPersonality),
    ("model", "model_config", AgentModelConfig),
    ("memory", "memory_config", AgentMemoryConfig),
    ("boundaries", "boundaries", AgentBoundaries),
]


@pytest.mark.parametrize(("attribute", "column", "model"), SUB_CONFIG_COLUMNS)
def test_sub_config_column_stores_its_model(
    attribute: str, column: str, model: type[BaseModel]
) -> None:
    column_type = metadata.tables["agent"].c[column].type
    assert isinstance(column_type, PydanticJSONB)
    assert column_type.model is model
    assert getattr(Agent, attribute).property.columns[0].name == column


@pytest.mark.parametrize(
    ("column", "default"),
    [
        ("personality", AgentPersonality(system_prompt_template="")),
        ("model_config", AgentModelConfig()),
        ("memory_config", AgentMemoryConfig()),
        ("boundaries", AgentBoundaries()),
    ],
)
def test_sub_config_server_default_is_the_python_default(column: str, default: BaseModel) -> None:
    server_default = metadata.tables["agent"].c[column].server_default
    assert json.loads(server_default.arg) == default.model_dump(mode="json")


def test_pydantic_jsonb_round_trip() -> None:
    column_type = PydanticJSONB(AgentPersonality)
    personality = AgentPersonality(
        **PERSONALITY,
        tone="direct",
        traits={"curious": 0.9},
        voice_examples=[VoiceExample(user_message="Hi", agent_response="Hello!")],
    )

    bound = column_type.process_bind_param(personality, dialect=None)
    loaded = column_type.process_result_value(json.loads(json.dumps(bound)), dialect=None)

    assert bound == personality.model_dump(mode="json")
    assert isinstance(loaded, AgentPersonality)
    assert loaded == personality


def test_pydantic_jsonb_binds_a_dict_with_defaults_filled_in() -> None:
    bound = PydanticJSONB(AgentModelConfig).process_bind_param({"temperature": 1.2}, dialect=None)
    assert bound == {**AgentModelConfig().model_dump(mode="json"), "temperature": 1.2}


@pytest.mark.parametrize(
    "value",
    [{"temperature": 2.5}, {"max_output_tokens": "lots"}],
    ids=["out-of-range", "wrong-type"],
)
def test_pydantic_jsonb_validates_bound_and_loaded_dicts(value: dict[str, Any]) -> None:
    column_type = PydanticJSONB(AgentModelConfig)
    with pytest.raises(ValidationError):
        column_type.process_bind_param(value, dialect=None)
    with pytest.raises(ValidationError):
        column_type.process_result_value(value, dialect=None)


def test_pydantic_jsonb_passes_none_through() -> None:
    column_type = PydanticJSONB(AgentBoundaries)
    assert column_type.process_bind_param(None, dialect=None) is None
    assert column_type.process_result_value(None, dialect=None) is None
