"""Retrieval for an agent: `python examples/retrieval.py` (embedded server, offline embedder).

Creates a team, an agent and a few memories, then prints what `retrieve` ranks first and
why, and the context `context_for` packs into the agent's token budget. Everything is
rolled back at the end.
"""

import asyncio
from datetime import UTC, datetime, timedelta

from skill_store import (
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    MemoryRepository,
    MemoryType,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    get_engine,
    get_session_factory,
    migrate,
)


async def main() -> None:
    """Create, retrieve, print, roll back."""
    engine = await get_engine()  # embedded PostgreSQL unless DATABASE_URL is set
    await migrate(engine)
    async with get_session_factory(engine)() as session:
        # a team, its agent and what the agent remembers
        ada = await UserRepository(session).create(
            UserCreate(email="ada@example.com", display_name="Ada", password="correct horse")
        )
        team = await TeamRepository(session).create(
            TeamCreate(name="Example", slug="retrieval-example", owner_id=ada.id)
        )
        kyra = await AgentRepository(session).create(
            AgentCreate(
                team_id=team.id,
                name="Kyra",
                slug="kyra",
                personality=AgentPersonality(
                    system_prompt_template="You are Kyra.\n{memory_context}", language="en"
                ),
            )
        )
        memories = MemoryRepository(session)
        long_ago = datetime.now(UTC) - timedelta(days=200)
        await memories.remember(
            "Ada went climbing in Fontainebleau",
            MemoryType.EPISODIC,
            team_id=team.id,
            agent_id=kyra.id,
            created_at=long_ago,
        )
        await memories.remember(
            "Ada climbs at the gym on Tuesdays",
            MemoryType.EPISODIC,
            team_id=team.id,
            agent_id=kyra.id,
        )
        for fact in ("Ada prefers tea to coffee", "Ada's sister lives in Porto"):
            await memories.remember(fact, MemoryType.SEMANTIC, team_id=team.id, agent_id=kyra.id)
        await memories.remember(
            "Ada is allergic to peanuts",
            MemoryType.USER_PROFILE,
            team_id=team.id,
            agent_id=kyra.id,
            importance=10,
            is_pinned=True,
        )

        # ranked by the agent's retrieval weights, each signal shown
        for memory in await memories.retrieve(
            "Where did Ada go climbing?", team_id=team.id, agent_id=kyra.id, limit=4
        ):
            print(f"{memory.score:.3f} {memory.content}  {memory.signals}")

        # packed into the agent's token budget, ready for its system prompt
        context = await memories.context_for(
            "Where did Ada go climbing?", team_id=team.id, agent_id=kyra.id
        )
        print(context.tokens, "tokens")
        print(kyra.personality.system_prompt_template.format(memory_context=context.text))
        await session.rollback()
    await engine.dispose()


asyncio.run(main())
