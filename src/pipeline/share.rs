//! How big a batch may grow: `batch.max_batch` while this instance writes alone, at most
//! [`MAX_KEY_LOCKS`] entries while other instances of its group read too.
//!
//! A batch locks each key it writes, so that instances writing different keys of a table
//! never wait for each other, but only up to [`MAX_KEY_LOCKS`] keys (Postgres' shared lock
//! table is small); a bigger batch locks its tables instead, and then instances writing
//! the same tables take turns. Alone, that costs nothing and a big batch is cheaper per
//! row (one lock per table instead of one per key, fewer commits, more rows per
//! statement when a batch spans many tables). So the default `max_batch` is large, and
//! while another consumer of the group has read lately ([`OTHERS_LIVE_WITHIN`]), batches
//! stop at [`MAX_KEY_LOCKS`] entries (so at as many keys) and keep to key locks.
//! Looked at on start, then every 5 s (XINFO CONSUMERS of the first stream read); a
//! failed look changes nothing. Only throughput depends on it, never
//! correctness: either kind of lock keeps instances from racing on a key.

use std::time::Duration;

use super::Pipeline;
use crate::config::Config;
use crate::redis::inspect;
use crate::write::MAX_KEY_LOCKS;

/// A consumer of the group that read (or tried to) within this, or 3 × `redis.block`
/// if longer, is another live instance: a live instance asks at least every
/// `redis.block`; a killed one has been silent since it died.
const OTHERS_LIVE_WITHIN: Duration = Duration::from_secs(30);

/// The largest batch the configuration allows: `batch.max_batch`, or in transaction
/// mode (`staging`) its smaller unit ([`super::tx_unit`]).
pub(super) fn configured(config: &Config, staging: bool) -> usize {
    if staging {
        super::tx_unit(config)
    } else {
        config.batch.max_batch
    }
}

/// The batch ceiling for `max_batch` when other instances of the group read or not.
pub(super) fn ceiling(max_batch: usize, others: bool) -> usize {
    if others {
        max_batch.min(MAX_KEY_LOCKS)
    } else {
        max_batch
    }
}

impl Pipeline {
    /// Sets the batch ceiling from whether other consumers of the group are live.
    pub(super) async fn share_keys(&mut self) {
        let Some(stream) = self.core.routes.keys().min().cloned() else {
            return;
        };
        let group = self.core.config.redis.group.clone();
        let me = self.core.config.consumer().to_string();
        let consumers = match inspect::consumers(self.reader.control(), &stream, &group).await {
            Ok(consumers) => consumers,
            Err(e) => {
                tracing::debug!(error = %e, "looking for other instances failed");
                return;
            }
        };
        let within = OTHERS_LIVE_WITHIN.max(self.core.config.redis.block * 3);
        let within = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        let others = consumers.iter().any(|c| c.name != me && c.idle_ms < within);
        let ceiling = ceiling(configured(&self.core.config, self.core.staging), others);
        if ceiling != self.core.batcher.max_batch() {
            tracing::info!(
                max_batch = ceiling,
                "{}",
                if others {
                    "other instances read this group: batches keep to one lock per key"
                } else {
                    "no other instance reads this group: batches grow to batch.max_batch"
                }
            );
            self.core.batcher.set_max_batch(ceiling);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_keep_batches_to_key_locks() {
        assert_eq!(ceiling(4096, false), 4096);
        assert_eq!(ceiling(4096, true), MAX_KEY_LOCKS);
        assert_eq!(ceiling(100, true), 100);
    }
}
