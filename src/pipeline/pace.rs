//! Adaptive batching: when a batch is written, and how long a read may wait.
//!
//! One write is kept in flight whenever there is work (group commit): a batch is
//! written as soon as the sync has caught up (the last read filled its COUNT on no
//! stream) and no write is in flight; while one is, the next batch fills with what
//! arrives meanwhile and is written when that write ends. What the loop has read ahead
//! joins a caught-up batch before it is written (`run_loop`). A trickle is therefore
//! written at once, and under a backlog batches fill up to `max_batch`. `max_batch` and
//! `max_delay` are ceilings, never waits a user has to tune.
//!
//! `batch.linger` (zero by default) makes a caught-up batch wait that long for more
//! entries first, for users who prefer fewer commits to lower latency.
//!
//! While a batch waits, reads do not block: Redis checks blocking timeouts in its cron
//! (`hz`, every 100 ms by default), so even `BLOCK 1` can take tens of milliseconds.

use std::time::{Duration, Instant};

use super::Core;
use crate::entry::StreamEntry;

/// A write in flight for longer than this is slow (an outage being retried): the batch
/// then fills until its deadline, and reads block again instead of polling.
const SLOW_WRITE: Duration = Duration::from_secs(1);
/// How often a caught-up loop looks whether the write in flight has ended.
const WRITE_POLL: Duration = Duration::from_millis(1);

/// Whether a read of `count` entries per stream left more waiting: some stream gave
/// its full COUNT.
pub(super) fn is_backlog(entries: &[StreamEntry], count: usize) -> bool {
    crate::entry::count_by_stream(entries)
        .iter()
        .any(|(_, n)| *n >= count)
}

impl Core {
    /// A batch in flight that has not ended yet (written and acknowledged), and since
    /// when. A flush waits only for the last batch's write, but pacing waits for its
    /// acknowledgement too: flushing as soon as the write ends made batches smaller
    /// under a steady load near the maximum rate, and latency worse.
    fn writing(&self) -> Option<Instant> {
        let running = self.in_flight.as_ref().is_some_and(|f| !f.is_finished());
        if running { self.in_flight_since } else { None }
    }

    /// When the batch has lingered (`batch.linger` after its oldest entry).
    fn lingered_at(&self) -> Option<Instant> {
        self.batcher.oldest().map(|t| t + self.config.batch.linger)
    }

    /// The batch has entries and has lingered, the last read found no backlog, and no
    /// write is in flight: write it now rather than at its deadline.
    pub(super) fn caught_up(&self) -> bool {
        !self.batcher.is_empty()
            && !self.backlog
            && self.writing().is_none()
            && self.lingered_at().is_some_and(|t| Instant::now() >= t)
    }

    /// Caught up, with a batch waiting for the write in flight: wait for that write to
    /// end (at most until the batch's deadline, and not for a slow write), so the next
    /// one starts at once. Reading meanwhile would only poll Redis.
    pub(super) async fn await_write_while_caught_up(&self) {
        if self.batcher.is_empty()
            || self.backlog
            || self.lingered_at().is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        let Some(deadline) = self.batcher.deadline() else {
            return;
        };
        while let Some(since) = self.writing() {
            if since.elapsed() > SLOW_WRITE || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(WRITE_POLL).await;
        }
    }

    /// How long the next read may block: zero (no `BLOCK`: only what is there) while a
    /// batch waits to be written (`entries` about to join it, or the batch has some);
    /// until the batch's deadline while a slow write holds it; else `redis.block`.
    pub(super) fn read_wait(&self, entries: bool) -> Duration {
        let until_deadline = self.batcher.deadline().map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        if !entries && self.batcher.is_empty() {
            return until_deadline.unwrap_or(self.config.redis.block);
        }
        if let Some(lingered) = self.lingered_at().filter(|t| Instant::now() < *t) {
            // Lingering: wait for more (a blocking read ends as soon as some arrive), at
            // most `redis.block` per read so that shutdown is noticed as usual.
            let until = lingered
                .saturating_duration_since(Instant::now())
                .min(self.config.redis.block);
            return until_deadline
                .map_or(until, |d| d.min(until))
                .max(Duration::from_millis(1));
        }
        let slow = self.writing().is_some_and(|t| t.elapsed() > SLOW_WRITE);
        if slow {
            let ceiling = self.config.batch.max_delay.max(Duration::from_millis(1));
            return until_deadline.unwrap_or(ceiling).min(ceiling);
        }
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::entry::EntryId;

    fn entries(streams: &[&str]) -> Vec<StreamEntry> {
        streams
            .iter()
            .enumerate()
            .map(|(i, s)| StreamEntry {
                stream: Arc::from(*s),
                id: EntryId {
                    ms: i as u64,
                    seq: 0,
                },
                fields: None,
                deliveries: 0,
            })
            .collect()
    }

    #[test]
    fn a_stream_that_filled_its_count_is_a_backlog() {
        assert!(!is_backlog(&[], 2));
        assert!(!is_backlog(&entries(&["a", "b"]), 2));
        assert!(is_backlog(&entries(&["a", "b", "a"]), 2));
    }
}
