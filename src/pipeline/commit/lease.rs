//! The committer's lease, kept by a task of its own (`write::lease`): every
//! [`RENEW_EVERY`] it takes or renews the lease on a session of its own, so a long
//! commit never lets it run out. [`Lease::term`] is what the committer asks: the lease
//! counts as held only until [`LEASE`] after the start of the last renewal that
//! succeeded, by this process' monotonic clock, which goes on while the process is
//! paused: a committer resumed after a pause longer than that stops committing before
//! it learns who leads now (and a commit it had in flight is refused by the fence).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::write::lease;

/// How long a lease lasts: how long a paused or cut-off committer holds up the others.
pub(super) const LEASE: Duration = Duration::from_secs(5);
/// How often the holder renews it and the others try to take it.
const RENEW_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// Until when the lease is ours (a deadline of this process' monotonic clock).
    until: Option<Instant>,
    /// Incremented each time the lease is taken (not renewed).
    term: u64,
}

/// This instance's hold on the lease.
pub(super) struct Lease {
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// Asks for the lease of (`group`, `stream`) as `consumer` once, then keeps
    /// asking (or renewing it) on a task.
    pub async fn start(pool: PgPool, group: String, stream: String, consumer: String) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let stop = CancellationToken::new();
        let holder = format!(
            "{consumer}/{}/{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let mut keeper = Keeper {
            pool,
            group,
            stream,
            holder,
            consumer,
            conn: None,
            state: state.clone(),
            warned: false,
        };
        keeper.step().await;
        let task = tokio::spawn(keeper.run(stop.clone()));
        Self {
            state,
            stop,
            task: Some(task),
        }
    }

    /// `Some(term)` while the lease is ours: `term` changes each time it is taken
    /// again, so a committer that lost it in between knows to start over.
    pub fn term(&self) -> Option<u64> {
        let state = lock(&self.state);
        state
            .until
            .filter(|until| Instant::now() < *until)
            .map(|_| state.term)
    }

    /// Gives the lease up (another instance takes it at once) and stops the task.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Keeper {
    pool: PgPool,
    group: String,
    stream: String,
    holder: String,
    consumer: String,
    /// The session the lease is renewed on: its backend's liveness tells the others
    /// that this process lives.
    conn: Option<PgConnection>,
    state: Arc<Mutex<State>>,
    /// Whether the failure to renew was logged (once per outage).
    warned: bool,
}

impl Keeper {
    async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(RENEW_EVERY) => {}
            }
            self.step().await;
        }
        lock(&self.state).until = None;
        if let Some(conn) = &mut self.conn {
            let released = tokio::time::timeout(
                RENEW_EVERY,
                lease::release(conn, &self.group, &self.stream, &self.holder),
            )
            .await;
            if !matches!(released, Ok(Ok(()))) {
                tracing::debug!("the committer's lease was not given up: it runs out");
            }
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    /// One claim: takes or renews the lease, or learns that another holds it.
    async fn step(&mut self) {
        let started = Instant::now();

        match self.claim().await {
            Ok(ours) => {
                self.warned = false;
                let mut state = lock(&self.state);
                // Ours until now (else the committer stopped when it ran out: a
                // new term), and ours when last asked (even if it ran out since).
                let had = state.until.is_some_and(|until| started < until);
                let had_row = state.until.is_some();
                if ours {
                    if !had {
                        state.term += 1;
                        tracing::info!(stream = %self.stream, "this instance commits source transactions");
                    }
                    state.until = Some(started + LEASE);
                } else {
                    if had_row {
                        tracing::warn!(stream = %self.stream, "another instance took over committing source transactions");
                    }
                    state.until = None;
                }
            }
            Err(e) => {
                // The lease stays ours until it runs out; the session is opened again.
                self.conn = None;
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(error = %e, "could not renew the committer's lease: retrying every second");
                }
            }
        }
    }

    async fn claim(&mut self) -> Result<bool, crate::write::WriteError> {
        if self.conn.is_none() {
            let conn =
                self.pool
                    .acquire()
                    .await
                    .map_err(|source| crate::write::WriteError::Postgres {
                        context: "opening the lease's session".into(),
                        source,
                    })?;
            self.conn = Some(conn.detach());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        let claim = lease::claim(
            conn,
            &self.group,
            &self.stream,
            &self.holder,
            &self.consumer,
            LEASE,
        );
        match tokio::time::timeout(LEASE, claim).await {
            Ok(result) => result,
            Err(_) => Err(crate::write::WriteError::Postgres {
                context: "renewing the committer's lease".into(),
                source: sqlx::Error::PoolTimedOut,
            }),
        }
    }
}
