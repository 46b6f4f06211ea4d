"""Dataframes of models: columns in the models' declared order, JSON values, no hidden fields."""

import sys
import uuid
from datetime import UTC, datetime

import pandas as pd
import pytest

from skill_store import (
    AgentDNA,
    AgentPersonality,
    MemoryRead,
    MemoryType,
    Team,
    TeamCreate,
    frame_columns,
    to_frame,
)
from skill_store.settings import get_settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def memory(content: str) -> MemoryRead:
    return MemoryRead(
        id=uuid.uuid4(),
        team_id=uuid.uuid4(),
        memory_type=MemoryType.SEMANTIC,
        content=content,
        embedding=[1.0] * get_settings().embedding_dimensions,
        metadata_json={"source": "chat"},
        access_count=0,
        version=1,
        superseded_by=None,
        status="active",
        created_at=NOW,
        updated_at=NOW,
        last_accessed_at=NOW,
    )


def test_memory_columns_in_declared_order_without_the_embedding() -> None:
    frame = to_frame([memory("Prefers tea"), memory("Climbs")])

    assert list(frame.columns) == [
        *("id", "team_id", "agent_id", "user_id", "memory_type", "content", "subject"),
        *(
            "embedding_model",
            "importance",
            "confidence",
            "is_pinned",
            "source_type",
            "source_conversation_id",
        ),
        *("source_message_ids", "extraction_model", "contradicts", "related_to"),
        *("metadata", "tier", "expires_at", "created_at", "updated_at", "access_count"),
        *("version", "superseded_by", "status", "last_accessed_at"),
    ]
    assert list(frame["content"]) == ["Prefers tea", "Climbs"]
    assert frame["memory_type"][0] == "semantic" and isinstance(frame["id"][0], str)
    assert frame["metadata"][0] == {"source": "chat"}
    assert pd.api.types.is_datetime64_any_dtype(frame["created_at"])


def test_agent_sub_configs_are_dicts_and_effective_skills_come_last() -> None:
    agent = AgentDNA(
        id=uuid.uuid4(),
        team_id=uuid.uuid4(),
        name="Kyra",
        slug="kyra",
        personality=AgentPersonality(system_prompt_template="You are Kyra.", tone="friendly"),
        shared_skill_names=["web-search"],
        custom_skill_names=["reminders"],
        created_at=NOW,
        updated_at=NOW,
    )
    frame = to_frame([agent])

    assert list(frame.columns) == frame_columns(AgentDNA)
    assert list(frame.columns)[-1] == "effective_skills"
    assert frame["effective_skills"][0] == ["web-search", "reminders"]
    personality = frame["personality"][0]
    assert isinstance(personality, dict) and personality["tone"] == "friendly"
    assert isinstance(frame["memory"][0]["retrieval_weights"], dict)


def test_table_rows_follow_the_model_not_the_order_values_were_set() -> None:
    team = Team.model_validate(
        TeamCreate(name="Acme", slug="acme", owner_id=uuid.uuid4()),
        update={"webhook_secret": "s3cret", "created_at": NOW, "updated_at": NOW},
    )

    frame = to_frame([team])

    assert list(frame.columns) == [
        *("id", "name", "slug", "owner_id", "settings", "shared_skill_names", "webhook_url"),
        *("conversation_retention_days", "language", "created_at", "updated_at"),
    ]
    assert list(team.model_dump()) == [*frame.columns, "webhook_secret"]
    assert "s3cret" not in frame.to_csv()


def test_no_models_no_columns() -> None:
    assert to_frame([]).empty


def test_without_pandas_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed

    with pytest.raises(ModuleNotFoundError, match=r"pip install 'skill-store\[notebook\]'"):
        to_frame([memory("Prefers tea")])
