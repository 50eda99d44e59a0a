-- plugin_pool registry, schema version 1: the seed's three tables plus the audit trail.
-- Applied by plugin_pool.registry.postgres.migrate inside one transaction, with search_path set to the
-- registry's schema (so names here are unqualified). Never edit a released file: add the next one.

CREATE TABLE plugins (
    -- COLLATE "C": ORDER BY id sorts like Python's str ordering, whatever the database's locale.
    id             text COLLATE "C" PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9_-]{0,62}$'),
    name           text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    trust_level    text NOT NULL CHECK (trust_level IN ('builtin', 'trusted', 'untrusted')),
    status         text NOT NULL CHECK (
        status IN ('discovered', 'loading', 'initializing', 'active', 'stopping', 'stopped', 'failed')
    ),
    status_reason  text CHECK (char_length(status_reason) <= 2000),
    config_json    jsonb NOT NULL CHECK (jsonb_typeof(config_json) = 'object'),
    registered_at  timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- The health queries: which plugins are Active, of which trust level.
CREATE INDEX plugins_status_idx ON plugins (status);
CREATE INDEX plugins_trust_level_idx ON plugins (trust_level);

CREATE TABLE plugin_versions (
    id             bigserial PRIMARY KEY,
    plugin_id      text COLLATE "C" NOT NULL REFERENCES plugins (id) ON DELETE CASCADE,
    version        text NOT NULL CHECK (char_length(version) BETWEEN 1 AND 100),
    -- PEP 440 equality: '1.5' and '1.5.0' are one version (packaging.utils.canonicalize_version).
    -- Ordering is PEP 440 too, which SQL cannot do on text: readers sort packaging Versions in Python.
    version_key    text NOT NULL CHECK (char_length(version_key) BETWEEN 1 AND 100),
    assembly_hash  text CHECK (char_length(assembly_hash) <= 200),
    published_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT plugin_versions_plugin_version_key UNIQUE (plugin_id, version_key)
);

CREATE TABLE plugin_capabilities (
    plugin_version_id  bigint NOT NULL REFERENCES plugin_versions (id) ON DELETE CASCADE,
    capability         text COLLATE "C" NOT NULL CHECK (capability ~ '^[a-z][a-z0-9_]{0,62}$'),
    parameters         jsonb NOT NULL CHECK (jsonb_typeof(parameters) = 'object'),
    PRIMARY KEY (plugin_version_id, capability)
);

CREATE TABLE audit_events (
    id         bigserial PRIMARY KEY,
    -- No foreign key: the host audits plugins that never registered (a bad entry, a rejected signature).
    plugin_id  text COLLATE "C" CHECK (char_length(plugin_id) <= 200),
    event      text NOT NULL CHECK (char_length(event) BETWEEN 1 AND 64),
    state      text CHECK (
        state IN ('discovered', 'loading', 'initializing', 'active', 'stopping', 'stopped', 'failed')
    ),
    actor      text NOT NULL CHECK (char_length(actor) BETWEEN 1 AND 200),
    at         timestamptz NOT NULL DEFAULT now(),
    details    jsonb NOT NULL CHECK (jsonb_typeof(details) = 'object')
);
-- list_events filters by plugin or by kind, in id order.
CREATE INDEX audit_events_plugin_idx ON audit_events (plugin_id, id);
CREATE INDEX audit_events_event_idx ON audit_events (event, id);
