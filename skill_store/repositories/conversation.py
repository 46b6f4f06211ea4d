"""Conversations and their messages."""

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlmodel import col, select, tuple_

from skill_store.models import (
    Conversation,
    ConversationCreate,
    ConversationStatus,
    ConversationUpdate,
    Message,
    MessageCreate,
    MessageUpdate,
)
from skill_store.models.conversation import FeedbackRating
from skill_store.repositories.base import (
    TeamRowRepository,
    check_page,
    require_row,
    translated_errors,
    validate,
)


class ConversationRepository(
    TeamRowRepository[Conversation, ConversationCreate, ConversationUpdate]
):
    """Conversations; the database keeps their message counts and token totals."""

    model = Conversation
    create_model = ConversationCreate
    update_model = ConversationUpdate

    async def add_message(
        self,
        conversation_id: uuid.UUID,
        data: MessageCreate | Mapping[str, Any],
        *,
        team_id: uuid.UUID,
    ) -> Message:
        """Append a message to the team's conversation; the database updates its counters.

        Raises:
            pydantic.ValidationError: If the message is invalid.
            ConflictError: If the team has no such conversation, or the message's agent is
                not an agent of the team.
        """
        message = Message.model_validate(
            validate(MessageCreate, data),
            update={"team_id": team_id, "conversation_id": conversation_id},
        )
        async with self.writing():
            self.session.add(message)
        loaded = self.session.sync_session.identity_map.get(
            self.session.sync_session.identity_key(Conversation, (team_id, conversation_id))
        )
        if loaded is not None:
            await self.session.refresh(loaded)
        return message

    async def messages(
        self,
        conversation_id: uuid.UUID,
        *,
        team_id: uuid.UUID,
        limit: int = 50,
        before: uuid.UUID | None = None,
    ) -> Sequence[Message]:
        """A page of messages, oldest to newest: the latest `limit`, or those before a message.

        Args:
            conversation_id: The conversation.
            team_id: The conversation's team.
            limit: Page size.
            before: A message id; the page ends just before it (pass the first id of the
                previous page to go back in time).
        """
        check_page(limit)
        statement = select(Message).where(
            Message.team_id == team_id, Message.conversation_id == conversation_id
        )
        if before is not None:
            anchor = select(Message.created_at, Message.id).where(
                Message.team_id == team_id, Message.id == before
            )
            statement = statement.where(
                tuple_(col(Message.created_at), col(Message.id)) < anchor.scalar_subquery()
            )
        statement = statement.order_by(col(Message.created_at).desc(), col(Message.id).desc())
        async with translated_errors():
            page = (await self.session.exec(statement.limit(limit))).all()
        return page[::-1]

    async def set_feedback(
        self,
        message_id: uuid.UUID,
        rating: FeedbackRating | None,
        comment: str | None = None,
        *,
        team_id: uuid.UUID,
    ) -> Message:
        """Record a user's rating (`positive`/`negative`) and comment on a team's message.

        Raises:
            pydantic.ValidationError: If the rating is not one of the two.
            NotFoundError: If the team has no such message.
        """
        feedback = MessageUpdate(feedback_rating=rating, feedback_comment=comment)
        message = await require_row(self.session, Message, (team_id, message_id))
        async with self.writing():
            message.sqlmodel_update(feedback.model_dump())
        return message

    async def close(self, conversation_id: uuid.UUID, *, team_id: uuid.UUID) -> Conversation:
        """Mark the team's conversation closed.

        Raises:
            NotFoundError: If the team has no such conversation.
        """
        return await self.update(
            conversation_id, {"status": ConversationStatus.CLOSED}, team_id=team_id
        )

    async def list_for_user(
        self, user_id: uuid.UUID, *, team_id: uuid.UUID
    ) -> Sequence[Conversation]:
        """The user's conversations in the team, most recently active first."""
        statement = (
            select(Conversation)
            .where(Conversation.team_id == team_id, Conversation.user_id == user_id)
            .order_by(col(Conversation.last_message_at).desc(), col(Conversation.id))
        )
        async with translated_errors():
            return (await self.session.exec(statement)).all()
