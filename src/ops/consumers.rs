//! `redsink consumers prune`: removes a group's idle consumers that have nothing pending.
//!
//! A live instance reads every `redis.block`, so it is never idle for `redis.prune_idle`,
//! and an idle time below a safe floor (`3 × block + 5 s`) is raised to it;
//! the check and the removal run as one Lua script, so an entry can never be delivered to
//! a consumer in between and lost with it. The running instances prune the same way on
//! their own (sparing themselves). Errors: [`RedisError`].

use std::time::Duration;

use crate::config::Config;
use crate::redis::{Control, RedisError, admin};

/// The idle time from which `consumers prune` removes a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneIdle {
    pub idle: Duration,
    /// What was asked for, when it was below [`RedisConfig::prune_floor`] and raised
    /// to it.
    ///
    /// [`RedisConfig::prune_floor`]: crate::config::RedisConfig::prune_floor
    pub raised_from: Option<Duration>,
}

/// `idle`, or the config's `redis.prune_idle`, but never below the safe floor (a few
/// `block` periods): a live instance is idle that long between two reads, and
/// removing its consumer would hide it.
pub fn safe_idle(config: &Config, idle: Option<Duration>) -> PruneIdle {
    let asked = idle.unwrap_or(config.redis.prune_idle);
    let floor = config.redis.prune_floor();
    if asked < floor {
        PruneIdle {
            idle: floor,
            raised_from: Some(asked),
        }
    } else {
        PruneIdle {
            idle: asked,
            raised_from: None,
        }
    }
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
