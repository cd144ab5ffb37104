//! `redsink status`: what each mapped stream, its groups, consumers, dead-letter stream
//! and checkpoints look like right now. Read-only; never prints a URL or secret.

use std::collections::HashMap;

use serde::Serialize;

use super::TargetError;
use crate::config::Config;
use crate::redis::inspect::{self, StreamStatus};
use crate::redis::{RedisError, at_once, connect_control};
use crate::write::{self, Checkpoint, WriteError};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Read(#[from] RedisError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Streams(#[from] TargetError),
}

/// One mapped stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamReport {
    /// Index of the `[[mapping]]` that covers it, and its table (or table template).
    pub mapping: usize,
    pub table: String,
    #[serde(flatten)]
    pub redis: StreamStatus,
    /// The newest entry each group has applied, from `redsink.checkpoints`.
    pub checkpoints: Vec<Checkpoint>,
}

/// Every stream of every mapping, in config order; streams that do not exist yet are
/// left out (`missing` lists them).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub streams: Vec<StreamReport>,
    pub missing: Vec<String>,
    /// Transaction mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactions: Option<TransactionsReport>,
}

/// Transaction mode: the transaction stream and the committer's progress on it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TransactionsReport {
    pub stream: String,
    /// Records in the transaction stream, and its newest.
    pub length: u64,
    pub last_entry: Option<String>,
    /// The last END the committer applied (or passed); `None` before it started.
    pub applied_through: Option<String>,
    /// Records of the transaction stream after it (BEGIN and END; about two per
    /// transaction): how far the committer is behind.
    pub behind: u64,
    /// Source transactions applied so far.
    pub applied: i64,
    /// Transactions with events staged, not yet applied; their events; how long the
    /// oldest staged event has waited.
    pub open: i64,
    pub open_events: i64,
    pub oldest_open_s: f64,
    /// A transaction larger than `max_events` being applied in pieces: its ID and the
    /// events applied so far.
    pub in_pieces: Option<(String, i64)>,
    /// The instance that commits (the consumer name holding the lease) and the
    /// seconds until its lease runs out (negative: ran out; another takes it over).
    pub committer: Option<(String, f64)>,
}

/// Reads the state of every mapped stream from Redis and the checkpoints from Postgres.
pub async fn status(config: &Config) -> Result<Status, StatusError> {
    let mut control = connect_control(&config.redis).await?;
    let pool = write::connect(&config.postgres.with_pool_size(1)).await?;
    let checkpoints = write::checkpoints(&pool).await?;
    let transactions = match &config.transactions {
        Some(t) => Some(transactions(config, &t.stream, &pool, &mut control).await?),
        None => None,
    };
    pool.close().await;
    let mut report = Status {
        streams: Vec::new(),
        missing: Vec::new(),
        transactions,
    };
    let mut by_stream: HashMap<String, Vec<Checkpoint>> = HashMap::new();
    for c in checkpoints {
        by_stream.entry(c.stream.clone()).or_default().push(c);
    }
    // Many streams at once: one after the other, 1,600 streams took 1.7 s.
    let reads: Vec<_> = super::selected_streams(config, &control, &[])
        .await?
        .into_iter()
        .map(|(name, i)| {
            let mut control = control.clone();
            let dlq = config.redis.dlq_stream(&name);
            async move {
                let redis = inspect::stream_status(&mut control, &name, &dlq).await;
                (name, i, redis)
            }
        })
        .collect();
    for (name, i, redis) in at_once(reads).await {
        match redis? {
            Some(redis) => report.streams.push(StreamReport {
                mapping: i,
                table: config.mappings[i].table.clone(),
                checkpoints: by_stream.remove(&name).unwrap_or_default(),
                redis,
            }),
            None => report.missing.push(name),
        }
    }
    Ok(report)
}

/// The committer's progress on the transaction stream `stream`.
async fn transactions(
    config: &Config,
    stream: &str,
    pool: &sqlx::PgPool,
    control: &mut crate::redis::Control,
) -> Result<TransactionsReport, StatusError> {
    let store = write::TxStore::new(pool.clone(), &config.redis.group);
    let progress = store.read_progress(stream).await?;
    let (open, open_events, oldest_open_s) = store.open().await?;
    let committer = write::lease::leader(pool, &config.redis.group, stream)
        .await?
        .map(|l| (l.consumer, l.expires_in));
    let length = inspect::length(control, stream).await?;
    let last_entry = inspect::last_entry(control, stream).await?;
    let behind = match (&progress, last_entry) {
        (Some(p), Some(last)) if last > p.end_id => {
            let after = crate::entry::EntryId {
                ms: p.end_id.ms,
                seq: p.end_id.seq.saturating_add(1),
            };
            inspect::count_range(control, stream, after, last).await?
        }
        (None, Some(_)) => length,
        _ => 0,
    };
    Ok(TransactionsReport {
        stream: stream.to_string(),
        length,
        last_entry: last_entry.map(|id| id.to_string()),
        applied_through: progress.as_ref().map(|p| p.end_id.to_string()),
        behind,
        applied: progress.as_ref().map_or(0, |p| p.applied),
        open,
        open_events,
        oldest_open_s,
        in_pieces: progress.and_then(|p| p.piece),
        committer,
    })
}
