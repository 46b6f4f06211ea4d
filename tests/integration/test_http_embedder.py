"""OpenAIEmbedder against a real HTTP server on loopback that speaks the embeddings protocol.

The server answers each request with the next scripted `Reply`, and with a success once the
script is used up, so a client that retries too often or too little gets a different result.
Retries are at most `max_retries`, so a batch takes at most `max_retries + 1` requests.
The waits between retries are recorded instead of slept.
"""

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import skill_store.embeddings
from skill_store.embeddings import OpenAIEmbedder
from skill_store.errors import EmbeddingDimensionError, EmbeddingServiceError, SkillStoreError

from ..support import FakeEmbeddingService, Reply, serving

KEY = "sk-test-0123456789-very-secret"
DIMENSIONS = 8


@pytest.fixture
def service() -> Iterator[FakeEmbeddingService]:
    with serving(FakeEmbeddingService()) as service:
        yield service


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the embedder waits between retries, recorded instead of slept."""
    recorded: list[float] = []

    async def record(delay: float) -> None:
        recorded.append(delay)
        await asyncio.sleep(0)

    monkeypatch.setattr(skill_store.embeddings, "_sleep", record)
    return recorded


def embedder(base_url: str, **options: Any) -> OpenAIEmbedder:
    options = {"timeout": 2.0, "retry_delay": 0.01, **options}
    return OpenAIEmbedder("test-model", KEY, DIMENSIONS, base_url=base_url, **options)


def error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error"}}


async def test_success_sends_the_protocol_and_keeps_the_order(
    service: FakeEmbeddingService,
) -> None:
    vectors = await embedder(service.base_url + "/").embed(["a", "bb", "ccc"])
    assert vectors == [[1.0] * DIMENSIONS, [2.0] * DIMENSIONS, [3.0] * DIMENSIONS]
    [request] = service.received
    assert request.path == "/v1/embeddings"
    assert request.authorization == f"Bearer {KEY}"
    assert request.body == {"model": "test-model", "input": ["a", "bb", "ccc"], "dimensions": 8}


async def test_a_given_client_is_used_and_left_open(service: FakeEmbeddingService) -> None:
    async with httpx.AsyncClient() as client:
        shared = embedder(service.base_url, client=client)
        assert await shared.embed(["x"]) == [[1.0] * DIMENSIONS]
        assert await shared.embed(["yy"]) == [[2.0] * DIMENSIONS]
        assert not client.is_closed
    assert len(service.received) == 2


async def test_no_texts_send_no_request(service: FakeEmbeddingService) -> None:
    assert await embedder(service.base_url).embed([]) == []
    assert service.received == []


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_key_is_reported_and_not_retried(
    service: FakeEmbeddingService, status: int
) -> None:
    service.script = [Reply(status, error_body("Incorrect API key provided"))]
    with pytest.raises(EmbeddingServiceError) as caught:
        await embedder(service.base_url).embed(["a"])
    assert str(caught.value) == f"the embedding service rejected the API key (HTTP {status})"
    assert caught.value.status == status
    assert isinstance(caught.value, SkillStoreError)
    assert len(service.received) == 1


@pytest.mark.parametrize(
    ("retry_after", "delay"), [("0", 0.0), ("7", 7.0), ("3600", 60.0), (None, 0.01)]
)
async def test_429_is_retried_after_the_delay_the_service_asks_for(
    service: FakeEmbeddingService, sleeps: list[float], retry_after: str | None, delay: float
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    service.script = [Reply(429, error_body("Rate limit reached"), headers)]
    assert await embedder(service.base_url).embed(["abc"]) == [[3.0] * DIMENSIONS]
    assert len(service.received) == 2
    assert sleeps == [delay]


async def test_5xx_is_retried_until_the_service_recovers(
    service: FakeEmbeddingService, sleeps: list[float]
) -> None:
    service.script = [Reply(500, {}), Reply(502, {})]
    assert await embedder(service.base_url, max_retries=2).embed(["ab"]) == [[2.0] * DIMENSIONS]
    assert len(service.received) == 3
    assert sleeps == [0.01, 0.02]


async def test_5xx_after_the_last_retry_is_an_error(
    service: FakeEmbeddingService, sleeps: list[float]
) -> None:
    service.script = [Reply(503, error_body("The engine is overloaded"))] * 4
    with pytest.raises(EmbeddingServiceError) as caught:
        await embedder(service.base_url, max_retries=3).embed(["a"])
    message = str(caught.value)
    assert "HTTP 503" in message
    assert "after 4 attempts" in message
    assert "The engine is overloaded" in message
    assert caught.value.status == 503
    assert len(service.received) == 4  # max_retries + 1
    assert sleeps == [0.01, 0.02, 0.04]


async def test_a_refused_request_names_the_status_and_the_service_message(
    service: FakeEmbeddingService,
) -> None:
    service.script = [Reply(400, error_body("'$.input' is invalid")), Reply(404, "not json")]
    with pytest.raises(EmbeddingServiceError, match=r"HTTP 400\): '\$\.input' is invalid"):
        await embedder(service.base_url).embed(["a"])
    with pytest.raises(EmbeddingServiceError, match=r"\(HTTP 404\)$"):
        await embedder(service.base_url).embed(["a"])
    assert len(service.received) == 2


async def test_a_vector_of_the_wrong_length_is_a_dimension_error(
    service: FakeEmbeddingService,
) -> None:
    service.script = [Reply(dimensions=DIMENSIONS - 3)]
    with pytest.raises(EmbeddingDimensionError) as caught:
        await embedder(service.base_url).embed(["a", "b"])
    assert (caught.value.expected, caught.value.got) == (DIMENSIONS, DIMENSIONS - 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"data": []}, "asked for 2 embeddings, got 0"),
        ({"result": "ok"}, "malformed answer: KeyError"),
        ({"data": [{"index": 0, "embedding": "no"}] * 2}, "malformed answer: ValueError"),
    ],
)
async def test_a_malformed_answer_is_an_error(
    service: FakeEmbeddingService, body: Any, message: str
) -> None:
    service.script = [Reply(body=body)]
    with pytest.raises(EmbeddingServiceError, match=message):
        await embedder(service.base_url).embed(["a", "b"])


async def test_large_inputs_are_sent_in_batches_in_order(service: FakeEmbeddingService) -> None:
    texts = ["x" * n for n in range(1, 601)]
    vectors = await embedder(service.base_url).embed(texts)
    assert [vector[0] for vector in vectors] == [float(n) for n in range(1, 601)]
    assert [len(request.body["input"]) for request in service.received] == [256, 256, 88]
    assert [text for request in service.received for text in request.body["input"]] == texts


async def test_an_unreachable_service_is_reported_with_its_url() -> None:
    with socket.socket() as closed:  # bound but not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        with pytest.raises(EmbeddingServiceError) as caught:
            await embedder(url).embed(["a"])
    assert f"cannot reach the embedding service at {url}/embeddings" in str(caught.value)
    assert caught.value.status is None


async def test_the_api_key_appears_in_no_error_and_no_repr(
    service: FakeEmbeddingService, sleeps: list[float]
) -> None:
    echo = error_body(f"Incorrect API key provided: {KEY}")
    service.script = [
        Reply(401, echo),
        Reply(400, echo),
        Reply(429, echo),
        Reply(429, echo),
        Reply(dimensions=1),
    ]
    client = embedder(service.base_url, max_retries=1)
    errors: list[Exception] = []
    for _ in range(4):
        with pytest.raises((EmbeddingServiceError, EmbeddingDimensionError)) as caught:
            await client.embed(["a"])
        errors.append(caught.value)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        with pytest.raises(EmbeddingServiceError) as caught:
            await embedder(f"http://127.0.0.1:{closed.getsockname()[1]}").embed(["a"])
        errors.append(caught.value)
    assert "Incorrect API key provided: ***" in str(errors[1])
    assert len(service.received) == 5
    for shown in [repr(client), str(client), *map(str, errors), *map(repr, errors)]:
        assert KEY not in shown
        assert "very-secret" not in shown
