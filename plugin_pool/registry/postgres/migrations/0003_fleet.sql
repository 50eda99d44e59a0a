-- plugin_pool registry, schema version 3: a fleet of hosts on one registry (issue 15).
--
-- A plugin's lifecycle state is per host: each host writes only its own row of plugin_instances, and
-- `plugins` becomes a view whose status is computed from the instances on live hosts when it is read, so it
-- cannot go stale (a host killed with SIGKILL stops counting once it misses its heartbeats). The table that
-- was `plugins` keeps the catalog as `plugin_catalog`. Hosts acknowledge an operator's disable/enable
-- (plugin_acks); audit events carry a client-generated uid (a replayed write is stored once) and the host
-- that recorded them. Hosts still running schema version 2 cannot write statuses any more: upgrade them all.

ALTER TABLE plugins RENAME TO plugin_catalog;
ALTER TABLE plugin_catalog DROP COLUMN status, DROP COLUMN status_reason;
ALTER TABLE plugin_catalog
    ADD COLUMN enabled_seq bigint NOT NULL DEFAULT 0 CHECK (enabled_seq >= 0),
    ADD COLUMN enabled_by text CHECK (char_length(enabled_by) BETWEEN 1 AND 200),
    ADD COLUMN enabled_reason text CHECK (char_length(enabled_reason) <= 2000),
    ADD COLUMN enabled_at timestamptz;

CREATE TABLE hosts (
    id            text COLLATE "C" PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    -- A new token per start of a host: a host restarted under a fixed id replaces its earlier run.
    token         uuid NOT NULL,
    hostname      text NOT NULL CHECK (char_length(hostname) <= 255),
    pid           integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    heartbeat_s   double precision NOT NULL CHECK (heartbeat_s > 0),
    -- heartbeat_s times [registry] missed_heartbeats: each host says when it is to be shown lost.
    lost_after_s  double precision NOT NULL CHECK (lost_after_s > 0),
    closed_at     timestamptz
);

CREATE TABLE plugin_instances (
    plugin_id   text COLLATE "C" NOT NULL REFERENCES plugin_catalog (id) ON DELETE CASCADE,
    host_id     text COLLATE "C" NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    version     text NOT NULL CHECK (char_length(version) BETWEEN 1 AND 100),
    state       text NOT NULL CHECK (
        state IN ('discovered', 'loading', 'initializing', 'active', 'stopping', 'stopped', 'failed')
    ),
    reason      text CHECK (char_length(reason) <= 2000),
    started_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plugin_id, host_id)
);
CREATE INDEX plugin_instances_host_idx ON plugin_instances (host_id, plugin_id);

CREATE TABLE plugin_acks (
    plugin_id  text COLLATE "C" NOT NULL REFERENCES plugin_catalog (id) ON DELETE CASCADE,
    host_id    text COLLATE "C" NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq > 0),
    acked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plugin_id, host_id)
);

ALTER TABLE audit_events
    ADD COLUMN uid uuid,
    ADD COLUMN host_id text COLLATE "C" CHECK (char_length(host_id) <= 64);
CREATE UNIQUE INDEX audit_events_uid_key ON audit_events (uid);
CREATE INDEX audit_events_host_idx ON audit_events (host_id, id);

-- live: open and heard from within lost_after_s; lost: open but silent; gone: closed.
CREATE VIEW host_status AS
SELECT h.*,
       CASE
           WHEN h.closed_at IS NOT NULL THEN 'gone'
           WHEN h.heartbeat_at >= now() - make_interval(secs => h.lost_after_s) THEN 'live'
           ELSE 'lost'
       END AS liveness
FROM hosts h;

-- Instances per state of each plugin, on every host, kept exact by the triggers below whatever writes or
-- deletes an instance, so reading a fleet's status costs no aggregation over instances.
CREATE TABLE plugin_fleet (
    plugin_id     text COLLATE "C" PRIMARY KEY REFERENCES plugin_catalog (id) ON DELETE CASCADE,
    discovered    integer NOT NULL DEFAULT 0,
    loading       integer NOT NULL DEFAULT 0,
    initializing  integer NOT NULL DEFAULT 0,
    active        integer NOT NULL DEFAULT 0,
    stopping      integer NOT NULL DEFAULT 0,
    stopped       integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0
) WITH (fillfactor = 50);  -- room on each page: counter updates stay HOT, the table does not bloat

CREATE FUNCTION plugin_fleet_count() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    -- +1 for the state an instance enters, -1 for the state it leaves (both on an update).
    d_new integer := CASE WHEN TG_OP = 'DELETE' THEN 0 ELSE 1 END;
    d_old integer := CASE WHEN TG_OP = 'INSERT' THEN 0 ELSE 1 END;
    s_new text := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.state END;
    s_old text := CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE OLD.state END;
    plugin text := CASE WHEN TG_OP = 'DELETE' THEN OLD.plugin_id ELSE NEW.plugin_id END;
BEGIN
    UPDATE plugin_fleet SET
        discovered = discovered + d_new * (s_new IS NOT DISTINCT FROM 'discovered')::int
                                - d_old * (s_old IS NOT DISTINCT FROM 'discovered')::int,
        loading = loading + d_new * (s_new IS NOT DISTINCT FROM 'loading')::int
                          - d_old * (s_old IS NOT DISTINCT FROM 'loading')::int,
        initializing = initializing + d_new * (s_new IS NOT DISTINCT FROM 'initializing')::int
                                    - d_old * (s_old IS NOT DISTINCT FROM 'initializing')::int,
        active = active + d_new * (s_new IS NOT DISTINCT FROM 'active')::int
                        - d_old * (s_old IS NOT DISTINCT FROM 'active')::int,
        stopping = stopping + d_new * (s_new IS NOT DISTINCT FROM 'stopping')::int
                            - d_old * (s_old IS NOT DISTINCT FROM 'stopping')::int,
        stopped = stopped + d_new * (s_new IS NOT DISTINCT FROM 'stopped')::int
                          - d_old * (s_old IS NOT DISTINCT FROM 'stopped')::int,
        failed = failed + d_new * (s_new IS NOT DISTINCT FROM 'failed')::int
                        - d_old * (s_old IS NOT DISTINCT FROM 'failed')::int
    WHERE plugin_id = plugin;
    IF NOT FOUND AND TG_OP = 'INSERT' THEN  -- the plugin's first instance anywhere
        INSERT INTO plugin_fleet (plugin_id) VALUES (plugin) ON CONFLICT (plugin_id) DO NOTHING;
        UPDATE plugin_fleet SET
            discovered = discovered + (s_new = 'discovered')::int,
            loading = loading + (s_new = 'loading')::int,
            initializing = initializing + (s_new = 'initializing')::int,
            active = active + (s_new = 'active')::int,
            stopping = stopping + (s_new = 'stopping')::int,
            stopped = stopped + (s_new = 'stopped')::int,
            failed = failed + (s_new = 'failed')::int
        WHERE plugin_id = plugin;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER plugin_instances_counted_on_insert AFTER INSERT ON plugin_instances
    FOR EACH ROW EXECUTE FUNCTION plugin_fleet_count();
CREATE TRIGGER plugin_instances_counted_on_update AFTER UPDATE OF state ON plugin_instances
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION plugin_fleet_count();
CREATE TRIGGER plugin_instances_counted_on_delete AFTER DELETE ON plugin_instances
    FOR EACH ROW EXECUTE FUNCTION plugin_fleet_count();

-- Failures are few: this index finds the hosts a plugin failed on without reading the others.
CREATE INDEX plugin_instances_failed_idx ON plugin_instances (plugin_id) WHERE state = 'failed';

-- The seed's `plugins`, with a status that is the aggregate of the instances on live hosts when it is read:
-- the first of active, failed, initializing, loading, stopping, stopped that a live instance is in
-- (plugin_pool.registry.fleet.AGGREGATE_ORDER is the same rule; a test compares them), else discovered.
-- The n_* columns count live instances per state: plugin_fleet minus the instances on hosts that are not live
-- (usually none: lost hosts until they are pruned). status_reason is, when the status is failed, the reason
-- of the live instance that failed last; failed_on and failed_reasons (the live hosts where it failed, and
-- why) are NULL when there are none.
CREATE VIEW plugins AS
WITH not_live AS MATERIALIZED (
    SELECT id, liveness FROM host_status WHERE liveness <> 'live'
), away AS (
    SELECT i.plugin_id,
           count(*) FILTER (WHERE i.state = 'discovered') AS discovered,
           count(*) FILTER (WHERE i.state = 'loading') AS loading,
           count(*) FILTER (WHERE i.state = 'initializing') AS initializing,
           count(*) FILTER (WHERE i.state = 'active') AS active,
           count(*) FILTER (WHERE i.state = 'stopping') AS stopping,
           count(*) FILTER (WHERE i.state = 'stopped') AS stopped,
           count(*) FILTER (WHERE i.state = 'failed') AS failed,
           count(*) FILTER (
               WHERE h.liveness = 'lost' AND i.state NOT IN ('discovered', 'stopped', 'failed')
           ) AS lost_instances
    FROM not_live h
    JOIN plugin_instances i ON i.host_id = h.id
    GROUP BY i.plugin_id
), failures AS MATERIALIZED (
    SELECT i.plugin_id,
           array_agg(i.host_id ORDER BY i.host_id) AS failed_on,
           array_agg(i.reason ORDER BY i.host_id) AS failed_reasons,
           (array_agg(i.reason ORDER BY i.updated_at DESC))[1] AS last_reason
    FROM plugin_instances i
    WHERE i.state = 'failed' AND i.host_id NOT IN (SELECT id FROM not_live)
    GROUP BY i.plugin_id
), counted AS (
    SELECT c.*,
           COALESCE(f.discovered, 0) - COALESCE(a.discovered, 0) AS n_discovered,
           COALESCE(f.loading, 0) - COALESCE(a.loading, 0) AS n_loading,
           COALESCE(f.initializing, 0) - COALESCE(a.initializing, 0) AS n_initializing,
           COALESCE(f.active, 0) - COALESCE(a.active, 0) AS n_active,
           COALESCE(f.stopping, 0) - COALESCE(a.stopping, 0) AS n_stopping,
           COALESCE(f.stopped, 0) - COALESCE(a.stopped, 0) AS n_stopped,
           COALESCE(f.failed, 0) - COALESCE(a.failed, 0) AS n_failed,
           COALESCE(a.lost_instances, 0) AS lost_instances,
           x.failed_on,
           x.failed_reasons,
           x.last_reason
    FROM plugin_catalog c
    LEFT JOIN plugin_fleet f ON f.plugin_id = c.id
    LEFT JOIN away a ON a.plugin_id = c.id
    LEFT JOIN failures x ON x.plugin_id = c.id
)
SELECT id, name, trust_level,
       CASE
           WHEN n_active > 0 THEN 'active'
           WHEN n_failed > 0 THEN 'failed'
           WHEN n_initializing > 0 THEN 'initializing'
           WHEN n_loading > 0 THEN 'loading'
           WHEN n_stopping > 0 THEN 'stopping'
           WHEN n_stopped > 0 THEN 'stopped'
           ELSE 'discovered'
       END AS status,
       CASE WHEN n_active = 0 AND n_failed > 0 THEN last_reason END AS status_reason,
       config_json, registered_at, updated_at,
       enabled, enabled_seq, enabled_by, enabled_reason, enabled_at,
       n_discovered, n_loading, n_initializing, n_active, n_stopping, n_stopped, n_failed,
       lost_instances, failed_on, failed_reasons
FROM counted;
