"""Opening the registry a configuration names. PostgreSQL (and psycopg) is imported only when chosen."""

from __future__ import annotations

from plugin_pool.config import HostConfig, RegistryConfig
from plugin_pool.errors import ConfigError
from plugin_pool.registry.base import PluginRegistry
from plugin_pool.registry.memory import InMemoryPluginRegistry

__all__ = ["open_registry"]


def open_registry(config: RegistryConfig, host: HostConfig | None = None) -> PluginRegistry:
    """The registry ``[registry]`` describes, open. Blocks to connect (PostgreSQL); the caller closes it.

    ``host``: the ``[host]`` section of the host that will use the registry: the registry records for
    ``host.id`` (default: the hostname plus a suffix unique to this start) and, with PostgreSQL, joins the
    fleet at once (a row in ``hosts``, a heartbeat every ``registry.heartbeat_s``). None for an operator's
    tool (the CLI's ``status`` and ``registry`` commands): it reads and switches plugins, never joins.

    Raises ConfigError for an unknown backend or a missing DSN, RegistryUnavailableError (naming host and
    port) when PostgreSQL cannot be reached and ``offline_start`` is false, RegistryPermissionError for a
    missing privilege, RegistryError when the schema is not migrated or the host id is in use.
    """
    host_id = host.id if host is not None else None
    if config.backend == "memory":
        return InMemoryPluginRegistry(host_id=host_id)
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
        host_id=host_id,
        join=host is not None,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        timeout_s=config.timeout_s,
        buffer_limit=config.buffer_limit,
        retry_max_s=config.retry_max_s,
        heartbeat_s=config.heartbeat_s,
        missed_heartbeats=config.missed_heartbeats,
        resync_s=config.resync_s,
        keepalive_s=config.keepalive_s,
        tcp_user_timeout_s=config.tcp_user_timeout_s,
        host_retention_s=config.host_retention_s,
        migrate=config.migrate_on_start,
        offline_start=config.offline_start,
    )
