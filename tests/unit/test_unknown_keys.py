"""Input models refuse keys they do not know: a misspelt field is an error, not lost data."""

import uuid

import pytest
from pydantic import BaseModel, ValidationError

import skill_store
from skill_store import (
    AgentCreate,
    AgentMemoryConfig,
    AgentPersonality,
    ConversationUpdate,
    MemoryCreate,
    MemoryType,
    MemoryUpdate,
    UserCreate,
)

INPUT_MODELS = [
    getattr(skill_store, name)
    for name in skill_store.__all__
    if name.endswith(("Create", "Update"))
]
SUB_CONFIGS = [
    skill_store.VoiceExample,
    skill_store.AgentPersonality,
    skill_store.AgentModelConfig,
    skill_store.RetrievalWeights,
    skill_store.AgentMemoryConfig,
    skill_store.AgentBoundaries,
]


@pytest.mark.parametrize("model", INPUT_MODELS + SUB_CONFIGS, ids=lambda model: model.__name__)
def test_every_input_model_forbids_unknown_keys(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"


def memory(**fields: object) -> dict[str, object]:
    return {"team_id": uuid.uuid4(), "memory_type": MemoryType.SEMANTIC, "content": "x", **fields}


@pytest.mark.parametrize("key", ["importanse", "tag", "status", "id"])
def test_a_memory_with_an_unknown_key_is_refused_naming_it(key: str) -> None:
    with pytest.raises(ValidationError) as raised:
        MemoryCreate.model_validate(memory(**{key: 9}))
    [error] = raised.value.errors()
    assert (error["type"], error["loc"]) == ("extra_forbidden", (key,))


def test_metadata_is_the_name_of_metadata_json_in_and_out() -> None:
    assert MemoryCreate.model_validate(memory(metadata={"k": 1})).metadata_json == {"k": 1}
    assert MemoryCreate.model_validate(memory(metadata_json={"k": 2})).metadata_json == {"k": 2}
    assert MemoryCreate(**memory(metadata={"k": 3})).metadata_json == {"k": 3}
    update = MemoryUpdate.model_validate({"metadata": {"k": 4}})
    assert update.model_dump(exclude_unset=True) == {"metadata": {"k": 4}}
    assert ConversationUpdate.model_validate({"metadata": {"k": 5}}).metadata_json == {"k": 5}


def test_an_update_with_a_misspelt_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="contnet"):
        MemoryUpdate.model_validate({"contnet": "new"})


def test_sub_configs_and_secrets_refuse_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="token_budgett"):
        AgentMemoryConfig.model_validate({"token_budgett": 3000})
    with pytest.raises(ValidationError, match="tone_"):
        AgentCreate.model_validate(
            {
                "team_id": uuid.uuid4(),
                "name": "Kyra",
                "slug": "kyra",
                "personality": {"system_prompt_template": "x", "tone_": "direct"},
            }
        )
    with pytest.raises(ValidationError) as raised:
        UserCreate.model_validate(
            {"email": "a@b.co", "display_name": "A", "password": "correct horse", "pasword": "x"}
        )
    assert "correct horse" not in str(raised.value)
    assert AgentPersonality(system_prompt_template="x").tone == "friendly"
