"""Teams and their memberships."""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import selectinload
from sqlmodel import SQLModel, col, func, select

from skill_store.errors import ConflictError, NotFoundError
from skill_store.models import (
    Agent,
    Memory,
    Team,
    TeamCreate,
    TeamMembership,
    TeamMembershipCreate,
    TeamUpdate,
    UserRole,
)
from skill_store.models._types import PgStr
from skill_store.repositories.base import Repository, translated_errors, validate
from skill_store.tenancy import without_password_hash


@dataclass(frozen=True)
class TeamCounts:
    """A team and the size of its world."""

    team: Team
    members: int
    agents: int
    memories: int


class TeamRepository(Repository[Team, TeamCreate, TeamUpdate]):
    """Teams; creating one makes its owner a member with the role `owner`.

    A team is a row of this repository, named by its id as every `Repository` names its
    rows (`get_by_id(id)`, `update(id, data)`). Its memberships are rows of the team, and
    the methods on them name the team by keyword, as `TeamRowRepository` does:
    `add_member(user_id, team_id=...)`, `members(team_id=...)`.
    """

    model = Team
    create_model = TeamCreate
    update_model = TeamUpdate

    async def create(self, data: TeamCreate | Mapping[str, Any]) -> Team:
        """Insert the team and its owner's membership, together or not at all."""
        team = self.build(validate(TeamCreate, data))
        owner = TeamMembership(user_id=team.owner_id, team_id=team.id, role=UserRole.OWNER)
        async with self.writing():
            self.session.add(team)
            await self.session.flush()
            self.session.add(owner)
        return team

    async def get_by_slug(self, slug: PgStr) -> Team | None:
        """The team with this slug, or None."""
        async with translated_errors():
            statement = select(Team).where(Team.slug == slug)
            return (await self.session.exec(statement)).first()

    async def get_by_slug_or_raise(self, slug: PgStr) -> Team:
        """The team with this slug.

        Raises:
            NotFoundError: If there is none.
        """
        team = await self.get_by_slug(slug)
        if team is None:
            raise NotFoundError("team", repr(slug))
        return team

    async def with_counts(self) -> Sequence[TeamCounts]:
        """Every team with its numbers of members, agents and memories, by slug."""

        def count(model: type[SQLModel]) -> Any:
            team_id = sa.inspect(model).columns["team_id"]
            return select(func.count()).where(team_id == Team.id).scalar_subquery()

        statement = select(Team, count(TeamMembership), count(Agent), count(Memory)).order_by(
            col(Team.slug)
        )
        async with translated_errors():
            rows = (await self.session.exec(statement)).all()
        return [TeamCounts(*row) for row in rows]

    async def add_member(
        self, user_id: uuid.UUID, *, team_id: uuid.UUID, role: UserRole = UserRole.MEMBER
    ) -> TeamMembership:
        """Make the user a member of the team, with `role`.

        Raises:
            ConflictError: If they already are, or the team or user does not exist.
        """
        membership = TeamMembership.model_validate(
            TeamMembershipCreate(team_id=team_id, user_id=user_id, role=role)
        )
        async with self.writing():
            self.session.add(membership)
        return membership

    async def _membership(self, team_id: uuid.UUID, user_id: uuid.UUID) -> TeamMembership:
        statement = select(TeamMembership).where(
            TeamMembership.team_id == team_id, TeamMembership.user_id == user_id
        )
        async with translated_errors():
            membership = (await self.session.exec(statement)).first()
        if membership is None:
            raise NotFoundError("membership", f"of user {user_id} in team {team_id}")
        return membership

    async def set_role(
        self, user_id: uuid.UUID, role: UserRole, *, team_id: uuid.UUID
    ) -> TeamMembership:
        """Change a member's role.

        Raises:
            NotFoundError: If the user is not a member of the team.
        """
        membership = await self._membership(team_id, user_id)
        async with self.writing():
            membership.role = UserRole(role)
        return membership

    async def remove_member(self, user_id: uuid.UUID, *, team_id: uuid.UUID) -> bool:
        """Remove the user from the team.

        Returns:
            Whether they were a member.

        Raises:
            ConflictError: If the user owns the team.
        """
        team = await self.get_or_raise(team_id)
        if team.owner_id == user_id:
            raise ConflictError(f"user {user_id} owns team {team.slug} and cannot leave it")
        try:
            membership = await self._membership(team_id, user_id)
        except NotFoundError:
            return False
        async with self.writing():
            await self.session.delete(membership)
        return True

    async def members(self, *, team_id: uuid.UUID) -> Sequence[TeamMembership]:
        """The team's memberships, oldest first, each with its `user` (no password hash)."""
        users = selectinload(TeamMembership.user)  # type: ignore[arg-type]
        statement = (
            select(TeamMembership)
            .where(TeamMembership.team_id == team_id)
            .options(users.options(without_password_hash()))
            .order_by(col(TeamMembership.created_at), col(TeamMembership.id))
        )
        async with translated_errors():
            return (await self.session.exec(statement)).all()

    async def teams_for_user(self, user_id: uuid.UUID) -> Sequence[Team]:
        """The teams the user is a member of, by name."""
        statement = (
            select(Team)
            .join(TeamMembership, col(TeamMembership.team_id) == col(Team.id))
            .where(TeamMembership.user_id == user_id)
            .order_by(col(Team.name))
        )
        async with translated_errors():
            return (await self.session.exec(statement)).all()
