"""HashingEmbedder and embedder_from_settings: no network, no database."""

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from skill_store import embeddings
from skill_store.embeddings import (
    HASHING_MODEL,
    Embedder,
    HashingEmbedder,
    OpenAIEmbedder,
    embedder_from_settings,
)
from skill_store.settings import DEFAULT_EMBEDDING_BASE_URL, Settings, get_settings

TEXTS = ["The cat sat on the mat.", "Ünïcode wörds, digits 42 and under_scores", "", "?!"]
REPO = Path(__file__).resolve().parents[2]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_vectors_have_the_dimension_and_unit_norm() -> None:
    vectors = await HashingEmbedder(64).embed(TEXTS)
    assert len(vectors) == len(TEXTS)
    for vector in vectors:
        assert len(vector) == 64
        assert math.isclose(math.sqrt(dot(vector, vector)), 1.0)


async def test_same_text_gives_the_same_vector_in_this_process() -> None:
    first = await HashingEmbedder(64).embed(TEXTS)
    second = await HashingEmbedder(64).embed(TEXTS)
    assert first == second


@pytest.mark.parametrize("hash_seed", ["1", "2"])
async def test_same_text_gives_the_same_vector_in_other_processes(hash_seed: str) -> None:
    """Python's `hash()` of a str changes with PYTHONHASHSEED; the embedder must not."""
    code = (
        "import asyncio, json, sys\n"
        "from skill_store.embeddings import HashingEmbedder\n"
        "texts = json.loads(sys.argv[1])\n"
        "print(json.dumps(asyncio.run(HashingEmbedder(64).embed(texts))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        timeout=60,
    )
    assert json.loads(result.stdout) == await HashingEmbedder(64).embed(TEXTS)


async def test_texts_sharing_words_are_more_similar_than_unrelated_texts() -> None:
    cat, kitten, physics = await HashingEmbedder(1536).embed(
        [
            "The cat sat on the mat",
            "a cat sat on a mat today",
            "quantum chromodynamics lecture notes",
        ]
    )
    # 6 shared features out of 11 and 13: about 0.43 when no two features collide.
    assert dot(cat, kitten) > 0.3
    assert abs(dot(cat, physics)) < 0.1


async def test_case_and_punctuation_do_not_matter() -> None:
    plain, shouted = await HashingEmbedder(64).embed(["hello world", "HELLO, World!!!"])
    assert plain == shouted


async def test_word_order_matters_through_bigrams() -> None:
    forward, backward = await HashingEmbedder(1024).embed(["dog bites man", "man bites dog"])
    assert forward != backward


@pytest.mark.parametrize("text", ["", "   ", "?!", "---"])
async def test_text_without_words_gives_a_non_zero_unit_vector(text: str) -> None:
    [vector] = await HashingEmbedder(32).embed([text])
    assert any(vector)
    assert math.isclose(dot(vector, vector), 1.0)


@pytest.mark.parametrize("dimensions", [1, 2, 3])
async def test_no_vector_is_all_zeros_even_with_tiny_dimensions(dimensions: int) -> None:
    """Few positions make colliding features likely; an odd feature count still leaves one."""
    texts = [" ".join(f"w{i}" for i in range(n)) for n in range(12)] + ["a a", "a b a b"]
    for vector in await HashingEmbedder(dimensions).embed(texts):
        assert any(vector)
        assert math.isclose(dot(vector, vector), 1.0)


async def test_order_is_preserved() -> None:
    embedder = HashingEmbedder(64)
    texts = [f"text number {i}" for i in range(20)]
    together = await embedder.embed(texts)
    one_by_one = [(await embedder.embed([text]))[0] for text in texts]
    assert together == one_by_one
    assert together != list(reversed(together))


async def test_no_texts_give_no_vectors() -> None:
    assert await HashingEmbedder(64).embed([]) == []


def test_dimensions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HashingEmbedder(0)


def test_hashing_embedder_is_an_embedder() -> None:
    embedder: Embedder = HashingEmbedder(8)
    assert embedder.dimensions == 8
    assert embedder.model == HASHING_MODEL == "hashing"


async def test_the_fallback_to_hashing_is_logged_once_when_it_first_embeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    without_key = Settings(_env_file=None, embedding_api_key=None, embedding_dimensions=8)
    with_key = Settings(_env_file=None, embedding_api_key=SecretStr("sk-x"))
    embeddings._warn_of_hashing.cache_clear()

    with caplog.at_level(logging.WARNING, logger="skill_store.embeddings"):
        embedder_from_settings(with_key)
        fallback = embedder_from_settings(without_key)
        assert await fallback.embed([]) == []
        assert caplog.records == []  # made, and asked for nothing: no warning yet
        await fallback.embed(["Ada likes tea"])
        await embedder_from_settings(without_key).embed(["Ada climbs"])
        assert await HashingEmbedder(8).embed(["chosen"])  # chosen by the caller: no warning

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "EMBEDDING_API_KEY is not set" in record.getMessage()
    assert "hashing embedder" in record.getMessage()


def test_settings_without_a_key_give_a_hashing_embedder() -> None:
    for key in (None, SecretStr("")):
        settings = Settings(_env_file=None, embedding_api_key=key, embedding_dimensions=48)
        embedder = embedder_from_settings(settings)
        assert isinstance(embedder, HashingEmbedder)
        assert embedder.dimensions == 48


def test_settings_with_a_key_give_an_openai_embedder() -> None:
    settings = Settings(
        _env_file=None,
        embedding_api_key=SecretStr("sk-settings-secret"),
        embedding_model="my-model",
        embedding_dimensions=48,
    )
    default = embedder_from_settings(settings)
    local = embedder_from_settings(
        settings.model_copy(update={"embedding_base_url": "http://127.0.0.1:9/v1/"})
    )
    assert isinstance(default, OpenAIEmbedder)
    assert isinstance(local, OpenAIEmbedder)
    assert (default.model, default.dimensions, default.base_url) == (
        "my-model",
        48,
        DEFAULT_EMBEDDING_BASE_URL,
    )
    assert local.base_url == "http://127.0.0.1:9/v1"
    assert "sk-settings-secret" not in repr(default)


def test_settings_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDING_API_KEY", "sk-from-env")
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "24")
    get_settings.cache_clear()
    try:
        embedder = embedder_from_settings()
    finally:
        get_settings.cache_clear()
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.dimensions == 24
