//! The default of every key that has one (serde's `default = "…"` functions).

use std::time::Duration;

pub(super) fn default_group() -> String {
    "redsink".into()
}
pub(super) fn default_start() -> String {
    "0".into()
}
pub(super) fn default_block() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_max_deliveries() -> u64 {
    10
}
pub(super) fn default_prune_idle() -> Duration {
    Duration::from_secs(3600)
}
pub(super) fn default_claim_idle() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_dlq_suffix() -> String {
    ":dlq".into()
}
pub(super) fn default_pool_size() -> u32 {
    4
}
pub(super) fn default_gc_every() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_lock_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_idle_in_transaction() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_statement_timeout() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_keepalive() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_slow_write_after() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_max_batch() -> usize {
    4096
}
pub(super) fn default_max_delay() -> Duration {
    Duration::from_millis(50)
}
pub(super) fn default_placeholder() -> String {
    "default".into()
}
pub(super) fn default_tx_wait() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_tx_max_events() -> usize {
    10_000
}
