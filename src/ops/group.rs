//! `redsink group reset`: moves a consumer group's position on a stream.
//!
//! XGROUP SETID moves the group's last-delivered ID: entries after it are delivered
//! (again) — already-applied versions are no-ops, so re-delivery is harmless — and
//! entries pending now stay pending. Entries a trim (`trim = "acked"`) already removed
//! cannot come back. Errors: [`RedisError`].

use crate::config::Config;
use crate::redis::{Control, RedisError, admin};

/// The group to act on: `group`, or the config's `redis.group`.
pub fn group_or_default(config: &Config, group: Option<String>) -> String {
    group.unwrap_or_else(|| config.redis.group.clone())
}

/// Moves `group` on `stream` to `to` (an entry ID, `0` for everything, `$` for the end).
pub async fn reset(
    control: &mut Control,
    stream: &str,
    group: &str,
    to: &str,
) -> Result<(), RedisError> {
    admin::set_group_id(control, stream, group, to).await
}
