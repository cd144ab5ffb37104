//! The blocking reads of new entries, one per lane (a cluster hash slot; one lane for
//! all streams elsewhere), kept in flight across calls of [`Reader::read`]: a lane that
//! is still waiting when another returns entries is not sent again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::StreamExt;
use redis::Value;

use super::{Cursor, Reader};
use crate::entry::StreamEntry;
use crate::redis::reply::parse_read_reply;
use crate::redis::{Blocking, CONNECT_WITHIN, RedisError, refused_by_cluster};

/// How long `WAIT` (`redis.wait_replicas`) waits for the replicas to confirm a read.
pub(super) const WAIT_WITHIN: Duration = Duration::from_millis(500);

/// One lane's blocking read on `conn` within `timeout` and, with `replicas`
/// (`redis.wait_replicas`), the `WAIT` that confirms what it returned.
async fn lane_read(
    lane: u16,
    mut conn: Blocking,
    cmd: redis::Cmd,
    timeout: Duration,
    replicas: u32,
) -> LaneRead {
    let reply = cmd.query_async::<Value>(&mut conn);
    let result = match tokio::time::timeout(timeout, reply).await {
        Err(_) => Err(RedisError::Timeout {
            context: "XREADGROUP".into(),
            timeout,
        }),
        Ok(r) => r.map_err(RedisError::redis("XREADGROUP")),
    };
    let mut unconfirmed = None;
    let result = match result {
        Ok(reply) if replicas > 0 && has_entries(&reply) => {
            match replicated(&mut conn, replicas, "XREADGROUP").await {
                Ok(()) => Ok(reply),
                Err(e @ RedisError::NotReplicated { .. }) => {
                    unconfirmed = Some(e);
                    Ok(reply)
                }
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    LaneRead {
        lane,
        conn,
        result,
        unconfirmed,
    }
}

/// Whether a read's reply holds anything (a timed-out `BLOCK` answers nil).
fn has_entries(reply: &Value) -> bool {
    match reply {
        Value::Nil => false,
        Value::Array(a) => !a.is_empty(),
        Value::Map(m) => !m.is_empty(),
        _ => true,
    }
}

/// `WAIT replicas` after a read on `conn`: the read moved the group's state (and is
/// after every entry it returned) in the replication stream, so once `replicas`
/// replicas confirm it, they hold every entry it returned, and a failover cannot take
/// them back. Fewer within [`WAIT_WITHIN`] is an error: the entries stay pending.
pub(super) async fn replicated<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    replicas: u32,
    context: &'static str,
) -> Result<(), RedisError> {
    let within_ms = u64::try_from(WAIT_WITHIN.as_millis()).unwrap_or(u64::MAX);
    let acked: u64 = redis::cmd("WAIT")
        .arg(replicas)
        .arg(within_ms)
        .query_async(conn)
        .await
        .map_err(RedisError::redis(format!("WAIT after {context}")))?;
    if acked < u64::from(replicas) {
        return Err(RedisError::NotReplicated {
            context,
            acked,
            wanted: replicas,
            timeout: WAIT_WITHIN,
        });
    }
    Ok(())
}

/// The answer to one lane's blocking read, with the connection it used.
pub(super) struct LaneRead {
    lane: u16,
    conn: Blocking,
    result: Result<Value, RedisError>,
    /// `redis.wait_replicas`: the replicas did not confirm what the read returned.
    unconfirmed: Option<RedisError>,
}

/// Entries a read returned that the replicas have not confirmed yet
/// (`redis.wait_replicas`), with the connection that read them: `WAIT` there covers
/// them. Held rather than re-read, so their delivery counts do not grow.
pub(super) struct Held {
    lane: u16,
    conn: Blocking,
    entries: Vec<StreamEntry>,
}

impl Reader {
    /// Waits for the first lane's answer, takes every other one that has already
    /// answered, and returns what they delivered.
    pub(super) async fn land_answered(&mut self) -> Result<Vec<StreamEntry>, RedisError> {
        // Each lane's read ends by itself (BLOCK, or its timeout): wait for the first,
        // then take every other one that has already answered.
        let mut done = Vec::new();
        if let Some(first) = self.in_flight.next().await {
            done.push(first);
        }
        while let Some(Some(next)) = self.in_flight.next().now_or_never() {
            done.push(next);
        }
        let mut out = Vec::new();
        let mut error = None;
        for answer in done {
            let lane = answer.lane;
            match self.land(answer) {
                Ok(entries) => out.extend(entries),
                // The slot moved or is being migrated: the read was refused, so nothing
                // was delivered. Only this lane waits a moment and reconnects (a fresh
                // connection has the new slot map); the others go on.
                Err(RedisError::Redis { source, .. }) if refused_by_cluster(&source) => {
                    tracing::info!(lane, error = %source, "slot moved or migrating: reading it again shortly");
                    self.cooling
                        .insert(lane, Instant::now() + Duration::from_millis(100));
                }
                // What other lanes returned is in our PEL: the rewind after this error
                // reads it again.
                Err(e) => error = error.or(Some(e)),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Takes one lane's answer: the lane is free again, and its connection is kept for
    /// the next read only after a success (a broken connection does not heal). With
    /// Sentinel, an answer from a master the sentinels no longer name is an error: what
    /// it returned may never reach the new master, so it is not applied (nor
    /// acknowledged there); the rewind that follows reads the new master's PEL.
    fn land(&mut self, answer: LaneRead) -> Result<Vec<StreamEntry>, RedisError> {
        let LaneRead {
            lane,
            conn,
            result,
            unconfirmed,
        } = answer;
        self.busy.remove(&lane);
        let entries = result.and_then(parse_read_reply)?;
        if let Some((connected, named)) = self.deployment.moved(&conn) {
            return Err(RedisError::MasterMoved {
                context: "XREADGROUP",
                connected,
                named,
            });
        }
        if self.wait_replicas > 0 && !entries.is_empty() {
            self.round_trips += 1; // the WAIT
        }
        if let Some(e) = unconfirmed {
            self.held = Some(Held {
                lane,
                conn,
                entries,
            });
            return Err(e);
        }
        self.idle.insert(lane, conn);
        Ok(entries)
    }

    /// Asks again whether the replicas hold what a read returned (`redis.wait_replicas`):
    /// the entries once they do; [`RedisError::NotReplicated`] (still held) while they
    /// do not. The master moved meanwhile: they are dropped, the rewind that follows
    /// reads the new master's PEL; another error: the rewind re-reads them.
    pub(super) async fn confirm_held(
        &mut self,
        held: Held,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        let Held {
            lane,
            mut conn,
            entries,
        } = held;
        if let Some((connected, named)) = self.deployment.moved(&conn) {
            return Err(RedisError::MasterMoved {
                context: "WAIT",
                connected,
                named,
            });
        }
        self.round_trips += 1;
        match replicated(&mut conn, self.wait_replicas, "XREADGROUP").await {
            Ok(()) => {
                self.idle.insert(lane, conn);
                Ok(entries)
            }
            Err(e @ RedisError::NotReplicated { .. }) => {
                self.held = Some(Held {
                    lane,
                    conn,
                    entries,
                });
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a blocking read for each lane with no read in flight.
    pub(super) async fn start_reads(
        &mut self,
        block: Duration,
        count: usize,
    ) -> Result<(), RedisError> {
        let mut lanes: BTreeMap<u16, Vec<Arc<str>>> = BTreeMap::new();
        for (s, c) in &self.streams {
            if *c == Cursor::New {
                lanes.entry(self.lane(s)).or_default().push(s.clone());
            }
        }
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let timeout = block + Duration::from_secs(10);
        let now = Instant::now();
        self.cooling.retain(|_, until| *until > now);
        for (lane, streams) in lanes {
            if self.busy.contains(&lane) || self.cooling.contains_key(&lane) {
                continue;
            }
            // A connection to a master the sentinels no longer name is not read from again.
            let idle = self.idle.remove(&lane);
            let conn = match idle.filter(|c| self.deployment.moved(c).is_none()) {
                Some(conn) => conn,
                None => {
                    let connect = self.deployment.blocking();
                    let mut conn = tokio::time::timeout(CONNECT_WITHIN, connect)
                        .await
                        .map_err(|_| RedisError::Timeout {
                            context: "connecting a reader".into(),
                            timeout: CONNECT_WITHIN,
                        })??;
                    self.name_connection(&mut conn).await;
                    conn
                }
            };
            let mut cmd = self.xreadgroup(count);
            // Zero: take what is there (the caller has a batch waiting).
            if !block.is_zero() {
                cmd.arg("BLOCK").arg(block_ms);
            }
            cmd.arg("STREAMS");
            for s in &streams {
                cmd.arg(s.as_ref());
            }
            for _ in &streams {
                cmd.arg(">");
            }
            self.round_trips += 1;
            self.busy.insert(lane);
            let replicas = self.wait_replicas;
            self.in_flight
                .push(lane_read(lane, conn, cmd, timeout, replicas).boxed());
        }
        Ok(())
    }

    /// Names a new blocking connection for the same-name check at start
    /// ([`Reader::namesakes`]). Best effort: an ACL without `client|setname` only
    /// weakens that check.
    async fn name_connection(&mut self, conn: &mut Blocking) {
        let named: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(self.client_name())
            .query_async(conn)
            .await;
        if let Err(e) = named {
            tracing::debug!(error = %e, "naming a reader's connection failed");
        }
    }

    /// Waits for every read in flight to end (each within its timeout) and drops what
    /// they returned: it is in our PEL.
    pub(super) async fn settle(&mut self) {
        while self.in_flight.next().await.is_some() {}
        self.busy.clear();
        // Held entries are in our PEL too.
        self.held = None;
    }

    /// Waits for the reads in flight and returns what they delivered (at shutdown, so
    /// that it is applied rather than left pending).
    pub async fn finish_reads(&mut self) -> Vec<StreamEntry> {
        let mut out = Vec::new();
        while let Some(answer) = self.in_flight.next().await {
            match self.land(answer) {
                Ok(entries) => out.extend(entries),
                Err(e) => {
                    tracing::warn!(error = %e, "a last read failed: its entries stay pending")
                }
            }
        }
        out
    }
}
