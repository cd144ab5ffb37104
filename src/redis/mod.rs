//! The Redis connection layer: standalone, cluster or sentinel deployments behind one
//! shared connection type ([`Control`]), routing by hash slot, TLS and ACL users; the
//! replies of stream commands parsed into [`StreamEntry`]s; and the commands that
//! several users share (discovery, XRANGE, inspection, administration).
//! Used by `read`, `ack`, the ops commands and the demo producer; imports no step.
//! Errors: [`RedisError`], with `is_retryable` for the pipeline's backoff.
//!
//! Files: `deployment` (how to reach Redis: clients, TLS, ACL users), `control` (the
//! shared connection, the blocking readers' connection), `sentinel` (following the
//! master the sentinels name: asked every 250 ms, stale connections dropped), `route`
//! (hash slots, pipelines per slot), `reply` (stream replies → entries), `admin` and
//! `inspect` (group administration, stream state); this file: errors and the commands
//! several users share (discovery, XRANGE).

pub mod admin;
mod control;
mod deployment;
pub mod inspect;
mod raw;
pub(crate) mod reply;
mod resp;
mod route;
mod sentinel;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::config::{RedisConfig, RedisMode, StreamPattern};
use crate::entry::StreamEntry;

pub use control::{Blocking, Control, at_once};
pub use deployment::{Deployment, tcp_settings};
pub use route::{Routed, SlotOutcome, pipeline_by_key, pipeline_per_slot, slot};
pub use sentinel::MasterAddr;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {context}")]
    Redis {
        context: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis: {context}: read timed out after {timeout:?}")]
    Timeout { context: String, timeout: Duration },
    #[error("redis: unexpected reply to {command}: {detail}")]
    Reply {
        command: &'static str,
        detail: String,
    },
    /// With Sentinel: a read answered by a master the sentinels no longer name. What it
    /// returned is dropped unapplied: it stays pending there, and what the new master
    /// received before the failover is read again from it.
    #[error(
        "redis: {context}: answered by {connected}, but the sentinels now name {named} as \
         master: dropped, to be read again from {named}"
    )]
    MasterMoved {
        context: &'static str,
        connected: MasterAddr,
        named: MasterAddr,
    },
    /// `redis.wait_replicas`: the entries a read returned had not reached enough replicas.
    #[error(
        "redis: {context}: only {acked} of the {wanted} replicas redis.wait_replicas asks \
         for confirmed the entries read within {timeout:?} (a failover in progress, or \
         replicas down or lagging): held unapplied until they do"
    )]
    NotReplicated {
        context: &'static str,
        acked: u64,
        wanted: u32,
        timeout: Duration,
    },
    /// A request that cannot be carried out as asked (operator commands).
    #[error("{0}")]
    Invalid(String),
}

impl RedisError {
    pub(crate) fn redis(context: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Self {
        let context = context.into();
        move |source| Self::Redis { context, source }
    }

    /// Retry at once, without backing off: the error was a wait already (`WAIT` timed out)
    /// or has a known cure that the retry applies (reconnecting to the master the
    /// sentinels name). A growing backoff would only delay following a failover.
    pub fn retry_at_once(&self) -> bool {
        matches!(self, Self::MasterMoved { .. } | Self::NotReplicated { .. })
    }

    /// Whether the reader must re-read its PEL before reading on: always, but after
    /// [`RedisError::NotReplicated`] (the reader holds what it read and asks again).
    pub fn needs_rewind(&self) -> bool {
        !matches!(self, Self::NotReplicated { .. })
    }

    /// Connection trouble, timeouts, a loading or failing-over server: back off and retry.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::MasterMoved { .. } | Self::NotReplicated { .. } => true,
            Self::Redis { source, .. } => redis_retryable(source),
            Self::Reply { .. } | Self::Invalid(_) => false,
        }
    }
}

/// How long opening a reader's connection may take (a cluster connection also loads the
/// slot map).
pub(crate) const CONNECT_WITHIN: Duration = Duration::from_secs(15);

/// A cluster refused the command without running it: the slot moved or is migrating, or
/// the cluster is (briefly) down.
pub(crate) fn refused_by_cluster(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN"))
}

/// Shared by read, ack and the ops commands: which Redis errors are worth retrying.
pub fn redis_retryable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || matches!(
            e.code(),
            Some(
                "LOADING"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    // A slot that moved (failover, resharding) or is being migrated.
                    | "MOVED"
                    | "ASK"
                    | "MASTERDOWN"
                    | "READONLY"
                    // A blocked read on a master that was just demoted (failover).
                    | "UNBLOCKED"
                    | "BUSY"
                    | "NOGROUP"
            )
        )
}

/// Where the configured deployment is, for logs: `host:port` (a Unix socket's path);
/// a cluster's seed nodes, comma-separated; a Sentinel master as `<name> via` its
/// sentinels. Never a user name or password.
pub fn endpoint(redis: &RedisConfig) -> String {
    let address = |url: &String| match url::Url::parse(url) {
        Ok(u) if u.scheme() == "unix" || u.scheme().ends_with("+unix") => u.path().to_string(),
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or("?"),
            u.port().unwrap_or(6379)
        ),
        Err(_) => crate::config::redact_url(url),
    };
    match redis.mode {
        RedisMode::Standalone => address(&redis.url),
        RedisMode::Cluster => std::iter::once(&redis.url)
            .chain(&redis.nodes)
            .map(address)
            .collect::<Vec<_>>()
            .join(","),
        RedisMode::Sentinel => {
            let sentinels = if redis.nodes.is_empty() {
                std::slice::from_ref(&redis.url)
            } else {
                redis.nodes.as_slice()
            };
            let sentinels: Vec<String> = sentinels.iter().map(address).collect();
            let name = redis.master_name.as_deref().unwrap_or_default();
            format!("{name} via {}", sentinels.join(","))
        }
    }
}

/// Opens the shared (non-blocking) connection to the configured deployment.
pub async fn connect_control(redis: &RedisConfig) -> Result<Control, RedisError> {
    Ok(connect(redis).await?.1)
}

/// The configured deployment (for a reader's own connections) and its shared connection.
pub async fn connect(redis: &RedisConfig) -> Result<(Deployment, Control), RedisError> {
    let deployment = Deployment::new(redis)?;
    let control = deployment.control().await?;
    Ok((deployment, control))
}

/// Expands patterns into stream names: ranges and exact names as they are, globs by SCAN
/// (on every master of a cluster); each name once, in pattern order.
pub async fn discover(
    control: &mut Control,
    patterns: &[StreamPattern],
) -> Result<Vec<String>, RedisError> {
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    for p in patterns {
        match p {
            StreamPattern::Exact(name) => {
                if seen.insert(name.clone()) {
                    names.push(name.clone());
                }
            }
            StreamPattern::Glob(glob) => {
                for name in control.scan_streams(glob).await? {
                    if seen.insert(name.clone()) {
                        names.push(name);
                    }
                }
            }
        }
    }
    Ok(names)
}

/// The streams of every mapping (`patterns[i]` are mapping `i`'s), each once with the
/// index of the first mapping that names it, without dead-letter streams: what the
/// sync reads, `replay` replays, `status` shows and `check` samples.
pub async fn mapped_streams(
    control: &mut Control,
    patterns: &[&[StreamPattern]],
    redis: &RedisConfig,
) -> Result<Vec<(String, usize)>, RedisError> {
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut seen = HashSet::new();
    for (index, p) in patterns.iter().enumerate() {
        for name in discover(control, p).await? {
            if !redis.is_dlq(&name) && seen.insert(name.clone()) {
                out.push((name, index));
            }
        }
    }
    Ok(out)
}

/// Up to `count` entries of `stream` from `start` to `end` (XRANGE syntax: an ID,
/// `(ID` for after it, `-`, `+`), outside any consumer group.
pub async fn range(
    control: &mut Control,
    stream: &Arc<str>,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<StreamEntry>, RedisError> {
    const CMD: &str = "XRANGE";
    let reply: Value = redis::cmd(CMD)
        .arg(stream.as_ref())
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(control)
        .await
        .map_err(RedisError::redis(format!("XRANGE {stream} {start} {end}")))?;
    let mut out = Vec::new();
    reply::parse_entries(stream, reply, CMD, &mut out)?;
    Ok(out)
}
