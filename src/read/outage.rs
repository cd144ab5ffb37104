//! A lane whose master cannot be reached (killed, failing over, paused) on a Redis
//! Cluster: only that lane waits, with its own backoff, and re-reads its own pending
//! entries when it is back (its failed read may have delivered entries whose reply was
//! lost); the lanes of the other masters go on reading. The outage is reported once
//! when it starts and once when it ends, with its length ([`LaneEvent`]), for the
//! pipeline to log and count.
//!
//! Elsewhere (one server, Sentinel) there is one lane: its errors fail the read and the
//! pipeline backs off and rewinds every stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Cursor, Reader, lane_of};
use crate::entry::EntryId;
use crate::redis::RedisError;

/// The first wait of a lane that failed; doubled after each failure, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// The start or the end of one lane's outage.
#[derive(Debug)]
pub enum LaneEvent {
    /// Reading `streams` (hash slot `slot`) failed; the lane is retried alone.
    Failed {
        slot: u16,
        streams: Vec<Arc<str>>,
        error: RedisError,
    },
    /// Reading `streams` works again, `after` the outage began.
    Recovered {
        slot: u16,
        streams: Vec<Arc<str>>,
        after: Duration,
    },
}

/// A lane that failed and has not answered since.
pub(super) struct Outage {
    since: Instant,
    delay: Duration,
}

impl Reader {
    /// Whether one lane can take `error` alone: on a cluster, a connection error or a
    /// failing-over master concerns the slot's master only. A lost group (`NOGROUP`)
    /// is left to the pipeline's rewind, which creates the groups again.
    pub(super) fn fails_alone(&self, error: &RedisError) -> bool {
        let lost_group =
            matches!(error, RedisError::Redis { source, .. } if source.code() == Some("NOGROUP"));
        self.deployment.is_cluster() && error.is_retryable() && !lost_group
    }

    /// Lane `lane`'s read failed with `error`: its streams go back to their own pending
    /// entries from the start, and the lane waits (longer after each failure in a row).
    pub(super) fn lane_failed(&mut self, lane: u16, error: RedisError) {
        self.idle.remove(&lane);
        for (s, cursor) in &mut self.streams {
            if lane_of(&self.deployment, s) == lane {
                *cursor = Cursor::Pending(EntryId::ZERO);
            }
        }
        let now = Instant::now();
        let delay = match self.outages.get_mut(&lane) {
            Some(outage) => {
                outage.delay = (outage.delay * 2).min(MAX_DELAY);
                outage.delay
            }
            None => {
                self.outages.insert(
                    lane,
                    Outage {
                        since: now,
                        delay: FIRST_DELAY,
                    },
                );
                let streams = self.lane_streams(lane);
                self.lane_events.push(LaneEvent::Failed {
                    slot: lane,
                    streams,
                    error,
                });
                FIRST_DELAY
            }
        };
        self.cooling.insert(lane, now + delay);
    }

    /// Lane `lane` answered: its outage, if it had one, is over.
    pub(super) fn lane_answered(&mut self, lane: u16) {
        if let Some(outage) = self.outages.remove(&lane) {
            let streams = self.lane_streams(lane);
            self.lane_events.push(LaneEvent::Recovered {
                slot: lane,
                streams,
                after: outage.since.elapsed(),
            });
        }
    }

    /// Whether `lane` failed and has not answered since.
    pub(super) fn in_outage(&self, lane: u16) -> bool {
        self.outages.contains_key(&lane)
    }

    /// The lanes' outages that began or ended since the last call.
    pub fn take_lane_events(&mut self) -> Vec<LaneEvent> {
        std::mem::take(&mut self.lane_events)
    }

    fn lane_streams(&self, lane: u16) -> Vec<Arc<str>> {
        self.streams
            .iter()
            .filter(|(s, _)| self.lane(s) == lane)
            .map(|(s, _)| s.clone())
            .collect()
    }
}
