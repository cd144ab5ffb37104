-- The collection of tombstones below a table's horizon walks this index from the
-- oldest version, a bounded number at a time (src/write/horizon.rs).
CREATE INDEX IF NOT EXISTS tombstones_by_version ON redsink.tombstones (table_name, version);
