//! Retrying: an operation that failed for a transient reason is tried again after a
//! backoff with jitter, until it succeeds, fails for good, or shutdown is requested.
//! Each step says which of its errors are transient ([`Transient`]); the pipeline is the
//! only place that loops on them ([`retrying!`]).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::ack::AckError;
use crate::redis::RedisError;
use crate::write::{ErrorClass, WriteError};

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

/// Which errors are worth another attempt.
pub(super) trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for WriteError {
    fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Retry
    }
}

impl Transient for RedisError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
}

impl Transient for AckError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
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
                    $events.retrying($what, &e);
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
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
