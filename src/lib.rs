//! redsink keeps a read-only PostgreSQL replica in sync with Debezium change events
//! that flow through Redis Streams.
//!
//! # Layout
//!
//! Modules are named for the data flow; each step owns its types and its errors:
//!
//! ```text
//! read ─▶ decode ─▶ map ─▶ batch ─▶ write ─▶ ack
//!  I/O     pure      pure   pure      I/O      I/O
//! ```
//!
//! | module | where it sits |
//! |---|---|
//! | [`entry`] | leaf: entry IDs, the raw stream entry, the pair an ack needs, dead letters |
//! | [`table`] | leaf: table names and quoting, the `table` template grammar, declared columns |
//! | [`keyhash`] | leaf: the key hash of the producer's shards and the writer's key locks |
//! | [`config`] | leaf: TOML → plain, validated types; env overrides; secrets redacted |
//! | [`metrics`] | leaf: the Prometheus metrics and the `/healthz` `/readyz` `/metrics` server |
//! | [`redis`] | source side: connections (standalone, cluster, sentinel), routing by slot, replies, admin commands |
//! | [`read`] | step 1: consumer group, XREADGROUP (own PEL first), XAUTOCLAIM → `StreamEntry` |
//! | [`decode`] | step 2, pure: Debezium envelope + logical types → `ChangeEvent` |
//! | [`map`] | step 3, pure: table, key, version, values as Postgres text → `RowChange` |
//! | [`batch`] | step 4, pure: per-table batches coalesced by key, flushed by size/age → `Batch` |
//! | [`write`](mod@write) | step 5, sink: catalog, version-guarded apply, tombstones, checkpoint, one txn → `Committed` |
//! | [`ack`] | step 6, source side: dead letters (XADD `<stream>:dlq`), then XACK of a `Committed` |
//! | [`pipeline`] | wires the steps: the loop, retries, flush, chores, replay; transaction mode's committer |
//! | [`ops`] | the operator commands' library code: check, status, dead letters, group, consumers |
//! | [`demo`] | dev/demo tools: the generated events of `produce`, the demo and the benchmark |
//!
//! The binary's `cli/` parses arguments and prints; it calls the library, never the reverse.
//!
//! **The dependency rule** (kept true by `tests/architecture.rs`, which reads every
//! module's `crate::` paths):
//! - leaves (`entry`, `table`, `keyhash`, `config`, `metrics`) import no step;
//! - pure steps (`decode`, `map`, `batch`) import leaves and earlier pure steps only, no
//!   I/O crate and no clock;
//! - the source side (`redis`, `read`, `ack`) and the sink (`write`) never import each
//!   other, with one exception: `ack` takes `write::Committed`, the receipt that makes
//!   acknowledging safe;
//! - only `pipeline` and `ops` name more than two steps.
//!
//! # Guarantees
//!
//! - **Nothing is lost.** An entry is acknowledged only after the transaction that
//!   applied it committed ([`write::Committed`] can only be built after `COMMIT`, and
//!   [`ack::Acker::ack`] takes one). A bad entry goes to the dead-letter stream with the
//!   reason before it is acknowledged. Anything unacknowledged stays in the group's
//!   pending list and is read again: by this consumer at start-up or after an error,
//!   by any consumer once it has been idle for `claim_idle`.
//! - **The replica converges.** Each row keeps the version of the change it holds
//!   (`_redsink_version`), deletes leave a versioned tombstone, and every write is
//!   guarded by `version <` — so replays, duplicates and reordering are no-ops and a
//!   delete cannot be undone by an older event (table in [`write`](mod@write)).
//! - **Bad input is an error, never a panic**, naming stream, entry, table and column.

pub mod ack;
pub mod batch;
pub mod config;
pub mod decode;
pub mod demo;
pub mod entry;
pub mod keyhash;
pub mod map;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod read;
pub mod redis;
pub mod table;
pub mod write;
