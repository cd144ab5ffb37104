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

/// The answer to one lane's blocking read, with the connection it used.
pub(super) struct LaneRead {
    lane: u16,
    conn: Blocking,
    result: Result<Value, RedisError>,
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
    /// the next read only after a success (a broken connection does not heal).
    fn land(&mut self, answer: LaneRead) -> Result<Vec<StreamEntry>, RedisError> {
        let LaneRead { lane, conn, result } = answer;
        self.busy.remove(&lane);
        let entries = result.and_then(parse_read_reply)?;
        self.idle.insert(lane, conn);
        Ok(entries)
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
            let mut conn = match self.idle.remove(&lane) {
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
            self.in_flight.push(
                async move {
                    let reply = cmd.query_async::<Value>(&mut conn);
                    let result = match tokio::time::timeout(timeout, reply).await {
                        Err(_) => Err(RedisError::Timeout {
                            context: "XREADGROUP".into(),
                            timeout,
                        }),
                        Ok(r) => r.map_err(RedisError::redis("XREADGROUP")),
                    };
                    LaneRead { lane, conn, result }
                }
                .boxed(),
            );
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
