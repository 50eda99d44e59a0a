"""The PostgreSQL registry: the seed's ``PostgresPluginRegistry``, shared by every host that uses one database.

The only package of plugin_pool that imports psycopg (setup.cfg checks it). Import it explicitly::

    from plugin_pool.registry.postgres import PostgresPluginRegistry, migrate

    migrate(dsn)                                   # or: plugin-pool registry migrate
    with PostgresPluginRegistry(dsn, host_id="scanner-2", join=True) as registry:
        host = PluginHost(config, registry=registry)

Inside (docs/ARCHITECTURE.md): ``_registry`` (the class: open/close, thin reads and writes), ``_schema``
(migrations, advisory lock, version check, grants, privilege errors), ``_sql`` (query text), ``_rows`` (rows to
records), ``_link`` (endpoint, keepalive, query deadlines), ``_listener`` (LISTEN/NOTIFY, heartbeat round trip,
re-sync), ``_outbox`` (bounded buffer, background writer, idempotent replay, counters), ``_hosts`` (host
identity and its row), ``migrations/*.sql``.
"""

from plugin_pool.errors import RegistryPermissionError, RegistryUnavailableError
from plugin_pool.registry.postgres._registry import PostgresPluginRegistry
from plugin_pool.registry.postgres._schema import (
    APPLICATION_GRANTS,
    DEFAULT_SCHEMA,
    READONLY_GRANTS,
    ROLE_KINDS,
    check_schema,
    grant_statements,
    list_migrations,
    migrate,
)

_check_schema = check_schema  # the name the module had before it became a package (tests/unit/test_anchors.py)

__all__ = [
    "APPLICATION_GRANTS",
    "DEFAULT_SCHEMA",
    "READONLY_GRANTS",
    "ROLE_KINDS",
    "PostgresPluginRegistry",
    "RegistryPermissionError",
    "RegistryUnavailableError",
    "check_schema",
    "grant_statements",
    "list_migrations",
    "migrate",
]
