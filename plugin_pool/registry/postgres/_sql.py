"""The registry's query text, one place: every statement is parameterized; table names are composed with
psycopg.sql.Identifier from the checked schema name. Pure (builds Composed objects, runs nothing)."""

from __future__ import annotations

from psycopg import sql

__all__ = ["EVENT_COLUMNS", "INSTANCE_COLUMNS", "PLUGIN_COLUMNS", "STATUS_COLUMNS", "build_queries", "events_query"]

PLUGIN_COLUMNS = (
    "id, name, trust_level, status, status_reason, config_json, registered_at, updated_at, enabled, enabled_seq, "
    "enabled_by, enabled_reason, n_discovered, n_loading, n_initializing, n_active, n_stopping, n_stopped, "
    "n_failed, lost_instances, failed_on, failed_reasons"
)
"""What plugin_record() reads, from the ``plugins`` view (its status is the fleet aggregate)."""

STATUS_COLUMNS = (
    "id, trust_level, status, status_reason, enabled, enabled_by, enabled_reason, updated_at, n_discovered, "
    "n_loading, n_initializing, n_active, n_stopping, n_stopped, n_failed, lost_instances, failed_on, failed_reasons"
)
"""What plugin_status() reads: the status part of a row of the ``plugins`` view (no configuration)."""

INSTANCE_COLUMNS = "i.plugin_id, i.host_id, i.version, i.state, i.reason, i.started_at, i.updated_at, h.liveness"
EVENT_COLUMNS = "id, plugin_id, event, state, actor, at, details, uid, host_id"
HOST_COLUMNS = "id, hostname, pid, started_at, heartbeat_at, heartbeat_s, lost_after_s, closed_at, liveness"

_TEMPLATES: dict[str, str] = {
    # -- the catalog ---------------------------------------------------------------------------------------
    "insert_new_plugin": """
        WITH p AS (
            INSERT INTO {catalog} (id, name, trust_level, config_json, registered_at, updated_at)
            VALUES (%(id)s, %(name)s, %(trust_level)s, %(new_config)s, now(), now())
            ON CONFLICT (id) DO NOTHING
            RETURNING id, registered_at
        ), e AS (
            INSERT INTO {events} (uid, plugin_id, host_id, event, state, actor, at, details)
            SELECT %(uid)s, id, %(host)s, 'registered', 'discovered', %(actor)s, registered_at, %(details)s FROM p
        )
        SELECT id FROM p""",
    "lock_plugin": "SELECT id, name, trust_level FROM {catalog} WHERE id = %s FOR UPDATE",
    "find_version": "SELECT id, assembly_hash FROM {versions} WHERE plugin_id = %s AND version_key = %s",
    "update_plugin": """
        UPDATE {catalog} SET name = %(name)s, trust_level = %(trust_level)s,
            config_json = COALESCE(%(config)s, config_json)
        WHERE id = %(id)s""",
    "insert_version": """
        WITH v AS (
            INSERT INTO {versions} (plugin_id, version, version_key, assembly_hash, published_at)
            VALUES (%(id)s, %(version)s, %(version_key)s, %(hash)s, now())
            ON CONFLICT (plugin_id, version_key) DO NOTHING
            RETURNING id
        )
        INSERT INTO {capabilities} (plugin_version_id, capability, parameters)
        SELECT v.id, c.key, c.value FROM v, jsonb_each(%(capabilities)s) AS c""",
    "get_plugin": f"SELECT {PLUGIN_COLUMNS} FROM {{plugins}} WHERE id = %s",
    "get_status": "SELECT status FROM {plugins} WHERE id = %s",
    "list_plugins": f"""
        SELECT {PLUGIN_COLUMNS} FROM {{plugins}}
        WHERE (%(trust_level)s::text IS NULL OR trust_level = %(trust_level)s)
          AND (%(status)s::text IS NULL OR status = %(status)s)
          AND (%(after)s::text IS NULL OR id > %(after)s)
        ORDER BY id
        LIMIT %(limit)s""",
    "list_status": f"""
        SELECT {STATUS_COLUMNS} FROM {{plugins}}
        WHERE (%(after)s::text IS NULL OR id > %(after)s)
        ORDER BY id
        LIMIT %(limit)s""",
    "plugin_exists": "SELECT 1 FROM {catalog} WHERE id = %s",
    "list_versions": """
        SELECT id, plugin_id, version, assembly_hash, published_at FROM {versions} WHERE plugin_id = %s""",
    "list_capabilities": """
        SELECT v.id, v.version, c.capability, c.parameters
        FROM {versions} v LEFT JOIN {capabilities} c ON c.plugin_version_id = v.id
        WHERE v.plugin_id = %s""",
    "schema_version": "SELECT max(version) FROM {schema_version}",
    # -- an operator's switch and its acknowledgements -----------------------------------------------------
    "set_enabled": """
        WITH u AS (
            UPDATE {catalog} SET enabled = %(enabled)s, enabled_seq = enabled_seq + 1, enabled_by = %(actor)s,
                enabled_reason = %(reason)s, enabled_at = now(), updated_at = now()
            WHERE id = %(id)s AND enabled <> %(enabled)s
            RETURNING id, enabled_seq, updated_at
        ), e AS (
            INSERT INTO {events} (uid, plugin_id, host_id, event, state, actor, at, details)
            SELECT %(uid)s, u.id, %(host)s, %(event)s, (SELECT status FROM {plugins} WHERE id = u.id), %(actor)s,
                   u.updated_at, %(details)s
            FROM u
        )
        SELECT enabled_seq,
               pg_notify(%(channel)s, jsonb_set(%(payload)s::jsonb, '{{seq}}', to_jsonb(enabled_seq))::text)
        FROM u""",
    "pending_switches": """
        SELECT p.id, p.enabled, p.enabled_seq, p.enabled_by, p.enabled_reason
        FROM {catalog} p LEFT JOIN {acks} a ON a.plugin_id = p.id AND a.host_id = %(host)s
        WHERE p.enabled_seq > COALESCE(a.seq, 0)""",
    "acknowledge": """
        WITH a AS (
            INSERT INTO {acks} AS a (plugin_id, host_id, seq, acked_at)
            SELECT %(id)s, %(host)s, %(seq)s, now() WHERE EXISTS (SELECT 1 FROM {catalog} WHERE id = %(id)s)
            ON CONFLICT (plugin_id, host_id) DO UPDATE SET seq = EXCLUDED.seq, acked_at = EXCLUDED.acked_at
            WHERE a.seq < EXCLUDED.seq
            RETURNING plugin_id
        )
        SELECT pg_notify(%(channel)s, %(payload)s) FROM a""",
    "acknowledgements": """
        SELECT p.enabled_seq, p.enabled, h.id, COALESCE(a.seq, 0) >= p.enabled_seq
        FROM {catalog} p
        LEFT JOIN {host_status} h ON h.liveness = 'live'
        LEFT JOIN {acks} a ON a.plugin_id = p.id AND a.host_id = h.id
        WHERE p.id = %s
        ORDER BY h.id""",
    # -- audit events --------------------------------------------------------------------------------------
    "insert_event": """
        INSERT INTO {events} (uid, plugin_id, host_id, event, state, actor, at, details)
        VALUES (%(uid)s, %(plugin_id)s, %(host)s, %(event)s, %(state)s, %(actor)s, %(at)s, %(details)s)
        ON CONFLICT (uid) DO NOTHING""",
    # -- this host's instances: one statement per move, stored once however often it is replayed ------------
    "write_status": """
        WITH e AS (
            INSERT INTO {events} (uid, plugin_id, host_id, event, state, actor, at, details)
            VALUES (%(uid)s, %(id)s, %(host)s, %(event)s, %(status)s, %(actor)s, %(at)s, %(details)s)
            ON CONFLICT (uid) DO NOTHING
            RETURNING at
        ), i AS (
            INSERT INTO {instances} AS i (plugin_id, host_id, version, state, reason, started_at, updated_at)
            SELECT %(id)s, %(host)s,
                   COALESCE(%(version)s, (SELECT version FROM {versions} WHERE plugin_id = %(id)s
                                          ORDER BY id DESC LIMIT 1), '0'),
                   %(status)s, %(reason)s, CASE WHEN %(status)s = 'active' THEN e.at END, e.at
            FROM e
            ON CONFLICT (plugin_id, host_id) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state,
                reason = EXCLUDED.reason, started_at = COALESCE(EXCLUDED.started_at, i.started_at),
                updated_at = EXCLUDED.updated_at
            RETURNING plugin_id
        )
        SELECT pg_notify(%(channel)s, %(payload)s) FROM i""",
    "list_instances": f"""
        SELECT {INSTANCE_COLUMNS}
        FROM {{instances}} i JOIN {{host_status}} h ON h.id = i.host_id
        WHERE (%(plugin_id)s::text IS NULL OR i.plugin_id = %(plugin_id)s)
          AND (%(host_id)s::text IS NULL OR i.host_id = %(host_id)s)
          AND (%(after_plugin)s::text IS NULL OR (i.plugin_id, i.host_id) > (%(after_plugin)s, %(after_host)s))
        ORDER BY i.plugin_id, i.host_id
        LIMIT %(limit)s""",
    "is_active": """
        SELECT EXISTS (
            SELECT 1 FROM {instances} i JOIN {host_status} h ON h.id = i.host_id
            WHERE i.plugin_id = %s AND i.state = 'active' AND h.liveness = 'live'
        )""",
    # -- hosts -----------------------------------------------------------------------------------------------
    "lock_host": """
        SELECT h.token, h.hostname, h.pid, s.liveness, extract(epoch FROM now() - h.heartbeat_at),
               h.lost_after_s
        FROM {hosts} h JOIN {host_status} s ON s.id = h.id WHERE h.id = %s FOR UPDATE OF h""",
    "forget_host_run": """
        WITH i AS (DELETE FROM {instances} WHERE host_id = %(host)s)
        DELETE FROM {acks} WHERE host_id = %(host)s""",
    "join_host": """
        INSERT INTO {hosts} AS h (id, token, hostname, pid, started_at, heartbeat_at, heartbeat_s, lost_after_s)
        VALUES (%(host)s, %(token)s, %(hostname)s, %(pid)s, now(), now(), %(heartbeat_s)s, %(lost_after_s)s)
        ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token, hostname = EXCLUDED.hostname, pid = EXCLUDED.pid,
            started_at = CASE WHEN h.token = EXCLUDED.token THEN h.started_at ELSE now() END,
            heartbeat_at = now(), heartbeat_s = EXCLUDED.heartbeat_s, lost_after_s = EXCLUDED.lost_after_s,
            closed_at = NULL""",
    "heartbeat": "UPDATE {hosts} SET heartbeat_at = now() WHERE id = %s AND token = %s AND closed_at IS NULL",
    "leave_host": """
        WITH h AS (
            UPDATE {hosts} SET closed_at = now(), heartbeat_at = now() WHERE id = %(host)s AND token = %(token)s
            RETURNING id
        )
        DELETE FROM {instances} WHERE host_id IN (SELECT id FROM h)""",
    "prune_hosts": """
        DELETE FROM {hosts}
        WHERE id <> %(host)s
          AND COALESCE(closed_at, heartbeat_at) < now() - make_interval(secs => %(retention_s)s)""",
    "list_hosts": f"SELECT {HOST_COLUMNS} FROM {{host_status}} ORDER BY id",
}


def build_queries(schema: str) -> dict[str, sql.Composed]:
    """Every query with its tables qualified by ``schema`` (already checked)."""
    tables = {
        "catalog": sql.Identifier(schema, "plugin_catalog"),
        "plugins": sql.Identifier(schema, "plugins"),
        "versions": sql.Identifier(schema, "plugin_versions"),
        "capabilities": sql.Identifier(schema, "plugin_capabilities"),
        "events": sql.Identifier(schema, "audit_events"),
        "instances": sql.Identifier(schema, "plugin_instances"),
        "hosts": sql.Identifier(schema, "hosts"),
        "host_status": sql.Identifier(schema, "host_status"),
        "acks": sql.Identifier(schema, "plugin_acks"),
        "schema_version": sql.Identifier(schema, "schema_version"),
    }
    return {key: sql.SQL(text).format(**tables) for key, text in _TEMPLATES.items()}


def events_query(schema: str, where: list[sql.Composable]) -> sql.Composed:
    """``SELECT <event columns> FROM audit_events WHERE <where> ORDER BY id LIMIT %(limit)s``."""
    return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY id LIMIT %(limit)s").format(
        sql.SQL(EVENT_COLUMNS), sql.Identifier(schema, "audit_events"), sql.SQL(" AND ").join(where)
    )
