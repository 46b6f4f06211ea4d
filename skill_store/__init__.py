"""skill_store: users, teams, agents, conversations and long-term memory on PostgreSQL + pgvector.

Each entity is one SQLModel class that is both the table and the validated schema,
with `*Create`, `*Read` and `*Update` variants beside it.
"""

from skill_store.database import (
    ConnectionCheck,
    check_connection,
    database_url,
    get_engine,
    get_session_factory,
    get_sync_engine,
    migrate,
)
from skill_store.embedder_migration import (
    EmbeddingMigrationProgress,
    EmbeddingMigrationReport,
    abandon_embedding_migration,
    migrate_embeddings,
)
from skill_store.embeddings import Embedder, HashingEmbedder, OpenAIEmbedder, embedder_from_settings
from skill_store.errors import (
    AccessDeniedError,
    ConflictError,
    ConnectionLostError,
    DatabaseUnreachableError,
    EmbeddingDimensionError,
    EmbeddingMigrationError,
    EmbeddingModelError,
    EmbeddingServiceError,
    MemoryFileError,
    MigrationRefusedError,
    NotFoundError,
    SchemaNotMigratedError,
    SkillStoreError,
    StatementTimeoutError,
)
from skill_store.explore import Explorer, frame_columns, to_frame
from skill_store.maintenance import MaintenanceReport, maintain
from skill_store.models import *  # noqa: F403 (every model is public: skill_store.models.__all__)
from skill_store.models import __all__ as _model_names
from skill_store.repositories import (
    AgentRepository,
    ConversationRepository,
    MemoryRepository,
    Repository,
    StatsRepository,
    TeamRepository,
    TeamRowRepository,
    TokenCounter,
    UserRepository,
    approximate_tokens,
)
from skill_store.schema import alembic_include_object
from skill_store.settings import Settings, get_settings, load_settings
from skill_store.team_indexes import TeamIndexes, finish_index_builds, index_large_teams
from skill_store.tenancy import TEAM_ROLE, scope_to_team

__all__ = [
    "TEAM_ROLE",
    "AccessDeniedError",
    "AgentRepository",
    "ConflictError",
    "ConnectionCheck",
    "ConnectionLostError",
    "ConversationRepository",
    "DatabaseUnreachableError",
    "Embedder",
    "EmbeddingDimensionError",
    "EmbeddingMigrationError",
    "EmbeddingMigrationProgress",
    "EmbeddingMigrationReport",
    "EmbeddingModelError",
    "EmbeddingServiceError",
    "Explorer",
    "HashingEmbedder",
    "MemoryFileError",
    "MaintenanceReport",
    "MemoryRepository",
    "MigrationRefusedError",
    "NotFoundError",
    "OpenAIEmbedder",
    "Repository",
    "SchemaNotMigratedError",
    "Settings",
    "SkillStoreError",
    "StatementTimeoutError",
    "StatsRepository",
    "TeamIndexes",
    "TeamRepository",
    "TeamRowRepository",
    "TokenCounter",
    "UserRepository",
    "abandon_embedding_migration",
    "alembic_include_object",
    "approximate_tokens",
    "check_connection",
    "database_url",
    "embedder_from_settings",
    "finish_index_builds",
    "frame_columns",
    "get_engine",
    "get_session_factory",
    "get_settings",
    "get_sync_engine",
    "index_large_teams",
    "load_settings",
    "maintain",
    "migrate",
    "migrate_embeddings",
    "scope_to_team",
    "to_frame",
    *(name for name in _model_names if name != "metadata"),
]
