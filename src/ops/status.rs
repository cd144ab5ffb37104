//! `redsink status`: what each mapped stream, its groups, consumers, dead-letter stream
//! and checkpoints look like right now. Read-only; never prints a URL or secret.

use serde::Serialize;

use crate::config::Config;
use crate::map::Mapping;
use crate::redis::inspect::{self, StreamStatus};

use crate::config::StreamPattern;
use crate::redis::{Control, RedisError, connect_control, discover};
use crate::write::{self, Checkpoint, WriteError};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Read(#[from] RedisError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("config: {0}")]
    Config(String),
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

/// The existing streams of every mapping (dead-letter streams left out), with the index
/// of the first mapping that covers each; with `only` (names or patterns), just those.
pub async fn mapped_streams(
    config: &Config,
    control: &Control,
    only: &[String],
) -> Result<Vec<(String, usize)>, StatusError> {
    let mut control = control.clone();
    let mut filter = Vec::new();
    for s in only {
        filter.extend(
            StreamPattern::parse(s).map_err(|e| StatusError::Config(format!("--stream: {e}")))?,
        );
    }
    let wanted = if filter.is_empty() {
        None
    } else {
        Some(discover(&mut control, &filter).await?)
    };
    let mut out: Vec<(String, usize)> = Vec::new();
    for (i, m) in config.mappings.iter().enumerate() {
        let mapping = Mapping::compile(i, m)
            .map_err(|e| StatusError::Config(format!("mapping[{i}]: {e}")))?;
        for name in discover(&mut control, &mapping.streams).await? {
            let skip = config.redis.is_dlq(&name)
                || out.iter().any(|(s, _)| *s == name)
                || wanted.as_ref().is_some_and(|w| !w.contains(&name));
            if !skip {
                out.push((name, i));
            }
        }
    }
    if out.is_empty() && !only.is_empty() {
        return Err(StatusError::Config(format!(
            "no mapped stream matches {}",
            only.join(", ")
        )));
    }
    Ok(out)
}

pub async fn status(config: &Config) -> Result<Status, StatusError> {
    let mut control = connect_control(&config.redis).await?;
    let pool = write::connect(&config.postgres.url, 1).await?;
    let checkpoints = write::checkpoints(&pool).await?;
    pool.close().await;
    let mut report = Status {
        streams: Vec::new(),
        missing: Vec::new(),
    };
    for (name, i) in mapped_streams(config, &control, &[]).await? {
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
