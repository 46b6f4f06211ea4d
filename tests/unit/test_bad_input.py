"""Bad input the models reject before any SQL: limits, and properties over generated input."""

import pytest
from pydantic import BaseModel

from skill_store import (
    MAX_CONTENT_LENGTH,
    MAX_MESSAGE_LENGTH,
    MemoryCreate,
    MemoryUpdate,
    MessageCreate,
)
from tests.unit.helpers import assert_rejected, build

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
