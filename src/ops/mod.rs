//! The operator commands' library code (`check`, `status`, and the dead-letter, group
//! and consumer commands): what they look at and change; `cli/` only parses their
//! arguments and prints their results. Like the pipeline, ops may name several steps.
//!
//! Every command but `check` acts on the mapped streams (or those `--stream` picks):
//! [`Target`] opens the connection and chooses them.

pub mod check;
pub mod consumers;
pub mod dlq;
pub mod group;
pub mod status;

use crate::config::{Config, StreamPattern};
use crate::map::Mapping;
use crate::redis::{self, Control, RedisError};

/// Why the streams to act on cannot be chosen.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("config: --stream: {0}")]
    Pattern(String),
    #[error("config: mapping[{index}]: {reason}")]
    Mapping { index: usize, reason: String },
    #[error("config: no mapped stream matches {}", only.join(", "))]
    NoMatch { only: Vec<String> },
}

/// The connection and the streams an operator command acts on.
pub struct Target {
    pub control: Control,
    pub streams: Vec<String>,
}

impl Target {
    /// Connects and chooses the existing mapped streams; with `only` (names or
    /// patterns), just those.
    pub async fn open(config: &Config, only: &[String]) -> Result<Self, TargetError> {
        let control = redis::connect_control(&config.redis).await?;
        let streams = selected_streams(config, &control, only)
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        Ok(Self { control, streams })
    }
}

/// The existing streams of every mapping (dead-letter streams left out), with the index
/// of the first mapping that covers each; with `only` (names or patterns), just those,
/// and at least one.
pub async fn selected_streams(
    config: &Config,
    control: &Control,
    only: &[String],
) -> Result<Vec<(String, usize)>, TargetError> {
    let mut control = control.clone();
    let mut filter = Vec::new();
    for s in only {
        filter.extend(StreamPattern::parse(s).map_err(TargetError::Pattern)?);
    }
    let wanted = if filter.is_empty() {
        None
    } else {
        Some(redis::discover(&mut control, &filter).await?)
    };
    // Compiled whole (not only their streams), so that a mapping the sync would refuse
    // is refused here too.
    let mut mappings = Vec::new();
    for (index, m) in config.mappings.iter().enumerate() {
        mappings.push(
            Mapping::compile(index, m).map_err(|reason| TargetError::Mapping { index, reason })?,
        );
    }
    let patterns: Vec<&[StreamPattern]> = mappings.iter().map(|m| m.streams.as_slice()).collect();
    let mut out = redis::mapped_streams(&mut control, &patterns, &config.redis).await?;
    if let Some(wanted) = wanted {
        out.retain(|(name, _)| wanted.contains(name));
    }
    if out.is_empty() && !only.is_empty() {
        return Err(TargetError::NoMatch {
            only: only.to_vec(),
        });
    }
    Ok(out)
}
