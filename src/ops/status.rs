//! `redsink status`: what each mapped stream, its groups, consumers, dead-letter stream
//! and checkpoints look like right now. Read-only; never prints a URL or secret.

use serde::Serialize;

use super::TargetError;
use crate::config::Config;
use crate::redis::inspect::{self, StreamStatus};
use crate::redis::{RedisError, connect_control};
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
}

/// Reads the state of every mapped stream from Redis and the checkpoints from Postgres.
pub async fn status(config: &Config) -> Result<Status, StatusError> {
    let mut control = connect_control(&config.redis).await?;
    let pool = write::connect(&config.postgres.with_pool_size(1)).await?;
    let checkpoints = write::checkpoints(&pool).await?;
    pool.close().await;
    let mut report = Status {
        streams: Vec::new(),
        missing: Vec::new(),
    };
    for (name, i) in super::selected_streams(config, &control, &[]).await? {
        let dlq = config.redis.dlq_stream(&name);
        match inspect::stream_status(&mut control, &name, &dlq).await? {
            Some(redis) => report.streams.push(StreamReport {
                mapping: i,
                table: config.mappings[i].table.clone(),
                checkpoints: checkpoints
                    .iter()
                    .filter(|c| c.stream == name)
                    .cloned()
                    .collect(),
                redis,
            }),
            None => report.missing.push(name),
        }
    }
    Ok(report)
}
