-- The version of the newest truncate seen per table: events older than it are no-ops.
CREATE TABLE IF NOT EXISTS redsink.truncations (
    table_name   text        PRIMARY KEY,
    version      bytea       NOT NULL,
    truncated_at timestamptz NOT NULL DEFAULT now()
);
