"""Users: salted argon2 password hashes, case-insensitive emails."""

import uuid
from collections.abc import Mapping
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from pydantic import SecretStr
from sqlmodel import func, select

from skill_store.models import User, UserCreate, UserUpdate
from skill_store.models._types import PgStr
from skill_store.repositories.base import Repository, cannot_be_none, translated_errors, validate

_hasher = PasswordHasher()


@cache
def _unknown_user_hash() -> str:
    """Verified against when the email is unknown, so both answers take the same time."""
    return _hasher.hash("no user has this password")


def _hash(password: SecretStr) -> str:
    return _hasher.hash(password.get_secret_value())


class UserRepository(Repository[User, UserCreate, UserUpdate]):
    """Users; stores an argon2 hash of the password, never the password."""

    model = User
    create_model = UserCreate
    update_model = UserUpdate

    def build(self, data: UserCreate) -> User:
        """A user row with the password hashed."""
        return User.model_validate(data, update={"password_hash": _hash(data.password)})

    async def update(self, id: uuid.UUID, data: UserUpdate | Mapping[str, Any]) -> User:
        """Apply the fields set in `data`; a new `password` is stored as its hash."""
        validated = validate(UserUpdate, data)
        if "password" in validated.model_fields_set and validated.password is None:
            raise cannot_be_none(UserUpdate.__name__, ["password"])
        profile = validated.model_dump(exclude={"password"}, exclude_unset=True)
        user = await super().update(id, profile)
        if validated.password is not None:
            async with self.writing():
                user.password_hash = _hash(validated.password)
        return user

    async def get_by_email(self, email: PgStr) -> User | None:
        """The user with this email, compared case-insensitively.

        Both sides are lowered by PostgreSQL, as in the unique index: Python's `str.lower`
        differs for some letters (a final capital sigma).

        Raises:
            pydantic.ValidationError: If the email holds characters PostgreSQL cannot store.
        """
        statement = select(User).where(func.lower(User.email) == func.lower(email))
        async with translated_errors():
            return (await self.session.exec(statement)).first()

    async def authenticate(self, email: str, password: str) -> User | None:
        """The active user with this email and password, or None."""
        try:
            user = await self.get_by_email(email)
        except ValueError:
            user = None
        try:
            _hasher.verify(user.password_hash if user else _unknown_user_hash(), password)
        except (VerifyMismatchError, InvalidHashError):
            return None
        return user if user is not None and user.is_active else None

    async def set_password(self, user_id: uuid.UUID, password: str) -> User:
        """Store a new hash of `password` for the user.

        Raises:
            pydantic.ValidationError: If the password is shorter than 8 characters.
            NotFoundError: If there is no such user.
        """
        return await self.update(user_id, {"password": password})
