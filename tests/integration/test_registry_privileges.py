"""Least privilege, with real roles: a migration role that owns its schema (and has no database-level CREATE)
migrates it; an application role with exactly the documented grants runs a host, and an operator's disable
with --wait; a read-only role runs ``status``; a missing privilege is one line naming the role, the object and
the grant. The roles are created for the test with unique names and dropped afterwards."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from plugin_pool import (
    CapabilityDeniedError,
    PluginBase,
    PluginHost,
    PluginInfo,
    RegistryPermissionError,
    TrustLevel,
    capability,
    load_config,
)
from plugin_pool.cli import main
from plugin_pool.registry import EventKind
from plugin_pool.registry.postgres import PostgresPluginRegistry, grant_statements, migrate

pytestmark = pytest.mark.postgres


class Echo(PluginBase):
    info = PluginInfo(id="echo", name="Echo", version="1.0.0", trust_level=TrustLevel.BUILTIN)

    @capability
    def scan(self, payload: Any) -> Any:
        return payload


@pytest.fixture
def roles(server: str, schema: str) -> Iterator[Callable[[str], tuple[str, str]]]:
    """``roles(kind)``: a new role of that kind (migration, application, readonly, bare) with its grants, as
    (name, DSN). The migration role is made first and owns ``schema``. Everything is dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    made: list[str] = []
    database = psycopg.conninfo.conninfo_to_dict(server).get("dbname") or "test"

    def as_superuser(statement: str) -> None:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(statement.encode())

    def make(kind: str) -> tuple[str, str]:
        role = f"pp_{kind}_{suffix}"
        dsn = make_conninfo(server, user=role)
        made.append(role)
        if kind == "bare":
            as_superuser(f"CREATE ROLE {role} LOGIN")
            as_superuser(f"GRANT CONNECT ON DATABASE {database} TO {role}")
            return role, dsn
        for statement in grant_statements(kind, role, schema, database=str(database)):
            if statement.startswith(("CREATE ROLE", "CREATE SCHEMA", "GRANT CONNECT")):
                as_superuser(statement)  # what a DBA does once
            else:  # the schema's owner grants on its objects
                with psycopg.connect(make_conninfo(server, user=made[0]), autocommit=True) as conn:
                    conn.execute(statement.encode())
        return role, dsn

    yield make
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        for role in reversed(made):
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--log-format", "none", *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_each_role_does_its_job_with_the_documented_grants_and_no_more(
    roles: Callable[[str], tuple[str, str]], server: str, schema: str
) -> None:
    migrator, migrator_dsn = roles("migration")
    with psycopg.connect(migrator_dsn) as conn:  # the premise: no CREATE on the database
        assert conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone() == (False,)

    assert migrate(migrator_dsn, schema)  # the schema exists (owned): no database-level CREATE needed
    assert migrate(migrator_dsn, schema) == []
    app, app_dsn = roles("application")
    reader, reader_dsn = roles("readonly")

    # The application role runs a host (migrate_on_start: nothing to apply, so no DDL right is needed).
    config = load_config(
        overrides={
            "host": {"id": "least-privilege-host"},
            "registry": {"backend": "postgres", "dsn": app_dsn, "schema": schema, "migrate_on_start": True},
        }
    )
    with PluginHost(config) as host:
        host.add_plugin(Echo())
        host.start_plugins()
        assert host.invoke("echo", "scan", 1) == 1
        with pytest.raises(CapabilityDeniedError):
            host.invoke("echo", "delete", 1)
        assert host.registry.flush(timeout_s=10)
        assert host.registry.get_stats().conflicted_writes == 0

        # An operator with the application role switches the plugin off and waits for the fleet.
        code, out, err = cli("registry", "disable", "echo", "--dsn", app_dsn, "--schema", schema, "--wait")
        assert code == 0, err
        assert "acknowledged by all 1 live hosts" in out
        # The read-only role reads the fleet.
        code, out, err = cli("status", "--dsn", reader_dsn, "--schema", schema)
        assert code == 0, err
        assert out.splitlines()[0] == "fleet: 1 live host"
        assert out.splitlines()[2].split()[:4] == ["echo", "builtin", "stopped", "NO"]
    with PostgresPluginRegistry(reader_dsn, schema=schema) as registry:
        kinds = {e.event for e in registry.list_events(plugin_id="echo")}
        assert {EventKind.ACTIVATED, EventKind.CAPABILITY_DENIED, EventKind.DISABLED, EventKind.SHUTDOWN} <= kinds

    # The read-only role may not switch plugins: one line naming the role, the object and the grant.
    code, out, err = cli("registry", "enable", "echo", "--dsn", reader_dsn, "--schema", schema)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"role '{reader}' may not set_enabled" in err
    assert f"table {schema}.plugin_catalog" in err
    assert f"GRANT SELECT, INSERT, UPDATE ON TABLE {schema}.plugin_catalog TO {reader}" in err
    # Nor may it migrate (it owns nothing), and neither may the application role change the schema.
    assert migrate(reader_dsn, schema) == []  # nothing to apply: allowed
    del migrator, app


def test_a_role_without_usage_on_the_schema_gets_one_line_naming_the_grant(
    roles: Callable[[str], tuple[str, str]], schema: str
) -> None:
    _, migrator_dsn = roles("migration")
    migrate(migrator_dsn, schema)
    bare, bare_dsn = roles("bare")

    with pytest.raises(RegistryPermissionError) as caught:
        PostgresPluginRegistry(bare_dsn, schema=schema)
    error = caught.value
    assert (error.role, error.object, error.grant) == (
        bare,
        f"schema {schema}",
        f"GRANT USAGE ON SCHEMA {schema} TO {bare}",
    )
    code, _, err = cli("status", "--dsn", bare_dsn, "--schema", schema)
    assert code == 1
    assert err == (
        f"plugin-pool: registry: role '{bare}' may not use schema {schema} (no USAGE privilege); fix: GRANT USAGE "
        f"ON SCHEMA {schema} TO {bare} (docs/OPERATIONS.md)\n"
    )


def test_a_role_that_may_not_create_the_schema_is_told_the_grant(
    roles: Callable[[str], tuple[str, str]], server: str
) -> None:
    bare, bare_dsn = roles("bare")
    missing = f"never_{uuid.uuid4().hex[:8]}"
    with pytest.raises(RegistryPermissionError) as caught:
        migrate(bare_dsn, missing)
    assert caught.value.role == bare
    assert caught.value.object.startswith("database ")
    assert f"CREATE SCHEMA {missing} AUTHORIZATION {bare}" in caught.value.grant
    assert "\n" not in str(caught.value)
