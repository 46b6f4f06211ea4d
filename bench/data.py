"""Synthetic, reproducible memories: clustered unit vectors spread over many teams.

Every team writes about a few topics; a topic is a random direction, and a memory about it
is that direction plus Gaussian noise, normalised (cosine similarity to its topic ≈ 0.7, to
another memory of the topic ≈ 0.5, to anything else ≈ 0). A query is a new memory about one
of the team's topics, the usual case of retrieval.
"""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

MEMORY_TYPES = ("semantic", "episodic", "procedural", "shared")
TAGS = tuple(f"tag-{number}" for number in range(50))
TOPICS = 500
WORDS = [
    "customer",
    "asked",
    "about",
    "invoice",
    "deadline",
    "prefers",
    "email",
    "meeting",
    "moved",
    "release",
    "notes",
    "bug",
    "report",
    "dashboard",
    "latency",
    "budget",
    "review",
    "onboarding",
    "contract",
    "renewal",
    "feedback",
    "roadmap",
    "priority",
    "vendor",
    "migration",
    "backup",
    "password",
    "policy",
    "holiday",
    "schedule",
]


@dataclass(frozen=True)
class TeamClass:
    """Teams of one size: `count` teams of `rows` memories each."""

    name: str
    count: int
    rows: int


@dataclass
class Team:
    """A team of the synthetic world, its size and its topics."""

    id: uuid.UUID
    kind: str
    rows: int
    topics: NDArray[np.int64]


@dataclass
class World:
    """Teams, topic directions and a seeded generator for `memories` rows."""

    dimensions: int
    classes: list[TeamClass]
    seed: int = 7
    teams: list[Team] = field(default_factory=list)
    centers: NDArray[np.float32] = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.centers = normalised(rng.standard_normal((TOPICS, self.dimensions)))

    @property
    def total(self) -> int:
        """Memories in the world."""
        return sum(kind.count * kind.rows for kind in self.classes)

    def of_class(self, name: str) -> list[Team]:
        """The teams of one class."""
        return [team for team in self.teams if team.kind == name]

    def add_teams(self, ids: list[uuid.UUID]) -> None:
        """Give the teams their ids (created in the database) and their topics."""
        rng = np.random.default_rng(self.seed + 1)
        kinds = [kind for kind in self.classes for _ in range(kind.count)]
        if len(ids) != len(kinds):
            raise ValueError(f"{len(kinds)} team ids needed, got {len(ids)}")
        for team_id, kind in zip(ids, kinds, strict=True):
            self.teams.append(Team(team_id, kind.name, kind.rows, self.topics_of(kind.rows, rng)))

    def topics_of(self, rows: int, rng: np.random.Generator) -> NDArray[np.int64]:
        """Topics for a team of `rows` memories: more for a larger team, at most half of all.

        So every team, however large, can be asked about topics it does not hold.
        """
        return rng.choice(TOPICS, size=min(TOPICS // 2, 3 + rows // 500), replace=False)

    def team_memories(
        self, team: Team, count: int, chunk: int, seed: int
    ) -> Iterator[list[dict[str, Any]]]:
        """`count` more memories of one team (which need not be among `teams`), in chunks."""
        rng = np.random.default_rng(seed)
        yield from self._rows([team] * count, chunk, rng)

    def memories(self, chunk: int) -> Iterator[list[dict[str, Any]]]:
        """Every memory as `MemoryCreate` data (embedding a float32 array), in chunks, shuffled.

        The order of teams is shuffled so that each chunk holds memories of many teams.
        """
        rng = np.random.default_rng(self.seed + 2)
        owners = np.concatenate(
            [np.full(team.rows, index, dtype=np.int64) for index, team in enumerate(self.teams)]
        )
        rng.shuffle(owners)
        yield from self._rows([self.teams[index] for index in owners], chunk, rng)

    def extra(self, count: int, chunk: int, seed: int) -> Iterator[list[dict[str, Any]]]:
        """`count` more memories of random teams (chosen in proportion to their size)."""
        rng = np.random.default_rng(seed)
        sizes = np.array([team.rows for team in self.teams], dtype=np.float64)
        owners = rng.choice(len(self.teams), size=count, p=sizes / sizes.sum())
        yield from self._rows([self.teams[index] for index in owners], chunk, rng)

    def _rows(
        self, owners: list[Team], chunk: int, rng: np.random.Generator
    ) -> Iterator[list[dict[str, Any]]]:
        """Memories of the `owners` (a team a memory), `chunk` at a time."""
        for start in range(0, len(owners), chunk):
            members = owners[start : start + chunk]
            topics = np.array([rng.choice(team.topics) for team in members])
            vectors = self.around(topics, rng)
            rows = []
            for offset, (team, topic) in enumerate(zip(members, topics, strict=True)):
                number = start + offset
                words = rng.choice(WORDS, size=int(rng.integers(8, 40)))
                rows.append(
                    {
                        "team_id": team.id,
                        "memory_type": MEMORY_TYPES[number % len(MEMORY_TYPES)],
                        "content": f"topic {topic} note {number}: {' '.join(words)}",
                        "subject": f"topic {topic}" if number % 3 == 0 else None,
                        "embedding": vectors[offset],
                        "importance": int(rng.integers(1, 11)),
                        "metadata_json": {"source": "bench", "number": number},
                        "tags": [
                            str(tag)
                            for tag in rng.choice(TAGS, size=int(rng.integers(0, 4)), replace=False)
                        ],
                    }
                )
            yield rows

    def around(self, topics: NDArray[np.int64], rng: np.random.Generator) -> NDArray[np.float32]:
        """A unit vector near each topic's direction."""
        noise = rng.standard_normal((len(topics), self.dimensions)) / np.sqrt(self.dimensions)
        return normalised(self.centers[topics] + noise)

    def queries(self, kind: str, count: int, seed: int) -> list[tuple[Team, list[float]]]:
        """`count` queries, each to a team of the class about one of its topics."""
        rng = np.random.default_rng(seed)
        teams = self.of_class(kind)
        chosen = [teams[int(rng.integers(len(teams)))] for _ in range(count)]
        topics = np.array([rng.choice(team.topics) for team in chosen])
        vectors = self.around(topics, rng)
        return [(team, vector.tolist()) for team, vector in zip(chosen, vectors, strict=True)]


def normalised(vectors: NDArray[Any]) -> NDArray[np.float32]:
    """Rows scaled to unit length, as float32."""
    as32 = np.asarray(vectors, dtype=np.float32)
    result: NDArray[np.float32] = as32 / np.linalg.norm(as32, axis=1, keepdims=True)
    return result


def team_classes(size: int) -> list[TeamClass]:
    """The teams of a world of `size` memories.

    Half the memories belong to two large teams, a quarter to five medium ones, a quarter
    to small teams of 100: at 100,000 memories the large teams (25,000 each) take the HNSW
    path of `search_by_embedding`, the others its exact path.
    """
    large = size // 4
    medium = size // 20
    small_rows = 100
    small = max(1, (size - 2 * large - 5 * medium) // small_rows)
    return [
        TeamClass("large", 2, large),
        TeamClass("medium", 5, medium),
        TeamClass("small", small, small_rows),
    ]
