//! `redsink consumers prune`: removes a group's idle consumers that have nothing pending.
//!
//! A live instance reads every `redis.block`, so it is never idle for `redis.prune_idle`;
//! the check and the removal run as one Lua script, so an entry can never be delivered to
//! a consumer in between and lost with it. The running instances prune the same way on
//! their own (sparing themselves). Errors: [`RedisError`].

use std::time::Duration;

use crate::config::Config;
use crate::redis::{Control, RedisError, admin};

/// The idle time from which a consumer goes: `idle`, or the config's `redis.prune_idle`.
pub fn idle_or_default(config: &Config, idle: Option<Duration>) -> Duration {
    idle.unwrap_or(config.redis.prune_idle)
}

/// Removes the consumers of `group` on `stream` with nothing pending that have been idle
/// for at least `idle`; returns their names.
pub async fn prune(
    control: &mut Control,
    stream: &str,
    group: &str,
    idle: Duration,
) -> Result<Vec<String>, RedisError> {
    admin::prune_consumers(control, stream, group, None, idle).await
}
