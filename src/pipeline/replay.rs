//! Replay: re-applies a range of stream history with XRANGE, outside the consumer
//! group, through the same decode → map → batch → write steps. For backfills and
//! repairs; safe while the live sync runs, because every write is version-guarded.
//!
//! Nothing is acknowledged (the entries were not delivered to the group); checkpoints
//! and dead letters are recorded under `<group>:replay`, so the live group's
//! checkpoints are untouched.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::events::{Endpoints, Events};
use super::{Core, PipelineError, Stats};
use crate::config::{Config, StreamPattern};
use crate::entry::EntryId;
use crate::metrics::Metrics;
use crate::read::Reader;
use crate::redis::{RedisError, discover, inspect, mapped_streams};

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
    /// Entries in the range to replay, counted when the replay starts (XLEN for a
    /// whole stream, else a count of the range); each stream's count is corrected to
    /// what was read once it is done (entries trimmed meanwhile), so the last report
    /// says `entries == total`.
    pub total: u64,
    /// Share of the entries done, 0 to 1: never falls, 1 at the end.
    pub fraction: f64,
    /// The stream being read and the last ID read from it.
    pub stream: Arc<str>,
    pub last: EntryId,
}

/// One stream's range of entries to replay, from `--from` to `end`.
struct Span {
    stream: Arc<str>,
    end: EntryId,
    /// The entries from `--from` to `end` when the replay started.
    entries: u64,
}

/// The progress arithmetic: entries done out of the entries counted, by span.
#[derive(Debug, Clone, Copy)]
struct Tally {
    /// Entries in all spans: counted at the start, each done span's corrected to what
    /// was read of it.
    total: u64,
    /// Entries read in the spans done.
    done: u64,
}

impl Tally {
    fn new(spans: &[Span]) -> Self {
        Self {
            total: spans.iter().map(|s| s.entries).sum(),
            done: 0,
        }
    }

    /// The share done with `read` entries read so far of the span counted `counted`.
    fn fraction(&self, read: u64, counted: u64) -> f64 {
        fraction(self.done + read.min(counted), self.total)
    }

    /// A span counted `counted` is done after `read` entries: from now on it weighs
    /// what it held (fewer when entries were trimmed while it was replayed).
    fn span_done(&mut self, read: u64, counted: u64) {
        self.total = self.total - counted + read.min(counted);
        self.done += read.min(counted);
    }
}

/// A replay under way: the pipeline's steps and a reader outside the group.
struct Replay {
    core: Core,
    reader: Reader,
    /// The first entry ID to replay.
    from: EntryId,
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
    let replay_as = config.redis.replay_group();
    let events = Arc::new(Events::new(
        Arc::new(Metrics::new()),
        Endpoints::of(&config),
    ));
    let Some((core, reader)) = Core::open(config, shutdown, Some(&replay_as), events).await? else {
        return Ok(Stats::default());
    };
    let mut replay = Replay { core, reader, from };
    replay.check_mappings(&options.mappings)?;
    let spans = replay.spans(options, to).await?;
    if spans.is_empty() {
        return Err(PipelineError::Config(
            "nothing to replay: no stream of the selected mappings matches".into(),
        ));
    }
    let mut tally = Tally::new(&spans);
    for span in &spans {
        if !replay.span(span, &mut tally, shutdown, progress).await? {
            break;
        }
    }
    replay.core.drain(shutdown).await?;
    Ok(replay.core.stats(&replay.reader))
}

impl Replay {
    /// Every `--mapping` names a mapping of the config.
    fn check_mappings(&self, selected: &[usize]) -> Result<(), PipelineError> {
        let count = self.core.mappings.len();
        match selected.iter().find(|&&m| m >= count) {
            Some(m) => Err(PipelineError::Config(format!(
                "--mapping {m}: the config has {count} mappings (numbered from 0)"
            ))),
            None => Ok(()),
        }
    }

    /// The streams to replay and the ID range of each; routes them in `core` (a stream
    /// that two selected mappings name to the first).
    async fn spans(
        &mut self,
        options: &ReplayOptions,
        to: Option<EntryId>,
    ) -> Result<Vec<Span>, PipelineError> {
        let wanted = self.wanted(&options.streams).await?;
        // An unselected mapping names no stream, so a stream goes to a selected one.
        let patterns: Vec<&[StreamPattern]> = self
            .core
            .mappings
            .iter()
            .map(|m| {
                let selected = options.mappings.is_empty() || options.mappings.contains(&m.index);
                if selected { m.streams.as_slice() } else { &[] }
            })
            .collect();
        let redis = &self.core.config.redis;
        let found = mapped_streams(self.reader.control(), &patterns, redis).await?;
        let mut spans = Vec::new();
        for (name, index) in found {
            if wanted.as_ref().is_some_and(|w| !w.contains(&name)) {
                continue;
            }
            if let Some(span) = self.span_of(&name, to).await? {
                self.core.routes.insert(span.stream.clone(), index);
                spans.push(span);
            }
        }
        Ok(spans)
    }

    /// The streams `--stream` names, if it was given.
    async fn wanted(&mut self, streams: &[String]) -> Result<Option<Vec<String>>, PipelineError> {
        let filter = streams
            .iter()
            .map(|s| StreamPattern::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PipelineError::Config(format!("--stream: {e}")))?
            .concat();
        if filter.is_empty() {
            return Ok(None);
        }
        Ok(Some(discover(self.reader.control(), &filter).await?))
    }

    /// The range of `name` to replay: from `--from` to `to` or its newest entry;
    /// `None` for an empty stream.
    async fn span_of(
        &mut self,
        name: &str,
        to: Option<EntryId>,
    ) -> Result<Option<Span>, RedisError> {
        let Some(newest) = self.reader.last_entry(name).await? else {
            return Ok(None);
        };
        let end = to.map_or(newest, |t| t.min(newest));
        let stream: Arc<str> = Arc::from(name);
        let oldest = self.reader.range(&stream, "-", "+", 1).await?;
        let whole = oldest.first().is_some_and(|e| self.from <= e.id) && end == newest;
        // XLEN is O(1); a part of the stream has to be counted (see `count_range`).
        let control = self.reader.control();
        let entries = if whole {
            inspect::length(control, name).await?
        } else if self.from <= end {
            inspect::count_range(control, name, self.from, end).await?
        } else {
            0
        };
        Ok(Some(Span {
            stream,
            end,
            entries,
        }))
    }

    /// Replays one span chunk by chunk, reporting progress after each (`tally` has the
    /// spans before it). `false` when shutdown stopped it.
    async fn span(
        &mut self,
        span: &Span,
        tally: &mut Tally,
        shutdown: &CancellationToken,
        progress: &mut (dyn FnMut(&ReplayProgress) + Send),
    ) -> Result<bool, PipelineError> {
        // A chunk is a batch: at most 1024 entries for a replay (`open.rs`).
        let chunk = self.core.batcher.max_batch();
        let end = span.end.to_string();
        let mut start = self.from.to_string();
        let mut read_here: u64 = 0;
        loop {
            if shutdown.is_cancelled() {
                return Ok(false);
            }
            let read = self.reader.range(&span.stream, &start, &end, chunk).await?;
            let Some(last) = read.last().map(|e| e.id) else {
                tally.span_done(read_here, span.entries);
                return Ok(true);
            };
            let full = read.len() == chunk;
            read_here += read.len() as u64;
            self.core.process(read, shutdown).await?;
            let done = !full || last >= span.end;
            if done {
                tally.span_done(read_here, span.entries);
            }
            progress(&ReplayProgress {
                entries: self.core.events.stats().read,
                total: tally.total,
                fraction: if done {
                    tally.fraction(0, 0)
                } else {
                    tally.fraction(read_here, span.entries)
                },
                stream: span.stream.clone(),
                last,
            });
            if done {
                return Ok(true);
            }
            start = format!("({last}");
        }
    }
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

    fn span(entries: u64) -> Span {
        Span {
            stream: Arc::from("s"),
            end: EntryId::ZERO,
            entries,
        }
    }

    #[test]
    fn the_tally_rises_to_one_when_a_span_held_fewer_than_counted() {
        let mut tally = Tally::new(&[span(100), span(300)]);
        assert!((tally.fraction(50, 100) - 0.125).abs() < 1e-9);
        // More read than counted (entries added meanwhile) is capped at the count.
        assert!((tally.fraction(150, 100) - 0.25).abs() < 1e-9);
        // The first span held 80 (20 trimmed while it was replayed): 80 of 380 done.
        tally.span_done(80, 100);
        assert_eq!(tally.total, 380);
        assert!((tally.fraction(0, 300) - 80.0 / 380.0).abs() < 1e-9);
        assert!((tally.fraction(300, 300) - 1.0).abs() < 1e-9);
        tally.span_done(300, 300);
        assert!((tally.fraction(0, 0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn fraction_is_bounded() {
        assert!((fraction(5, 10) - 0.5).abs() < f64::EPSILON);
        assert!((fraction(20, 10) - 1.0).abs() < f64::EPSILON);
        assert!((fraction(0, 0) - 1.0).abs() < f64::EPSILON);
    }
}
