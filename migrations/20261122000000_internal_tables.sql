-- Tables redsink owns. Never the user's target tables: those only gain the
-- `_redsink_version` column, added idempotently at start-up (see docs/ARCHITECTURE.md).
CREATE SCHEMA IF NOT EXISTS redsink;

-- Last entry ID applied per consumer group and stream, written in the same
-- transaction as the rows it covers.
CREATE TABLE IF NOT EXISTS redsink.checkpoints (
    consumer_group text        NOT NULL,
    stream         text        NOT NULL,
    last_id        text        NOT NULL,
    last_ms        bigint      NOT NULL,
    last_seq       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, stream)
);

-- The version of the newest delete seen per row, so that an older create or
-- update that arrives later cannot resurrect a deleted row.
CREATE TABLE IF NOT EXISTS redsink.tombstones (
    table_name text        NOT NULL,
    key        text        NOT NULL,
    version    bytea       NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, key)
);
