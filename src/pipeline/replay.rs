//! Replay: re-applies a range of stream history with XRANGE, outside the consumer
//! group, through the same decode → map → batch → write steps. For backfills and
//! repairs; safe while the live sync runs, because every write is version-guarded.
//!
//! Nothing is acknowledged (the entries were not delivered to the group); checkpoints
//! and dead letters are recorded under `<group>:replay`, so the live group's
//! checkpoints are untouched.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Core, PipelineError, Stats};
use crate::config::Config;
use crate::config::StreamPattern;
use crate::entry::EntryId;

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// First entry ID (inclusive; `-` for the start of each stream).
    pub from: String,
    /// Last entry ID (inclusive); default: each stream's newest entry when the replay
    /// starts, so a replay ends even while producers keep writing.
    pub to: Option<String>,
    /// Only these streams (names or patterns, as in a mapping); default: every stream
    /// of the selected mappings.
    pub streams: Vec<String>,
    /// Only these mappings (indexes into `[[mapping]]`, from 0); default: all.
    pub mappings: Vec<usize>,
}

/// Where a replay is, reported after every chunk read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayProgress {
    /// Entries read so far.
    pub entries: u64,
    /// Share of the streams' ID ranges (by their millisecond part) done, 0 to 1.
    pub fraction: f64,
    /// The stream being read and the last ID read from it.
    pub stream: Arc<str>,
    pub last: EntryId,
}

/// One stream to replay: its ID range in milliseconds, for the progress.
struct Lane {
    stream: Arc<str>,
    start_ms: u64,
    end: EntryId,
}

/// Re-applies `options`' range; returns the stats (`read`, `rows_written`, …). Stops
/// early, leaving the rest unreplayed, when `shutdown` is cancelled (the stats say how
/// far it got through `progress`).
pub async fn replay(
    config: Config,
    options: &ReplayOptions,
    shutdown: &CancellationToken,
    progress: &mut (dyn FnMut(&ReplayProgress) + Send),
) -> Result<Stats, PipelineError> {
    let from = parse_bound(&options.from, "--from", false)?;
    let to = options
        .to
        .as_deref()
        .map(|t| parse_bound(t, "--to", true))
        .transpose()?;
    let replay_as = format!("{}:replay", config.redis.group);
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let Some((mut core, mut reader)) =
        Core::open(config, shutdown, Some(&replay_as), metrics).await?
    else {
        return Ok(Stats::default());
    };
    for &m in &options.mappings {
        if m >= core.mappings.len() {
            return Err(PipelineError::Config(format!(
                "--mapping {m}: the config has {} mappings (numbered from 0)",
                core.mappings.len()
            )));
        }
    }
    let lanes = lanes(&mut core, &mut reader, options, from, to).await?;
    if lanes.is_empty() {
        return Err(PipelineError::Config(
            "nothing to replay: no stream of the selected mappings matches".into(),
        ));
    }
    let total_ms: u64 = lanes
        .iter()
        .map(|l| l.end.ms.saturating_sub(l.start_ms) + 1)
        .sum();
    let mut done_ms: u64 = 0;
    let chunk = core.config.batch.max_batch.max(1);
    'lanes: for lane in &lanes {
        let end = lane.end.to_string();
        let mut start = from.to_string();
        loop {
            if shutdown.is_cancelled() {
                break 'lanes;
            }
            let read = reader.range(&lane.stream, &start, &end, chunk).await?;
            let Some(last) = read.last().map(|e| e.id) else {
                break;
            };
            let full = read.len() == chunk;
            core.process(read, shutdown).await?;
            progress(&ReplayProgress {
                entries: core.stats.read,
                fraction: fraction(
                    done_ms + last.ms.saturating_sub(lane.start_ms) + 1,
                    total_ms,
                ),
                stream: lane.stream.clone(),
                last,
            });
            if !full || last >= lane.end {
                break;
            }
            start = format!("({last}");
        }
        done_ms += lane.end.ms.saturating_sub(lane.start_ms) + 1;
    }
    core.drain(shutdown).await?;
    Ok(core.stats(&reader))
}

/// The streams to replay and the ID range of each; routes them in `core`.
async fn lanes(
    core: &mut Core,
    reader: &mut crate::read::Reader,
    options: &ReplayOptions,
    from: EntryId,
    to: Option<EntryId>,
) -> Result<Vec<Lane>, PipelineError> {
    let filter = options
        .streams
        .iter()
        .map(|s| StreamPattern::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PipelineError::Config(format!("--stream: {e}")))?
        .concat();
    let wanted = if filter.is_empty() {
        None
    } else {
        Some(reader.discover(&filter).await?)
    };
    let mut lanes = Vec::new();
    for m in &core.mappings {
        if !options.mappings.is_empty() && !options.mappings.contains(&m.index) {
            continue;
        }
        for name in reader.discover(&m.streams).await? {
            let is_dlq = core.config.redis.is_dlq(&name);
            let is_wanted = wanted.as_ref().is_none_or(|w| w.contains(&name));
            if is_dlq || !is_wanted || core.routes.contains_key(name.as_str()) {
                continue;
            }
            let Some(newest) = reader.last_entry(&name).await? else {
                continue;
            };
            let end = to.map_or(newest, |t| t.min(newest));
            let stream: Arc<str> = Arc::from(name.as_str());
            // Progress counts from the first entry there is, not from `-` (1970).
            let oldest = reader.range(&stream, "-", "+", 1).await?;
            let start_ms = oldest.first().map_or(from.ms, |e| e.id.ms.max(from.ms));
            core.routes.insert(stream.clone(), m.index);
            lanes.push(Lane {
                stream,
                start_ms,
                end,
            });
        }
    }
    Ok(lanes)
}

fn fraction(done: u64, total: u64) -> f64 {
    if total == 0 {
        return 1.0;
    }
    (done as f64 / total as f64).clamp(0.0, 1.0)
}

/// An entry ID, `ms` alone (every entry of that millisecond: `ms-0` as a start, the
/// last `ms-…` as an end), or `-` for the start.
fn parse_bound(text: &str, what: &str, end: bool) -> Result<EntryId, PipelineError> {
    let text = text.trim();
    if text == "-" || text.is_empty() {
        return Ok(EntryId::ZERO);
    }
    if text.contains('-')
        && let Some(id) = EntryId::parse(text)
    {
        return Ok(id);
    }
    text.parse::<u64>()
        .map(|ms| EntryId {
            ms,
            seq: if end { u64::MAX } else { 0 },
        })
        .map_err(|_| {
            PipelineError::Config(format!(
                "{what} {text:?} is not a stream entry ID (like 1700000000000-0, or a millisecond time, or -)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_accept_ids_milliseconds_and_dash() {
        assert_eq!(parse_bound("-", "--from", false).ok(), Some(EntryId::ZERO));
        assert_eq!(
            parse_bound("1700000000000-5", "--from", false).ok(),
            Some(EntryId {
                ms: 1_700_000_000_000,
                seq: 5
            })
        );
        assert_eq!(
            parse_bound("1700000000000", "--from", false).ok(),
            Some(EntryId {
                ms: 1_700_000_000_000,
                seq: 0
            })
        );
        assert_eq!(
            parse_bound("1700000000000", "--to", true).ok(),
            Some(EntryId {
                ms: 1_700_000_000_000,
                seq: u64::MAX
            })
        );
        let err = parse_bound("yesterday", "--from", false)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--from \"yesterday\"")));
    }

    #[test]
    fn fraction_is_bounded() {
        assert!((fraction(5, 10) - 0.5).abs() < f64::EPSILON);
        assert!((fraction(20, 10) - 1.0).abs() < f64::EPSILON);
        assert!((fraction(0, 0) - 1.0).abs() < f64::EPSILON);
    }
}
