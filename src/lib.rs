//! redsink keeps a read-only PostgreSQL replica in sync with Debezium change events
//! that flow through Redis Streams.
//!
//! # Layout
//!
//! One module per step of the flow; only [`pipeline`] names more than two of them:
//!
//! ```text
//! read      Redis: consumer group, XREADGROUP (own PEL first), XAUTOCLAIM → StreamEntry
//! decode    Debezium envelope + logical types → ChangeEvent           (pure)
//! map       route to a table, key, version, values as Postgres text → RowChange (pure)
//! batch     per-table batches coalesced by key, flushed by size/age → Batch      (pure)
//! write     Postgres: catalog, version-guarded upserts/deletes, checkpoint, one txn → Committed
//! ack       dead letters (XADD <stream>:dlq), then XACK of a Committed
//! ```
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
//!   delete cannot be undone by an older event (table in [`write`]).
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
