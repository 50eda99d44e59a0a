"""Opening the registry a configuration names. PostgreSQL (and psycopg) is imported only when chosen."""

from __future__ import annotations

from plugin_pool.config import RegistryConfig
from plugin_pool.errors import ConfigError
from plugin_pool.registry.base import PluginRegistry
from plugin_pool.registry.memory import InMemoryPluginRegistry

__all__ = ["open_registry"]


def open_registry(config: RegistryConfig) -> PluginRegistry:
    """The registry ``[registry]`` describes, open. Blocks to connect (PostgreSQL); the caller closes it.

    Raises ConfigError for an unknown backend or a missing DSN, RegistryUnavailableError (naming host and
    port) when PostgreSQL cannot be reached and ``offline_start`` is false.
    """
    if config.backend == "memory":
        return InMemoryPluginRegistry()
    if config.backend != "postgres":
        raise ConfigError(
            f"registry.backend = {config.backend!r} is invalid: expected 'memory' or 'postgres'", key="registry.backend"
        )
    if not config.dsn:
        raise ConfigError(
            "registry.backend = 'postgres' needs registry.dsn (or PLUGIN_POOL_REGISTRY_DSN), e.g. "
            "postgresql://user@db:5432/plugins",
            key="registry.dsn",
        )
    from plugin_pool.registry.postgres import PostgresPluginRegistry

    return PostgresPluginRegistry(
        config.dsn,
        schema=config.schema,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        timeout_s=config.timeout_s,
        buffer_limit=config.buffer_limit,
        retry_max_s=config.retry_max_s,
        migrate=config.migrate_on_start,
        offline_start=config.offline_start,
    )
