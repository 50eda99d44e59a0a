-- plugin_pool registry, schema version 2: an operator's switch per plugin, shared by every host.
-- `plugin-pool registry disable ID` sets enabled = false (audited, NOTIFYed): hosts stop the plugin and
-- refuse to start it until `plugin-pool registry enable ID`. Existing plugins stay enabled.

ALTER TABLE plugins ADD COLUMN enabled boolean NOT NULL DEFAULT true;
