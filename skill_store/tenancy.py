"""Sessions that act for one team, with the database's row-level security as the guard.

A scoped session runs each of its transactions as the `NOLOGIN` role `TEAM_ROLE` (entered with
`SET LOCAL ROLE`) and names its team in the transaction-local setting `TEAM_SETTING`. The
policies that migration 0004 puts on every team-owned table then show and accept only that
team's rows, whatever SQL the session sends: the repositories' and raw SQL alike.
"""

import uuid
from functools import cache

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy import event as sa_event
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, defer
from sqlalchemy.orm.strategy_options import _AbstractLoad
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.models import User


@cache
def without_password_hash() -> _AbstractLoad:
    """A loader option: users without their password hash (the team role may not read it).

    Made on first use, as making it configures every mapper: importing the package need not.
    """
    return defer(User.password_hash, raiseload=True)  # type: ignore[arg-type]


TEAM_ROLE = "skill_store_team"
"""The role scoped sessions act as; the connecting role must be a member (see SECURITY.md)."""

TEAM_SETTING = "skill_store.team_id"
"""The transaction-local setting that names the scoped session's team."""

_ENTER_TEAM = sa.text(
    "SELECT set_config('role', :role, true), set_config(:setting, :team_id, true)"
)


def scope_to_team(session: AsyncSession, team_id: uuid.UUID) -> AsyncSession:
    """Make every transaction of `session` act for the team `team_id` only.

    From its next transaction on, the session sees no other team's agents, conversations,
    messages, memories, tags, audit rows or members, and cannot write rows for another team
    (`AccessDeniedError`); it cannot create or delete teams, nor read password hashes. The
    scope is set again at the start of every transaction, so it survives commits; it ends
    with the session. Pooled connections return to their own role when each transaction ends.

    Args:
        session: A session that has not begun a transaction yet.
        team_id: The team to act for.

    Returns:
        The same session, e.g. `async with scope_to_team(factory(), team_id) as session:`.

    Raises:
        ValueError: If the session is already scoped, or has already begun a transaction.
    """
    team = uuid.UUID(str(team_id))
    if TEAM_SETTING in session.info:
        raise ValueError(f"the session is already scoped to team {session.info[TEAM_SETTING]}")
    if session.in_transaction():
        raise ValueError("scope a session to a team before its first statement")
    session.info[TEAM_SETTING] = team
    parameters = {"role": TEAM_ROLE, "setting": TEAM_SETTING, "team_id": str(team)}

    def enter_team(_: Session, __: SessionTransaction, connection: Connection) -> None:
        connection.execute(_ENTER_TEAM, parameters)

    sa_event.listen(session.sync_session, "after_begin", enter_team)
    sa_event.listen(session.sync_session, "do_orm_execute", _without_password_hashes)
    return session


def _without_password_hashes(state: ORMExecuteState) -> None:
    """Load users without the column the team role may not read; reading it then raises."""
    statement = state.statement
    if isinstance(statement, sa.Select) and any(
        description.get("entity") is User for description in statement.column_descriptions
    ):
        state.statement = statement.options(without_password_hash())
