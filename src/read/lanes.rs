//! The blocking reads of new entries, one per lane (a cluster hash slot; one lane for
//! all streams elsewhere), kept in flight across calls of [`Reader::read`]: a lane that
//! is still waiting when another returns entries is not sent again. A cluster lane
//! whose read failed re-reads its own pending entries here too, on its own connection
//! (`outage`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::StreamExt;
use redis::Value;

use super::{Cursor, Reader};
use crate::entry::{EntryId, StreamEntry};
use crate::redis::reply::parse_read_reply;
use crate::redis::{Blocking, CONNECT_WITHIN, Deployment, RedisError, refused_by_cluster};

/// How long `WAIT` (`redis.wait_replicas`) waits for the replicas to confirm a read.
pub(super) const WAIT_WITHIN: Duration = Duration::from_millis(500);

/// The answer to one lane's read, with the connection it used (none when connecting
/// failed).
pub(super) struct LaneRead {
    lane: u16,
    conn: Option<Blocking>,
    result: Result<Vec<StreamEntry>, RedisError>,
    /// For a lane recovering from an outage: the pending entries it re-read, per stream
    /// from this ID (`None`: a read of new entries).
    pending: Option<Vec<(Arc<str>, EntryId)>>,
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
            let pending = answer.pending.clone();
            let landed = match self.land(answer) {
                Ok(mut entries) => match pending {
                    // The re-read entries were delivered: if their delivery counts
                    // cannot be had, the lane starts over from its PEL (they are there),
                    // rather than dropping them past its cursors.
                    Some(pending) => {
                        match self.fill_lane_deliveries(&pending, &mut entries).await {
                            Ok(()) => Ok(entries),
                            Err(e) => {
                                self.lane_failed(lane, e);
                                continue;
                            }
                        }
                    }
                    None => Ok(entries),
                },
                Err(e) => Err(e),
            };
            match landed {
                Ok(entries) => out.extend(entries),
                // The slot moved or is being migrated: the read was refused, so nothing
                // was delivered. Only this lane waits a moment and reconnects (a fresh
                // connection has the new slot map); the others go on.
                Err(RedisError::Redis { source, .. }) if refused_by_cluster(&source) => {
                    tracing::info!(lane, error = %source, "slot moved or migrating: reading it again shortly");
                    self.cooling
                        .insert(lane, Instant::now() + Duration::from_millis(100));
                }
                // The slot's master is unreachable or failing over: only this lane waits
                // and then re-reads its own pending entries.
                Err(e) if self.fails_alone(&e) => self.lane_failed(lane, e),
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
    /// the next read only after a success (a broken connection does not heal). A lane
    /// that re-read its pending entries moves its streams' cursors past them. With
    /// Sentinel, an answer from a master the sentinels no longer name is an error: what
    /// it returned may never reach the new master, so it is not applied (nor
    /// acknowledged there); the rewind that follows reads the new master's PEL.
    fn land(&mut self, answer: LaneRead) -> Result<Vec<StreamEntry>, RedisError> {
        let LaneRead {
            lane,
            conn,
            result,
            pending,
            unconfirmed,
        } = answer;
        self.busy.remove(&lane);
        let entries = result?;
        if let Some((connected, named)) = conn.as_ref().and_then(|c| self.deployment.moved(c)) {
            return Err(RedisError::MasterMoved {
                context: "XREADGROUP",
                connected,
                named,
            });
        }
        if self.wait_replicas > 0 && pending.is_none() && !entries.is_empty() {
            self.round_trips += 1; // the WAIT
        }
        match (unconfirmed, conn) {
            (Some(e), Some(conn)) => {
                self.held = Some(Held {
                    lane,
                    conn,
                    entries,
                });
                return Err(e);
            }
            (_, Some(conn)) => {
                self.idle.insert(lane, conn);
            }
            (_, None) => {}
        }
        if let Some(pending) = &pending {
            self.advance(pending, &entries);
        }
        self.lane_answered(lane);
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

    /// The delivery counts of the pending entries a recovering lane re-read.
    async fn fill_lane_deliveries(
        &mut self,
        pending: &[(Arc<str>, EntryId)],
        entries: &mut [StreamEntry],
    ) -> Result<(), RedisError> {
        for (stream, _) in pending {
            self.fill_deliveries(stream, entries).await?;
        }
        Ok(())
    }

    /// One lane's `XREADGROUP` over `streams` from their cursors: blocking up to `block`
    /// for new entries (zero: take what is there, the caller has a batch waiting); a
    /// re-read of pending entries (`new` false) never blocks.
    fn lane_cmd(
        &self,
        streams: &[(Arc<str>, Cursor)],
        count: usize,
        block: Duration,
        new: bool,
    ) -> redis::Cmd {
        let mut cmd = self.xreadgroup(count);
        if !block.is_zero() && new {
            let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS");
        for (s, _) in streams {
            cmd.arg(s.as_ref());
        }
        for (_, c) in streams {
            match c {
                Cursor::Pending(id) => cmd.arg(id.to_string()),
                Cursor::New => cmd.arg(">"),
            };
        }
        cmd
    }

    /// Sends a read for each lane with no read in flight and none waiting: a blocking
    /// read of new entries, or for a lane recovering from an outage a re-read of its
    /// pending entries. Connecting is part of the read, so a lane whose master is away
    /// holds up no other.
    pub(super) fn start_reads(&mut self, block: Duration, count: usize) {
        let mut lanes: BTreeMap<u16, Vec<(Arc<str>, Cursor)>> = BTreeMap::new();
        for (s, c) in &self.streams {
            let lane = self.lane(s);
            let paused = *c == Cursor::New && self.paused.contains(s);
            if (*c == Cursor::New || self.in_outage(lane)) && !paused {
                lanes.entry(lane).or_default().push((s.clone(), *c));
            }
        }
        let timeout = block + Duration::from_secs(10);
        let now = Instant::now();
        self.cooling.retain(|_, until| *until > now);
        for (lane, streams) in lanes {
            if self.busy.contains(&lane) || self.cooling.contains_key(&lane) {
                continue;
            }
            let pending: Option<Vec<(Arc<str>, EntryId)>> = self.in_outage(lane).then(|| {
                streams
                    .iter()
                    .filter_map(|(s, c)| match c {
                        Cursor::Pending(id) => Some((s.clone(), *id)),
                        Cursor::New => None,
                    })
                    .collect()
            });
            let cmd = self.lane_cmd(&streams, count, block, pending.is_none());
            self.round_trips += 1;
            self.busy.insert(lane);
            // A connection to a master the sentinels no longer name is not read from again.
            let conn = self
                .idle
                .remove(&lane)
                .filter(|c| self.deployment.moved(c).is_none());
            let connect = conn
                .is_none()
                .then(|| (self.deployment.clone(), self.client_name()));
            // WAIT confirms reads of new entries only: a re-read of the PEL is not
            // replicated, so it would prove nothing.
            let replicas = if pending.is_none() {
                self.wait_replicas
            } else {
                0
            };
            self.in_flight.push(
                async move {
                    let (conn, result, unconfirmed) =
                        lane_read(conn, connect, cmd, timeout, replicas).await;
                    LaneRead {
                        lane,
                        conn,
                        result,
                        pending,
                        unconfirmed,
                    }
                }
                .boxed(),
            );
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
            let pending = answer.pending.clone();
            let mut entries = match self.land(answer) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "a last read failed: its entries stay pending");
                    continue;
                }
            };
            // A recovering lane's re-read: its delivery counts, for `max_deliveries`;
            // without them its entries stay pending rather than skip that check.
            if let Some(pending) = pending
                && let Err(e) = self.fill_lane_deliveries(&pending, &mut entries).await
            {
                tracing::warn!(error = %e, "a last re-read's delivery counts failed: its entries stay pending");
                continue;
            }
            out.extend(entries);
        }
        out
    }
}

/// What one lane's read gives back: its connection (none when connecting failed), the
/// reply, and whether the replicas failed to confirm it (`redis.wait_replicas`).
type LaneAnswer = (
    Option<Blocking>,
    Result<Vec<StreamEntry>, RedisError>,
    Option<RedisError>,
);

/// One lane's read on its connection, or on a new one (`connect`: the deployment and
/// the client name to give it), within `timeout` (the connection has no response
/// timeout of its own: it would cut `BLOCK` short); with `replicas`
/// (`redis.wait_replicas`), the `WAIT` that confirms what it returned.
async fn lane_read(
    conn: Option<Blocking>,
    connect: Option<(Deployment, String)>,
    cmd: redis::Cmd,
    timeout: Duration,
    replicas: u32,
) -> LaneAnswer {
    let mut conn = match (conn, connect) {
        (Some(conn), _) => conn,
        (None, Some((deployment, name))) => match open(&deployment, &name).await {
            Ok(conn) => conn,
            Err(e) => return (None, Err(e), None),
        },
        (None, None) => {
            let e = RedisError::Invalid("a lane's read has no connection".into());
            return (None, Err(e), None);
        }
    };
    let result = match tokio::time::timeout(timeout, entries_of(&mut conn, &cmd)).await {
        Err(_) => Err(RedisError::Timeout {
            context: "XREADGROUP".into(),
            timeout,
        }),
        Ok(r) => r,
    };
    let mut unconfirmed = None;
    let result = match result {
        Ok(reply) if replicas > 0 && !reply.is_empty() => {
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
    (Some(conn), result, unconfirmed)
}

/// The entries an XREADGROUP `cmd` delivers on `conn`: read straight from the reply
/// on redsink's own connection (`redis::raw`), else from redis-rs' `Value`.
async fn entries_of(conn: &mut Blocking, cmd: &redis::Cmd) -> Result<Vec<StreamEntry>, RedisError> {
    let reply = match conn {
        Blocking::Raw(raw) | Blocking::RawMaster(raw, _) => match raw.read(cmd).await {
            Ok(Ok(entries)) => return Ok(entries),
            Ok(Err(value)) => value.extract_error(),
            Err(e) => Err(e),
        },
        other => cmd.query_async::<Value>(other).await,
    };
    reply
        .map_err(RedisError::redis("XREADGROUP"))
        .and_then(parse_read_reply)
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
    // The reader's connections have no response timeout (it would cut BLOCK short):
    // bound the WAIT here, or a master that vanished without a reset would hang the read.
    let bound = WAIT_WITHIN + Duration::from_secs(5);
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(replicas).arg(within_ms);
    let acked: u64 = tokio::time::timeout(bound, cmd.query_async::<u64>(conn))
        .await
        .map_err(|_| RedisError::Timeout {
            context: format!("WAIT after {context}"),
            timeout: bound,
        })?
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

/// A new connection for a lane's reads, named `name` for the same-name check at start
/// ([`Reader::namesakes`]). Naming is best effort: an ACL without `client|setname`
/// only weakens that check.
async fn open(deployment: &Deployment, name: &str) -> Result<Blocking, RedisError> {
    let mut conn = tokio::time::timeout(CONNECT_WITHIN, deployment.blocking())
        .await
        .map_err(|_| RedisError::Timeout {
            context: "connecting a reader".into(),
            timeout: CONNECT_WITHIN,
        })??;
    // Bounded like every command on this connection (it has no response timeout).
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("SETNAME").arg(name);
    match tokio::time::timeout(CONNECT_WITHIN, cmd.query_async::<()>(&mut conn)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "naming a reader's connection failed"),
        Err(_) => {
            return Err(RedisError::Timeout {
                context: "naming a reader's connection".into(),
                timeout: CONNECT_WITHIN,
            });
        }
    }
    Ok(conn)
}
