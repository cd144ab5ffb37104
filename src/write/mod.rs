//! Write: [`Batch`](crate::batch::Batch) → [`Committed`], in one Postgres transaction.
//! Input: per-table coalesced rows and the per-stream checkpoints; output: proof that
//! the transaction committed, listing what to acknowledge and what to dead-letter.
//! I/O: Postgres (a small pool). [`Catalog`] reads the target tables (and with schema
//! evolution creates or extends them); [`Writer`] writes batches (`writer.rs`, with the
//! advisory locks in `locks.rs` and the statements in `sql.rs`; `horizon.rs` collects
//! the tombstones and truncations no event can still need); this file holds the
//! errors, the receipt, the connection and the checkpoints; `migrate.rs` redsink's own
//! tables.
//! Errors: [`WriteError`], classified by [`WriteError::class`]: retry (connection,
//! serialization, deadlock), or fatal (missing table, privileges). A data error (a
//! value the column rejects) does not fail the batch: the batch is written again with
//! a savepoint per statement and per row, and only the rejected rows are dead-lettered.
//!
//! Version guard, per row (v = the event's version, r = the row's `_redsink_version`,
//! t = the row's tombstone version in `redsink.tombstones`):
//!
//! | event | row exists | outcome |
//! |---|---|---|
//! | upsert | no, no tombstone ≥ v | insert |
//! | upsert | no, tombstone ≥ v | nothing (a newer delete happened: no resurrection) |
//! | upsert | yes, r < v or r is null | update |
//! | upsert | yes, r ≥ v | nothing (older or repeated event) |
//! | delete | yes, r < v or r is null | delete; tombstone := max(t, v) |
//! | delete | yes, r ≥ v | nothing but tombstone := max(t, v) |
//! | delete | no | tombstone := max(t, v) |
//!
//! A truncate at version v deletes the rows older than v and records v in
//! `redsink.truncations`; an upsert older than its table's truncate is a no-op.

mod analyze;
pub mod binary;
mod catalog;
mod home;
mod horizon;
pub mod lease;
pub mod literal;
mod locks;
mod migrate;
mod once;
mod prepared;
mod sql;
mod staging;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::PostgresConfig;
use crate::entry::{DeadLetter, EntryId};

pub use catalog::{Catalog, VERSION_COLUMN, inspect_table};
pub use horizon::{Collected, PgClock};
pub use locks::MAX_KEY_LOCKS;
pub use migrate::{BOOKKEEPING, INTERNAL_TABLES, MIGRATOR, internal_tables_present, migrate};
pub use staging::{Progress, StagedEvent, TxFinish, TxStore, is_fenced};
pub use writer::Writer;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("postgres: {context}")]
    Postgres {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "table {table} does not exist in the replica database: create it (redsink never \
         creates target tables) or fix mapping.table"
    )]
    TableMissing { table: String },
    #[error(
        "cannot add the version column {VERSION_COLUMN} to table {table}: run ALTER TABLE \
         {table} ADD COLUMN {VERSION_COLUMN} bytea as the table owner, or let redsink's role own it"
    )]
    VersionColumn {
        table: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// Schema evolution could not create or extend a table.
    #[error("schema evolution: {0}")]
    Evolve(String),
    #[error(
        "stream name {stream:?} contains a NUL byte, which Postgres cannot store in \
         redsink.checkpoints: rename the stream or narrow the mapping's streams"
    )]
    NulInName { stream: String },
}

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: back off and try the same batch again.
    Retry,
    /// A value a column rejects: isolate the row and dead-letter it.
    Data,
    /// Needs an operator: stop with the message.
    Fatal,
}

impl WriteError {
    fn pg(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let context = context.into();
        move |source| Self::Postgres { context, source }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Postgres { source, .. } => classify(source),
            Self::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => match classify(e) {
                ErrorClass::Retry => ErrorClass::Retry,
                _ => ErrorClass::Fatal,
            },
            // Adding the version column can meet a lock timeout or a dropped connection
            // like any statement: those are retried; the rest needs an operator.
            Self::VersionColumn { source, .. } => match classify(source) {
                ErrorClass::Retry => ErrorClass::Retry,
                _ => ErrorClass::Fatal,
            },
            Self::TableMissing { .. }
            | Self::Migrate(_)
            | Self::NulInName { .. }
            | Self::Evolve(_) => ErrorClass::Fatal,
        }
    }
}

/// Retry on anything about the connection or concurrency; data classes 22 and 23 are
/// the row's fault; the rest needs an operator. The session timeouts' errors are
/// retried: 55P03 (`lock_timeout`), 57014 (`statement_timeout`), 25P03 (Postgres ended
/// a session idle in its transaction: this instance froze, its batch was rolled back),
/// 25P04 and 57P05 (`transaction_timeout`, `idle_session_timeout` set by an operator).
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorClass::Retry,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            match code.as_str() {
                "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "57P05" | "57014"
                | "25P03" | "25P04" => ErrorClass::Retry,
                c if c.starts_with("08") || c.starts_with("53") => ErrorClass::Retry,
                // 21000: two keys that differ as text but not as values (char(n)
                // padding, 1 and 1.0) in one statement; 54000: a value too large to index.
                c if c.starts_with("22") || c.starts_with("23") || c == "21000" || c == "54000" => {
                    ErrorClass::Data
                }
                _ => ErrorClass::Fatal,
            }
        }
        _ => ErrorClass::Fatal,
    }
}

/// Proof that a batch's transaction committed: the only way to acknowledge entries.
/// Built only by [`Writer::write`], after `COMMIT` returned (its fields are private to
/// this module and its children).
#[must_use = "committed entries must be acknowledged"]
#[derive(Debug)]
pub struct Committed {
    acks: Vec<(Arc<str>, EntryId)>,
    dead: Vec<DeadLetter>,
    rows: usize,
}

impl Committed {
    /// Every entry of the batch: applied, skipped and dead-lettered.
    pub fn acks(&self) -> &[(Arc<str>, EntryId)] {
        &self.acks
    }
    /// Entries to put on the dead-letter stream before acknowledging.
    pub fn dead(&self) -> &[DeadLetter] {
        &self.dead
    }
    /// Rows written (after coalescing; including version-guarded no-ops).
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// How long opening the first connection may take before it counts as unreachable
/// (sqlx sets no connect timeout: a host that drops packets would hang the start).
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// sqlx's prepared statements per connection (its default, 100, made a batch over 200
/// tables re-prepare each statement every batch). ~100 KiB of server memory each (an
/// 8-column upsert, PostgreSQL 15): ≤ ~50 MiB per connection, plus the writer's own
/// ([`prepared::PREPARED_MAX`]), and only with that many tables and row shapes in use.
const STATEMENT_CACHE: usize = 512;

/// Connects a pool of `config.pool_size` connections to `config.url`, each session
/// with [`session_settings`]. One connection is opened first, on its own: sqlx's pool
/// retries a failed connect until its acquire timeout and then reports only
/// `PoolTimedOut`, hiding the cause (refused, unknown host, no such database, bad
/// password); the error names the endpoint ([`endpoint`], never the password).
pub async fn connect(config: &PostgresConfig) -> Result<PgPool, WriteError> {
    let options = PgConnectOptions::from_str(&config.url)
        .map_err(WriteError::pg("parsing postgres.url"))?
        .application_name("redsink")
        .statement_cache_capacity(STATEMENT_CACHE)
        .options(session_settings(config));
    let context = format!("connecting to postgres at {}", endpoint(config));
    let first = tokio::time::timeout(CONNECT_WITHIN, PgConnection::connect_with(&options))
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", CONNECT_WITHIN.as_secs()),
            )))
        })
        .map_err(WriteError::pg(context.clone()))?;
    // Its only purpose was the error; the pool opens its own connections.
    let _ = first.close().await;
    PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(CONNECT_WITHIN)
        .connect_with(options)
        .await
        .map_err(WriteError::pg(context))
}

/// Where `config.url` points, for logs and errors: `host:port/database` as sqlx reads
/// the URL (a Unix socket directory as the host), never the user or password.
pub fn endpoint(config: &PostgresConfig) -> String {
    match PgConnectOptions::from_str(&config.url) {
        Ok(o) => format!(
            "{}:{}/{}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or_else(|| o.get_username())
        ),
        Err(_) => crate::config::redact_url(&config.url),
    }
}

/// Postgres' own words for a database error: its message and SQLSTATE, without the
/// ` at line N` sqlx appends (a line of the server's C source, which only misleads),
/// and without the detail (it can quote row values). `None` for any other error.
pub fn database_message(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let db: &dyn sqlx::error::DatabaseError = match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => db.as_ref(),
        Some(_) => return None,
        None => e.downcast_ref::<sqlx::postgres::PgDatabaseError>()?,
    };
    Some(match db.code() {
        Some(code) => format!("{} (SQLSTATE {code})", db.message()),
        None => db.message().to_string(),
    })
}

/// The settings of each session (sent at connection start-up, so no round trip): time
/// zone UTC (naive Debezium timestamps are UTC), and the timeouts and server-side TCP
/// keepalives that bound every wait (`[postgres]` in docs/CONFIG.md; `0` = off). sqlx
/// 0.9 has no client-side keepalive, so the server's are what notice a vanished peer.
/// Prepared statements keep one generic plan: with the values known, Postgres plans an
/// `unnest` of a few rows as cheaper than the generic plan and so re-plans the statement
/// at every execution (a batch of 5 rows in each of 200 tables: 32 ms, 14 ms with the generic plan).
pub fn session_settings(config: &PostgresConfig) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    // Keepalive settings are whole seconds; a sub-second value rounds up, not to "off".
    let keepalive = config.keepalive.as_secs() + u64::from(config.keepalive.subsec_nanos() > 0);
    vec![
        ("timezone", "UTC".into()),
        ("lock_timeout", ms(config.lock_timeout)),
        (
            "idle_in_transaction_session_timeout",
            ms(config.idle_in_transaction_session_timeout),
        ),
        ("statement_timeout", ms(config.statement_timeout)),
        ("tcp_keepalives_idle", keepalive.to_string()),
        ("tcp_keepalives_interval", keepalive.to_string()),
        (
            "tcp_keepalives_count",
            if keepalive > 0 { "3" } else { "0" }.into(),
        ),
        ("tcp_user_timeout", (keepalive * 4000).to_string()),
        ("plan_cache_mode", "force_generic_plan".into()),
    ]
}

/// A stream's checkpoint: the newest entry a group has applied (moved in the batch's
/// transaction, only ever forward).
#[derive(Debug, Clone, serde::Serialize, PartialEq, sqlx::FromRow)]
pub struct Checkpoint {
    pub consumer_group: String,
    pub stream: String,
    pub last_id: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// Every checkpoint (empty before the first migration).
pub async fn checkpoints(pool: &PgPool) -> Result<Vec<Checkpoint>, WriteError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT to_regclass('redsink.checkpoints')::oid::int8")
            .fetch_one(pool)
            .await
            .map_err(WriteError::pg("looking for redsink.checkpoints"))?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT consumer_group, stream, last_id, \
           to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS updated_at \
         FROM redsink.checkpoints ORDER BY stream, consumer_group",
    )
    .fetch_all(pool)
    .await
    .map_err(WriteError::pg("reading redsink.checkpoints"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_bound_every_wait() {
        let config = PostgresConfig {
            keepalive: Duration::from_millis(1500),
            ..Default::default()
        };
        let settings = session_settings(&config);
        let get = |k: &str| {
            settings
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("timezone"), Some("UTC"));
        assert_eq!(get("lock_timeout"), Some("10000ms"));
        assert_eq!(get("idle_in_transaction_session_timeout"), Some("10000ms"));
        assert_eq!(get("statement_timeout"), Some("300000ms"));
        assert_eq!(get("tcp_keepalives_idle"), Some("2"), "rounded up");
        assert_eq!(get("tcp_keepalives_count"), Some("3"));
        assert_eq!(get("tcp_user_timeout"), Some("8000"));
        let off = PostgresConfig {
            keepalive: Duration::ZERO,
            ..Default::default()
        };
        let settings = session_settings(&off);
        assert!(settings.contains(&("tcp_keepalives_idle", "0".into())));
        assert!(settings.contains(&("tcp_user_timeout", "0".into())));
    }
}
