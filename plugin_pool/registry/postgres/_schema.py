"""The registry's schema: the shipped migrations, ``migrate`` (under an advisory lock), the version check at
open, the grants of the three roles docs/OPERATIONS.md describes, and privilege errors that say which grant
is missing.

Least privilege: ``migrate`` needs database-level CREATE only to create a schema that does not exist yet; a
role that owns its schema migrates it without it, and a role without any DDL right may run ``migrate`` (or
``migrate_on_start``) when there is nothing to apply. The application role needs only the rights in
:data:`APPLICATION_GRANTS`; a read-only role (``plugin-pool status``) those in :data:`READONLY_GRANTS`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import re
from typing import Any

import psycopg
from psycopg import sql

from plugin_pool.errors import RegistryError, RegistryPermissionError
from plugin_pool.registry.postgres._link import Endpoint, LinkSettings, connect_options

__all__ = [
    "APPLICATION_GRANTS",
    "DEFAULT_SCHEMA",
    "READONLY_GRANTS",
    "ROLE_KINDS",
    "check_schema",
    "check_schema_version",
    "grant_statements",
    "list_migrations",
    "migrate",
    "permission_error",
]

_log = logging.getLogger("plugin_pool.registry")

DEFAULT_SCHEMA = "plugin_pool"
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,47}")  # <= 48 so the channel name fits in 63 bytes
_MIGRATION_RE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
_ROLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")

APPLICATION_GRANTS: tuple[tuple[str, str], ...] = (
    ("USAGE", "SCHEMA {schema}"),
    ("SELECT", "TABLE {schema}.schema_version"),
    ("SELECT, INSERT, UPDATE", "TABLE {schema}.plugin_catalog"),
    ("SELECT, INSERT", "TABLE {schema}.plugin_versions, {schema}.plugin_capabilities, {schema}.audit_events"),
    ("SELECT, INSERT, UPDATE, DELETE", "TABLE {schema}.hosts, {schema}.plugin_instances, {schema}.plugin_acks"),
    ("SELECT, INSERT, UPDATE", "TABLE {schema}.plugin_fleet"),
    ("SELECT", "TABLE {schema}.plugins, {schema}.host_status"),
    ("USAGE", "SEQUENCE {schema}.plugin_versions_id_seq, {schema}.audit_events_id_seq"),
)
"""What a host (and an operator's ``disable``/``enable``) needs: (privileges, objects). plugin_fleet is written
by the triggers on plugin_instances, which run as the role that writes the instance."""

READONLY_GRANTS: tuple[tuple[str, str], ...] = (
    ("USAGE", "SCHEMA {schema}"),
    ("SELECT", "ALL TABLES IN SCHEMA {schema}"),
)
"""What ``plugin-pool status`` and ``registry disable --wait``'s reads need (tables and views)."""

ROLE_KINDS = ("migration", "application", "readonly")


def check_schema(schema: object) -> str:
    """Return ``schema`` if it is a usable schema name, else raise RegistryError. Pure."""
    if not isinstance(schema, str) or not _SCHEMA_RE.fullmatch(schema):
        raise RegistryError(
            f"registry schema name {schema!r:.80} is invalid: use 1-48 characters, a lowercase letter or '_' "
            f"first, then lowercase letters, digits or '_'"
        )
    return schema


def grant_statements(kind: str, role: str, schema: str = DEFAULT_SCHEMA, *, database: str = "plugins") -> list[str]:
    """The SQL that gives ``role`` what a ``kind`` role needs (``migration``, ``application``, ``readonly``).

    Pure; what docs/OPERATIONS.md lists (a test keeps them equal) and ``plugin-pool registry grants`` prints.
    Run the migration role's as a superuser (or the database owner), the others as the migration role.
    """
    check_schema(schema)
    if not _ROLE_RE.fullmatch(role):
        raise RegistryError(f"role name {role!r:.80} is invalid: use a plain PostgreSQL identifier")
    if kind == "migration":
        return [
            f"CREATE ROLE {role} LOGIN;  -- owns the schema: migrate needs no database-level CREATE",
            f"CREATE SCHEMA {schema} AUTHORIZATION {role};",
            f"GRANT CONNECT ON DATABASE {database} TO {role};",
        ]
    if kind == "application":
        grants = APPLICATION_GRANTS
    elif kind == "readonly":
        grants = READONLY_GRANTS
    else:
        raise RegistryError(f"role kind {kind!r} is unknown; expected one of {', '.join(ROLE_KINDS)}")
    out = [f"CREATE ROLE {role} LOGIN;", f"GRANT CONNECT ON DATABASE {database} TO {role};"]
    out += [f"GRANT {rights} ON {objects.format(schema=schema)} TO {role};" for rights, objects in grants]
    if kind == "readonly":  # tables a later migration adds are readable too
        out.append(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role};")
    return out


# -- privilege errors --------------------------------------------------------------------------------------

_DENIED = re.compile(r"permission denied for (schema|table|sequence|view|database|function|relation) (\S+)")
_OWNER = re.compile(r"must be owner of (?:table|relation|schema|function|sequence|view) (\S+)")


def _needed(kind: str, name: str, schema: str, role: str, doing: str) -> str:
    """The grant that fixes ``permission denied for <kind> <name>`` while ``doing``."""
    if kind == "database":
        return (
            f"GRANT CREATE ON DATABASE {name} TO {role}, or have a superuser run CREATE SCHEMA {schema} "
            f"AUTHORIZATION {role}"
        )
    if kind == "schema":
        right = "CREATE" if doing.startswith("migrate") else "USAGE"
        return f"GRANT {right} ON SCHEMA {name} TO {role}"
    if kind == "sequence":
        return f"GRANT USAGE ON SEQUENCE {schema}.{name.split('.')[-1]} TO {role}"
    if kind == "function":
        return f"GRANT EXECUTE ON FUNCTION {name} TO {role}"
    table = name.split(".")[-1]
    for rights, objects in APPLICATION_GRANTS:
        targets = [o.strip().split(".")[-1] for o in objects.removeprefix("TABLE ").split(",")]
        if objects.startswith("TABLE ") and table in targets:
            return f"GRANT {rights} ON TABLE {schema}.{table} TO {role}"
    return f"GRANT SELECT ON TABLE {schema}.{table} TO {role}"


def permission_error(exc: psycopg.Error, *, role: str, schema: str, doing: str) -> RegistryPermissionError:
    """One line for a refused privilege: which role may not do what, on which object, and the grant to run."""
    message = (exc.diag.message_primary if exc.diag is not None else None) or str(exc)
    denied = _DENIED.search(message)
    owner = _OWNER.search(message)
    if denied is not None:
        kind, name = denied.group(1), denied.group(2).strip('"')
        obj = f"{kind} {name if kind in ('schema', 'database') or '.' in name else f'{schema}.{name}'}"
        grant = _needed(kind, name, schema, role, doing)
    elif owner is not None:
        obj = owner.group(1).strip('"')
        grant = f"run `plugin-pool registry migrate` as the role that owns schema {schema} (the migration role)"
    else:
        obj = f"schema {schema}"
        grant = "see the grants in docs/OPERATIONS.md"
    return RegistryPermissionError(
        f"registry: role {role!r} may not {doing}: {message.strip()} ({obj}); fix: {grant} (docs/OPERATIONS.md)",
        role=role,
        object=obj,
        grant=grant,
    )


def _role_of(conn: psycopg.Connection[Any]) -> str:
    try:
        return str(conn.info.user)
    except psycopg.Error:
        return "?"


# -- migrations ------------------------------------------------------------------------------------------


def list_migrations() -> list[tuple[int, str, str]]:
    """Return the shipped migrations as ``(version, name, sql)``, in order. Pure; reads package data."""
    folder = importlib.resources.files("plugin_pool.registry.postgres") / "migrations"
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RegistryError(f"two registry migrations share a number: {[n for _, n, _ in found]}")
    return found


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"plugin_pool.registry.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _applied(conn: psycopg.Connection[Any], schema: str, role: str) -> set[int] | None:
    """The migrations recorded in ``schema``, or None when the schema or its version table does not exist.
    Raises RegistryPermissionError when the role may not look."""
    row = conn.execute(
        "SELECT has_schema_privilege(n.oid, 'USAGE') FROM pg_namespace n WHERE n.nspname = %s", [schema]
    ).fetchone()
    if row is None:
        return None
    if not row[0]:
        raise RegistryPermissionError(
            f"registry: role {role!r} may not use schema {schema} (no USAGE privilege); fix: GRANT USAGE ON "
            f"SCHEMA {schema} TO {role} (docs/OPERATIONS.md)",
            role=role,
            object=f"schema {schema}",
            grant=f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        )
    table = f"{schema}.schema_version"
    if conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,):
        return None
    query = sql.SQL("SELECT version FROM {}").format(sql.Identifier(schema, "schema_version"))
    return {r[0] for r in conn.execute(query)}


def migrate(
    dsn: str, schema: str = DEFAULT_SCHEMA, *, timeout_s: float = 5.0, settings: LinkSettings | None = None
) -> list[str]:
    """Bring ``schema`` up to the newest migration; return the names applied (empty when already current).

    Blocks. Safe to call twice and from several hosts at once: pending migrations run in one transaction
    holding a transaction-scoped advisory lock per schema, and each applied file is recorded in
    ``schema_version``. When nothing is pending it only reads (no lock, no DDL), so any role that may read
    the schema can run it. Raises RegistryUnavailableError (naming host and port) if the database is
    unreachable and RegistryPermissionError (one line: role, object, grant) if the role lacks a privilege.
    This is what ``plugin-pool registry migrate`` calls.
    """
    check_schema(schema)
    endpoint = Endpoint.parse(dsn)
    link = settings or LinkSettings(timeout_s=timeout_s)
    migrations = list_migrations()
    try:
        conn = psycopg.connect(dsn, autocommit=True, **connect_options(link))
    except psycopg.OperationalError as exc:
        raise endpoint.unavailable(f"cannot migrate registry schema {schema!r}", exc) from exc
    role = _role_of(conn)
    applied: list[str] = []
    try:
        with conn:
            done = _applied(conn, schema, role)
            if done is not None and all(version in done for version, _, _ in migrations):
                return []
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(schema)])
                exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
                if exists is None:  # the only step that needs CREATE on the database
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL, "
                        "applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(sql.Identifier(schema, "schema_version"))
                )
                done = _applied(conn, schema, role) or set()
                conn.execute(sql.SQL("SET LOCAL search_path TO {}, pg_catalog").format(sql.Identifier(schema)))
                for version, migration, text in migrations:
                    if version in done:
                        continue
                    conn.execute(text.encode("utf-8"), prepare=False)  # several statements, no parameters
                    conn.execute(
                        sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(
                            sql.Identifier(schema, "schema_version")
                        ),
                        [version, migration],
                    )
                    applied.append(migration)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise permission_error(exc, role=role, schema=schema, doing=f"migrate schema {schema}") from exc
    except psycopg.OperationalError as exc:
        raise endpoint.unavailable(f"migrating registry schema {schema!r} failed", exc) from exc
    except psycopg.Error as exc:
        raise RegistryError(f"migrating registry schema {schema!r} failed: {exc}") from exc
    if applied:
        _log.info("registry schema %s migrated: %s", schema, ", ".join(applied))
    return applied


def check_schema_version(dsn: str, schema: str, endpoint: Endpoint, settings: LinkSettings) -> None:
    """Raise RegistryError unless ``schema`` is migrated to this plugin_pool's newest migration (a newer schema
    is logged and accepted). Blocks up to about ``settings.timeout_s``."""
    latest = list_migrations()[-1][0]
    try:
        with psycopg.connect(dsn, autocommit=True, **connect_options(settings)) as conn:
            role = _role_of(conn)
            try:
                done = _applied(conn, schema, role)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise permission_error(exc, role=role, schema=schema, doing=f"read schema {schema}") from exc
    except psycopg.OperationalError as exc:
        raise endpoint.unavailable("cannot open the registry", exc) from exc
    current = max(done) if done else 0
    if current < latest:
        raise RegistryError(
            f"registry schema {schema!r} is at version {current}, this plugin_pool needs {latest}: "
            f"run `plugin-pool registry migrate` (or open the registry with migrate=True)"
        )
    if current > latest:
        _log.warning("registry schema %s is at version %d, newer than this plugin_pool (%d)", schema, current, latest)
