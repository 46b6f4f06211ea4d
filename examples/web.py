"""A web service on the store: a team remembers, retrieves and lists its memories over HTTP.

    pip install "skill-store[web]"
    skill-store demo                # a team to try it with: `demo`
    python examples/web.py          # http://127.0.0.1:8000/docs

It runs on DATABASE_URL, or on the embedded server when that is unset, and migrates the
schema at start. The caller's team comes from the `X-Team` header (the team's slug), which
stands in for the application's own authentication; the routes' queries then run in a
session scoped to that team.

    curl localhost:8000/memories -H "X-Team: demo" --json '[{"content": "Ada prefers tea"}]'
    curl "localhost:8000/retrieve?query=tea" -H "X-Team: demo"
"""

import uuid
from functools import partial
from typing import Annotated

from fastapi import Depends, FastAPI, Header
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    ConnectionCheck,
    Memory,
    MemoryRead,
    MemoryRepository,
    MemoryType,
    ScoredMemory,
    TeamRepository,
    check_connection,
)
from skill_store.web import (
    EngineDep,
    SessionDep,
    add_exception_handlers,
    store_lifespan,
    team_session,
)

app = FastAPI(title="Memories", lifespan=partial(store_lifespan, upgrade=True))
add_exception_handlers(app)  # e.g. another team's memory: 404


async def current_team(x_team: Annotated[str, Header()], session: SessionDep) -> uuid.UUID:
    """The team the caller acts for: where a real application authenticates the caller."""
    return (await TeamRepository(session).get_by_slug_or_raise(x_team)).id


TeamId = Annotated[uuid.UUID, Depends(current_team)]
TeamSession = Annotated[AsyncSession, team_session(current_team)]
WITHOUT_EMBEDDINGS = {"__all__": {"embedding"}}  # each memory's vector stays out of the JSON


class NewMemory(BaseModel):
    """A memory to remember; its team is the caller's, its embedding made from its content."""

    model_config = ConfigDict(extra="forbid")

    content: str
    memory_type: MemoryType = MemoryType.SEMANTIC
    agent_id: uuid.UUID | None = None
    importance: int = Field(default=5, ge=1, le=10)
    tags: list[str] = []


@app.post("/memories", status_code=201, response_model_exclude=WITHOUT_EMBEDDINGS)
async def remember(
    memories: list[NewMemory], team_id: TeamId, session: TeamSession
) -> list[MemoryRead]:
    """Remember the memories in order: all of them, or none if one of them fails."""
    repository = MemoryRepository(session)
    remembered: list[Memory] = []
    for memory in memories:
        remembered.append(
            await repository.remember(
                memory.content,
                memory.memory_type,
                team_id=team_id,
                agent_id=memory.agent_id,
                importance=memory.importance,
                tags=memory.tags,
            )
        )
    return [MemoryRead.model_validate(memory) for memory in remembered]


@app.get("/memories", response_model_exclude=WITHOUT_EMBEDDINGS)
async def list_memories(
    team_id: TeamId, session: TeamSession, limit: int = 50, offset: int = 0
) -> list[MemoryRead]:
    """The team's memories, newest first."""
    found = await MemoryRepository(session).list(
        team_id=team_id, limit=limit, offset=offset, newest_first=True
    )
    return [MemoryRead.model_validate(memory) for memory in found]


@app.get("/memories/{memory_id}", response_model_exclude={"embedding"})
async def get_memory(memory_id: uuid.UUID, team_id: TeamId, session: TeamSession) -> MemoryRead:
    """One of the team's memories (another team's is not found)."""
    return MemoryRead.model_validate(
        await MemoryRepository(session).get(memory_id, team_id=team_id)
    )


@app.get("/retrieve", response_model_exclude=WITHOUT_EMBEDDINGS)
async def retrieve(
    query: str,
    team_id: TeamId,
    session: TeamSession,
    agent_id: uuid.UUID | None = None,
    limit: int = 10,
) -> list[ScoredMemory]:
    """The team's memories for `query`, best first, as `MemoryRepository.retrieve` ranks them."""
    return await MemoryRepository(session).retrieve(
        query, team_id=team_id, agent_id=agent_id, limit=limit
    )


@app.get("/health")
async def health(engine: EngineDep) -> ConnectionCheck:
    """The database's versions, the schema's revision and the latency; 503 if unreachable."""
    return await check_connection(engine)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
