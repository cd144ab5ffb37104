//! The committer's lease (transaction mode): which instance commits a group's source
//! transactions. A row in `redsink.tx_leader` per group and transaction stream; the
//! holder renews it on a session of its own ([`claim`]), and another instance takes it
//! when it ran out (the holder is paused or cut off) or when the holder's session is
//! gone (the holder died: no need to wait for the lease). Commits do not rest on it:
//! they are fenced by `redsink.tx_progress.seq` ([`super::TxFinish`]).

use std::time::Duration;

use sqlx::{PgConnection, Row as _};

use super::WriteError;

/// Who holds the lease, for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Leader {
    /// The holder's consumer name.
    pub consumer: String,
    /// Seconds until its lease runs out (negative: it ran out that long ago).
    pub expires_in: f64,
}

/// Takes or renews the lease of (`group`, `stream`) for `holder` (unique to the
/// process) for `lease`, on `conn`, whose session then counts as the holder's: `true`
/// when `holder` holds it now.
pub async fn claim(
    conn: &mut PgConnection,
    group: &str,
    stream: &str,
    holder: &str,
    consumer: &str,
    lease: Duration,
) -> Result<bool, WriteError> {
    let held: Option<String> = sqlx::query_scalar(
        "INSERT INTO redsink.tx_leader AS l \
           (consumer_group, stream, holder, consumer, pid, lease_until) \
         VALUES ($1, $2, $3, $4, pg_backend_pid(), clock_timestamp() + make_interval(secs => $5)) \
         ON CONFLICT (consumer_group, stream) DO UPDATE \
           SET holder = EXCLUDED.holder, consumer = EXCLUDED.consumer, pid = EXCLUDED.pid, \
               lease_until = EXCLUDED.lease_until \
         WHERE l.holder = EXCLUDED.holder OR l.lease_until < clock_timestamp() \
            OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid) \
         RETURNING holder",
    )
    .bind(group)
    .bind(stream)
    .bind(holder)
    .bind(consumer)
    .bind(lease.as_secs_f64())
    .fetch_optional(conn)
    .await
    .map_err(WriteError::pg("taking or renewing the committer's lease"))?;
    Ok(held.is_some())
}

/// Gives the lease up (on shutdown), so that another instance takes it at once.
pub async fn release(
    conn: &mut PgConnection,
    group: &str,
    stream: &str,
    holder: &str,
) -> Result<(), WriteError> {
    sqlx::query(
        "DELETE FROM redsink.tx_leader WHERE consumer_group = $1 AND stream = $2 AND holder = $3",
    )
    .bind(group)
    .bind(stream)
    .bind(holder)
    .execute(conn)
    .await
    .map_err(WriteError::pg("giving up the committer's lease"))?;
    Ok(())
}

/// The lease's holder, if any.
pub async fn leader(
    pool: &sqlx::PgPool,
    group: &str,
    stream: &str,
) -> Result<Option<Leader>, WriteError> {
    let row = sqlx::query(
        "SELECT consumer, extract(epoch FROM lease_until - clock_timestamp())::float8 \
         FROM redsink.tx_leader WHERE consumer_group = $1 AND stream = $2",
    )
    .bind(group)
    .bind(stream)
    .fetch_optional(pool)
    .await
    .map_err(WriteError::pg("reading the committer's lease"))?;
    Ok(row.map(|r| Leader {
        consumer: r.get(0),
        expires_in: r.get(1),
    }))
}
