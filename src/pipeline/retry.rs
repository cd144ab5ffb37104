//! Retrying: an operation that failed for a transient reason is tried again after a
//! backoff with jitter, until it succeeds, fails for good, or shutdown is requested.
//! Each step says which of its errors are transient ([`Transient`]); the pipeline is the
//! only place that loops on them ([`retrying!`]).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::ack::AckError;
use crate::redis::RedisError;
use crate::write::{self, ErrorClass, WriteError};

/// Backoff with jitter between attempts; waiting gives up when shutdown is requested.
pub(super) struct Retry {
    delays: backon::ExponentialBackoff,
}

impl Retry {
    pub(super) fn new() -> Self {
        Self {
            delays: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times()
                .build(),
        }
    }

    /// Sleeps the next delay; `false` when shutdown was requested meanwhile.
    pub(super) async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.delays.next().unwrap_or(Duration::from_secs(10));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// Which server an operation talks to: its retry warnings name that endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Redis,
    Postgres,
}

/// Which errors are worth another attempt, and which side they come from.
pub(super) trait Transient {
    fn is_transient(&self) -> bool;
    fn side(&self) -> Side;
}

impl Transient for WriteError {
    fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Retry
    }
    fn side(&self) -> Side {
        Side::Postgres
    }
}

impl Transient for RedisError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
    fn side(&self) -> Side {
        Side::Redis
    }
}

impl Transient for AckError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
    fn side(&self) -> Side {
        Side::Redis
    }
}

/// Awaits `$op` (an expression giving a future) until it succeeds or fails for
/// good, backing off after transient errors: `Ok(Some(value))`, `Err(error)`, or
/// `Ok(None)` when shutdown was requested while waiting. `$events` (the pipeline's
/// [`Events`](super::events::Events)) counts and logs each failed attempt under `$what`.
/// A macro rather than a function taking an async closure, so the pipeline's future
/// stays `Send`.
macro_rules! retrying {
    ($events:expr, $shutdown:expr, $what:expr, $op:expr) => {{
        let mut retry = $crate::pipeline::retry::Retry::new();
        loop {
            match $op.await {
                Ok(value) => {
                    $events.recovered($what);
                    break Ok(Some(value));
                }
                Err(e) if $crate::pipeline::retry::Transient::is_transient(&e) => {
                    $events.retrying($what, $crate::pipeline::retry::Transient::side(&e), &e);
                    if !retry.wait($shutdown).await {
                        break Ok(None);
                    }
                }
                Err(e) => {
                    // Not retried: whatever comes of it, this operation is not failing on.
                    $events.recovered($what);
                    break Err(e);
                }
            }
        }
    }};
}

pub(super) use retrying;

/// The error's causes, joined: operators need the root cause (refused, timed out, …).
/// Each is said once: a cause whose text the one before it already quotes (sqlx's
/// `error communicating with database: <io error>`, then the io error) is left out, and
/// a Postgres error reads as Postgres' message ([`write::database_message`]).
pub fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut said = (e.to_string(), String::new());
    let mut cur = e.source();
    while let Some(s) = cur {
        let raw = s.to_string();
        let text = write::database_message(s).unwrap_or_else(|| raw.clone());
        if !said.0.contains(&raw) && !said.1.contains(&text) {
            out.push(text.clone());
        }
        said = (raw, text);
        cur = s.source();
    }
    out.join(": ")
}

/// The error's message and its causes ([`source_chain`]), each said once: how a fatal
/// error is printed.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    match source_chain(e) {
        chain if chain.is_empty() => e.to_string(),
        chain => format!("{e}: {chain}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("context")]
    struct Context(#[source] Quoting);

    #[test]
    fn a_cause_the_message_already_quotes_is_said_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Context(Quoting(refused));
        assert_eq!(source_chain(&e), "outer: refused");
        assert_eq!(error_text(&e), "context: outer: refused");
        let alone = std::io::Error::other("alone");
        assert_eq!(error_text(&alone), "alone");
    }
}
