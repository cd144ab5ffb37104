//! Other consumers: entries they left pending are taken over (XAUTOCLAIM) once idle
//! for `claim_idle`; consumers idle with nothing pending are removed from the group,
//! and this one leaves it at shutdown when its PEL is empty. At start, the connections
//! named for this consumer tell whether another instance reads under its name.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::Reader;
use crate::entry::{EntryId, StreamEntry};
use crate::redis::reply::parse_autoclaim_reply;
use crate::redis::{RedisError, admin, inspect};

/// The most entries one XAUTOCLAIM takes over per stream and round (it scans at most
/// ten times as many pending entries).
const CLAIM_COUNT: usize = 500;

impl Reader {
    /// Takes over entries that have been pending on any consumer of the group for
    /// longer than `min_idle` (a consumer that died) and returns them for processing.
    /// Each stream's scan resumes where the previous round stopped. Entries deleted
    /// from the stream while pending come back without fields (the decoder reports them).
    /// A stream whose XAUTOCLAIM fails is logged and retried next round.
    /// At most `limit` entries are taken over per round.
    pub async fn claim_idle(&mut self, min_idle: Duration, limit: usize) -> Vec<StreamEntry> {
        let idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let streams: Vec<Arc<str>> = self.streams.iter().map(|(s, _)| s.clone()).collect();
        for stream in streams {
            let count = CLAIM_COUNT.min(limit.saturating_sub(out.len()));
            if count == 0 {
                break;
            }
            let start = self
                .claim_cursors
                .get(&stream)
                .copied()
                .unwrap_or(EntryId::ZERO);
            let reply: Result<Value, _> = redis::cmd("XAUTOCLAIM")
                .arg(stream.as_ref())
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(idle_ms)
                .arg(start.to_string())
                .arg("COUNT")
                .arg(count)
                .query_async(&mut self.control)
                .await;
            let parsed = reply
                .map_err(RedisError::redis(format!("XAUTOCLAIM on {stream}")))
                .and_then(|r| parse_autoclaim_reply(&stream, r));
            match parsed {
                Ok((next, mut claimed)) => {
                    self.claim_cursors.insert(stream.clone(), next);
                    if let Err(e) = self.fill_deliveries(&stream, &mut claimed).await {
                        tracing::warn!(stream = %stream, error = %e, "reading delivery counts failed");
                    }
                    if !claimed.is_empty() {
                        tracing::warn!(
                            stream = %stream,
                            count = claimed.len(),
                            "claimed entries left pending by another consumer"
                        );
                    }
                    out.extend(claimed);
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "claiming idle entries failed")
                }
            }
        }
        out
    }

    /// Removes from the group the other consumers that have been idle for `min_idle`
    /// with nothing pending (instances that were killed), so `XINFO CONSUMERS` lists
    /// live instances. A live instance is never idle for long (it reads every `block`),
    /// and one removed by mistake is re-created by its next read.
    pub async fn prune_consumers(&mut self, min_idle: Duration) -> usize {
        let mut pruned = 0;
        for (stream, _) in &self.streams {
            let keep = Some(self.consumer.as_str());
            match admin::prune_consumers(&mut self.control, stream, &self.group, keep, min_idle)
                .await
            {
                Ok(names) => {
                    for name in &names {
                        tracing::info!(stream = %stream, consumer = %name, "removed an idle consumer with nothing pending");
                    }
                    pruned += names.len();
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "pruning idle consumers failed")
                }
            }
        }
        pruned
    }

    /// Sets what ends the client name of the blocking connections opened from now on:
    /// what the instance reads (its streams' patterns, hashed), so that instances of
    /// unrelated deployments that share a group and consumer name on one Redis are not
    /// taken for each other.
    pub fn tag_clients(&mut self, tag: &str) {
        self.client_tag = tag.to_string();
    }

    /// The client name of this reader's blocking connections:
    /// `redsink:<group>:<consumer>:<tag>` (CLIENT SETNAME allows no spaces or newlines:
    /// those become `_`).
    pub fn client_name(&self) -> String {
        format!(
            "redsink:{}:{}:{}",
            self.group, self.consumer, self.client_tag
        )
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
    }

    /// How long ago (seconds) each connection of a reader under this group and consumer
    /// name sent its last command: another live instance under our name, or the
    /// connections of a previous life that Redis has not yet seen closed. `None` when
    /// the server refuses CLIENT LIST. Blocking reads are what keeps the name in use:
    /// Redis 7.0 does not count an XREADGROUP that finds nothing as activity of the
    /// consumer, so XINFO CONSUMERS cannot tell a live idle instance from a dead one.
    pub async fn namesakes(&mut self) -> Result<Option<Vec<u64>>, RedisError> {
        let name = self.client_name();
        inspect::named_clients(&mut self.control, &name).await
    }

    /// Removes this consumer from the group on every stream where it has nothing
    /// pending (XGROUP DELCONSUMER would drop pending entries), so `XINFO CONSUMERS`
    /// lists live instances only. Reads still in flight are waited for first (what they
    /// deliver is pending, and keeps us in the group). Errors are logged: the next start
    /// cleans up anyway.
    pub async fn leave_group(&mut self) {
        self.settle().await;
        let mut left = 0;
        for (stream, _) in &self.streams {
            match admin::leave_group(&mut self.control, stream, &self.group, &self.consumer).await {
                Ok(true) => left += 1,
                Ok(false) => {
                    tracing::info!(stream = %stream, "entries still pending: staying in the group")
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "leaving the group failed");
                    if e.is_retryable() {
                        // Redis is unreachable: do not wait on every stream in turn.
                        break;
                    }
                }
            }
        }
        tracing::info!(consumer = %self.consumer, streams = left, "left the consumer group");
    }
}
