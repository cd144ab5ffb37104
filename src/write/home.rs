//! The writer's kept connection ([`Home`]): every batch on one Postgres session.
//! No I/O of its own; errors: none.

use std::sync::Arc;

use sqlx::Postgres;
use sqlx::pool::PoolConnection;

/// The writer's own connection between batches, taken out of the pool and kept while it
/// works, so that every batch runs on the same server session: the pool hands its idle
/// connections out in turn, and each new session first builds its caches of the
/// batch's tables (relations, indexes, the generic plans of the prepared statements:
/// ~0.5 s over 200 tables) and is missing the prepared statements once; and acquiring
/// from the pool costs a round trip of its own (sqlx tests a connection before handing
/// it out). Kept only when the pool has room for others (`pool_size` ≥ 2): the chores,
/// `status` and readiness use the rest. A write running while another holds it (the
/// committer and a flush at once) takes a connection from the pool as before.
#[derive(Clone, Default)]
pub(super) struct Home(Arc<std::sync::Mutex<Kept>>);

/// The kept connection. A pool connection dropped outside a Tokio runtime panics (sqlx
/// spawns a task to return it): a writer dropped there (after its runtime ended) lets
/// its connection go with the process instead.
#[derive(Default)]
struct Kept(Option<PoolConnection<Postgres>>);

impl Drop for Kept {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            std::mem::forget(self.0.take());
        }
    }
}

impl Home {
    pub(super) fn take(&self) -> Option<PoolConnection<Postgres>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .take()
    }

    /// Keeps `conn` for the next batch (it goes back to the pool when one is kept already).
    pub(super) fn keep(&self, conn: PoolConnection<Postgres>) {
        let mut home = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if home.0.is_none() {
            home.0 = Some(conn);
        }
    }
}
