//! Read: Redis Streams → [`StreamEntry`] through a consumer group.
//! Input: configured stream patterns; output: batches of entries, own PEL first.
//! I/O: yes (one dedicated connection for blocking reads, a shared one for the rest).
//! Errors: [`ReadError`]; `is_retryable` tells the pipeline to back off and rewind.
//!
//! The blocking connection has no response timeout (redis-rs's default 500 ms would
//! cut every `BLOCK` short) and an outer `tokio::time::timeout` instead; nothing else is
//! sent on it, because a `BLOCK` stalls every other command on its connection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::Value;

use crate::entry::{EntryId, StreamEntry};
use crate::redis::reply::{parse_autoclaim_reply, parse_read_reply};
use crate::redis::{
    Blocking, CONNECT_WITHIN, Control, Deployment, RedisError, admin, inspect, range,
    refused_by_cluster, slot,
};

/// The most entries one XAUTOCLAIM takes over per stream and round (it scans at most
/// ten times as many pending entries).
const CLAIM_COUNT: usize = 500;

/// Where the reader is in one stream: draining its own PEL, or reading new entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Re-read our own pending entries after this ID (`0` = from the start).
    Pending(EntryId),
    /// Read new entries (`>`).
    New,
}

/// Reads the configured streams through one consumer group.
///
/// Streams are read in lanes: one XREADGROUP covers the streams of one lane. Standalone
/// and Sentinel have one lane for all streams; a cluster has one per hash slot (a command
/// cannot span slots). Each lane blocks on its own connection, and a lane's read that is
/// still waiting when another lane returns entries stays in flight for the next call.
pub struct Reader {
    deployment: Deployment,
    control: Control,
    group: String,
    consumer: String,
    streams: Vec<(Arc<str>, Cursor)>,
    /// Lanes' connections between reads.
    idle: HashMap<u16, Blocking>,
    /// Blocking reads sent and not yet answered, one per lane at most.
    in_flight: FuturesUnordered<BoxFuture<'static, LaneRead>>,
    busy: HashSet<u16>,
    /// Lanes whose last read was redirected (MOVED/ASK), not read again before then.
    cooling: HashMap<u16, Instant>,
    /// Where each stream's next XAUTOCLAIM scan starts.
    claim_cursors: HashMap<Arc<str>, EntryId>,
    /// Commands sent to read entries (XREADGROUP, and XPENDING for delivery counts).
    round_trips: u64,
}

/// The answer to one lane's blocking read, with the connection it used.
struct LaneRead {
    lane: u16,
    conn: Blocking,
    result: Result<Value, RedisError>,
}

impl Reader {
    /// A reader of `group` as `consumer`, with the deployment and shared connection that
    /// [`connect`] returns.
    pub fn new(deployment: Deployment, control: Control, group: &str, consumer: &str) -> Self {
        Self {
            deployment,
            control,
            group: group.to_string(),
            consumer: consumer.to_string(),
            streams: Vec::new(),
            idle: HashMap::new(),
            in_flight: FuturesUnordered::new(),
            busy: HashSet::new(),
            cooling: HashMap::new(),
            claim_cursors: HashMap::new(),
            round_trips: 0,
        }
    }

    /// `XREADGROUP GROUP <group> <consumer> COUNT <count>`, to be continued.
    fn xreadgroup(&self, count: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        cmd
    }

    /// The lane `stream` is read in.
    fn lane(&self, stream: &str) -> u16 {
        if self.deployment.is_cluster() {
            slot(stream.as_bytes())
        } else {
            0
        }
    }

    /// Creates the group on each stream (MKSTREAM) and starts reading them, own PEL first.
    /// Streams already being read are left as they are.
    pub async fn add_streams(&mut self, names: &[String], start: &str) -> Result<(), RedisError> {
        for name in names {
            if self.streams.iter().any(|(s, _)| s.as_ref() == name) {
                continue;
            }
            self.create_group(name, start).await?;
            self.streams
                .push((Arc::from(name.as_str()), Cursor::Pending(EntryId::ZERO)));
        }
        Ok(())
    }

    async fn create_group(&mut self, stream: &str, start: &str) -> Result<(), RedisError> {
        let result: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&self.group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut self.control)
            .await;
        match result {
            Ok(()) => {
                tracing::info!(stream, group = %self.group, start, "created consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e)
                if matches!(e.code(), Some("MOVED" | "ASK")) && !self.deployment.is_cluster() =>
            {
                Err(RedisError::Invalid(format!(
                    "redis: creating group {} on stream {stream}: the server answered {}: \
                     it is a Redis Cluster node; set redis.mode = \"cluster\"",
                    self.group,
                    e.code().unwrap_or_default()
                )))
            }
            Err(e) => Err(RedisError::Redis {
                context: format!("creating group {} on stream {stream}", self.group),
                source: e,
            }),
        }
    }

    pub fn streams(&self) -> impl Iterator<Item = &Arc<str>> {
        self.streams.iter().map(|(s, _)| s)
    }

    /// Up to `count` entries of `stream` from `start` to `end` (XRANGE syntax: an ID,
    /// `(ID` for after it, `-`, `+`), outside the consumer group.
    pub async fn range(
        &mut self,
        stream: &Arc<str>,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        self.round_trips += 1;
        range(&mut self.control, stream, start, end, count).await
    }

    /// The ID of the newest entry of `stream`, if it has any.
    pub async fn last_entry(&mut self, stream: &str) -> Result<Option<EntryId>, RedisError> {
        inspect::last_entry(&mut self.control, stream).await
    }

    /// After an error the reply to a read may have been lost, leaving entries in our
    /// PEL that we never saw: read the PEL again from the start. Call only when every
    /// entry read so far has been acked or is about to be (else it would be read twice).
    pub async fn rewind(&mut self) -> Result<(), RedisError> {
        // Reads in flight are waited for (a dropped one could still deliver after the
        // re-read below) and their answers dropped: what they delivered is in our PEL.
        self.settle().await;
        self.idle.clear();
        let names: Vec<Arc<str>> = self.streams.iter().map(|(s, _)| s.clone()).collect();
        for (_, cursor) in &mut self.streams {
            *cursor = Cursor::Pending(EntryId::ZERO);
        }
        // A stream deleted and re-created loses its group: make sure each one has it.
        for name in names {
            self.create_group(&name, "0").await?;
        }
        Ok(())
    }

    /// The control connection, for the administrative commands of [`admin`].
    pub fn control(&mut self) -> &mut Control {
        &mut self.control
    }

    /// The stream's and its groups' state (for the metrics).
    pub async fn stream_status(
        &mut self,
        stream: &str,
        dlq: &str,
    ) -> Result<Option<inspect::StreamStatus>, RedisError> {
        inspect::stream_status(&mut self.control, stream, dlq).await
    }

    /// Commands sent to read entries so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// Reads up to `count` entries per stream: our own pending entries while there are
    /// any (no blocking), then new ones, blocking up to `block`. A lane's read still in
    /// flight from an earlier call counts toward the bound: at most one per lane.
    ///
    /// Cancel safety: not cancel safe. A cancelled read can leave entries in our PEL that
    /// were never returned; they are read again after [`Reader::rewind`] or a restart.
    pub async fn read(
        &mut self,
        block: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        let pending: Vec<(Arc<str>, EntryId)> = self
            .streams
            .iter()
            .filter_map(|(s, c)| match c {
                Cursor::Pending(id) => Some((s.clone(), *id)),
                Cursor::New => None,
            })
            .collect();
        if !pending.is_empty() {
            return self.read_pending(&pending, count).await;
        }
        if self.streams.is_empty() {
            tokio::time::sleep(block).await;
            return Ok(Vec::new());
        }
        self.start_reads(block, count).await?;
        if self.in_flight.is_empty() {
            // Every lane is waiting out a redirect (a slot being migrated).
            let until = self.cooling.values().min().copied();
            let wait = until.map_or(block, |t| t.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait.min(block)).await;
            return Ok(Vec::new());
        }
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
    async fn start_reads(&mut self, block: Duration, count: usize) -> Result<(), RedisError> {
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
                    tokio::time::timeout(CONNECT_WITHIN, connect)
                        .await
                        .map_err(|_| RedisError::Timeout {
                            context: "connecting a reader".into(),
                            timeout: CONNECT_WITHIN,
                        })??
                }
            };
            let mut cmd = self.xreadgroup(count);
            cmd.arg("BLOCK").arg(block_ms).arg("STREAMS");
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

    async fn read_pending(
        &mut self,
        pending: &[(Arc<str>, EntryId)],
        count: usize,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        let mut lanes: BTreeMap<u16, Vec<(Arc<str>, EntryId)>> = BTreeMap::new();
        for (s, id) in pending {
            lanes
                .entry(self.lane(s))
                .or_default()
                .push((s.clone(), *id));
        }
        let mut entries = Vec::new();
        for streams in lanes.values() {
            let mut cmd = self.xreadgroup(count);
            cmd.arg("STREAMS");
            for (s, _) in streams {
                cmd.arg(s.as_ref());
            }
            for (_, id) in streams {
                cmd.arg(id.to_string());
            }
            self.round_trips += 1;
            let reply: Value = cmd
                .query_async(&mut self.control)
                .await
                .map_err(RedisError::redis("XREADGROUP (own pending entries)"))?;
            entries.extend(parse_read_reply(reply)?);
        }
        // These were delivered before: ask how often (for max_deliveries).
        for (stream, _) in pending {
            self.fill_deliveries(stream, &mut entries).await?;
        }
        // Advance each stream's cursor past what came back; a stream with nothing left
        // pending switches to new entries.
        for (stream, _) in pending {
            let last = entries
                .iter()
                .filter(|e| e.stream == *stream)
                .map(|e| e.id)
                .max();
            if let Some((_, cursor)) = self.streams.iter_mut().find(|(s, _)| s == stream) {
                *cursor = match last {
                    Some(id) => Cursor::Pending(id),
                    None => Cursor::New,
                };
            }
        }
        if !entries.is_empty() {
            tracing::info!(count = entries.len(), "re-reading own pending entries");
        }
        Ok(entries)
    }

    /// Sets `deliveries` of this consumer's pending entries of `stream` among `entries`,
    /// from XPENDING over their ID range (one round trip).
    async fn fill_deliveries(
        &mut self,
        stream: &Arc<str>,
        entries: &mut [StreamEntry],
    ) -> Result<(), RedisError> {
        let ids: Vec<EntryId> = entries
            .iter()
            .filter(|e| e.stream == *stream && e.fields.is_some())
            .map(|e| e.id)
            .collect();
        let (Some(first), Some(last)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(());
        };
        self.round_trips += 1;
        let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream.as_ref())
            .arg(&self.group)
            .arg(first.to_string())
            .arg(last.to_string())
            .arg(ids.len())
            .arg(&self.consumer)
            .query_async(&mut self.control)
            .await
            .map_err(RedisError::redis(format!("XPENDING on {stream}")))?;
        let counts: HashMap<EntryId, u64> = reply
            .into_iter()
            .filter_map(|(id, _, _, n)| EntryId::parse(&id).map(|id| (id, n)))
            .collect();
        for e in entries.iter_mut().filter(|e| e.stream == *stream) {
            if let Some(n) = counts.get(&e.id) {
                e.deliveries = *n;
            }
        }
        Ok(())
    }

    /// Removes this consumer from the group on every stream where it has nothing
    /// pending (XGROUP DELCONSUMER would drop pending entries), so `XINFO CONSUMERS`
    /// lists live instances only. Reads still in flight are waited for first (what they
    /// deliver is pending, and keeps us in the group). Errors are logged: the next start
    /// cleans up anyway.
    pub async fn leave_group(&mut self) {
        self.settle().await;
        let mut left = 0;
        for (stream, _) in &self.streams {
            match admin::leave_group(&mut self.control, stream, &self.group, &self.consumer).await {
                Ok(true) => left += 1,
                Ok(false) => {
                    tracing::info!(stream = %stream, "entries still pending: staying in the group")
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "leaving the group failed");
                    if e.is_retryable() {
                        // Redis is unreachable: do not wait on every stream in turn.
                        break;
                    }
                }
            }
        }
        tracing::info!(consumer = %self.consumer, streams = left, "left the consumer group");
    }

    /// Waits for every read in flight to end (each within its timeout) and drops what
    /// they returned: it is in our PEL.
    async fn settle(&mut self) {
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

    /// Removes from the group the other consumers that have been idle for `min_idle`
    /// with nothing pending (instances that were killed), so `XINFO CONSUMERS` lists
    /// live instances. A live instance is never idle for long (it reads every `block`),
    /// and one removed by mistake is re-created by its next read.
    pub async fn prune_consumers(&mut self, min_idle: Duration) -> usize {
        let mut pruned = 0;
        for (stream, _) in &self.streams {
            let keep = Some(self.consumer.as_str());
            match admin::prune_consumers(&mut self.control, stream, &self.group, keep, min_idle)
                .await
            {
                Ok(names) => {
                    for name in &names {
                        tracing::info!(stream = %stream, consumer = %name, "removed an idle consumer with nothing pending");
                    }
                    pruned += names.len();
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "pruning idle consumers failed")
                }
            }
        }
        pruned
    }

    /// Takes over entries that have been pending on any consumer of the group for
    /// longer than `min_idle` (a consumer that died) and returns them for processing.
    /// Each stream's scan resumes where the previous round stopped. Entries deleted
    /// from the stream while pending come back without fields (the decoder reports them).
    /// A stream whose XAUTOCLAIM fails is logged and retried next round.
    /// At most `limit` entries are taken over per round.
    pub async fn claim_idle(&mut self, min_idle: Duration, limit: usize) -> Vec<StreamEntry> {
        let idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let streams: Vec<Arc<str>> = self.streams.iter().map(|(s, _)| s.clone()).collect();
        for stream in streams {
            let count = CLAIM_COUNT.min(limit.saturating_sub(out.len()));
            if count == 0 {
                break;
            }
            let start = self
                .claim_cursors
                .get(&stream)
                .copied()
                .unwrap_or(EntryId::ZERO);
            let reply: Result<Value, _> = redis::cmd("XAUTOCLAIM")
                .arg(stream.as_ref())
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(idle_ms)
                .arg(start.to_string())
                .arg("COUNT")
                .arg(count)
                .query_async(&mut self.control)
                .await;
            let parsed = reply
                .map_err(RedisError::redis(format!("XAUTOCLAIM on {stream}")))
                .and_then(|r| parse_autoclaim_reply(&stream, r));
            match parsed {
                Ok((next, mut claimed)) => {
                    self.claim_cursors.insert(stream.clone(), next);
                    if let Err(e) = self.fill_deliveries(&stream, &mut claimed).await {
                        tracing::warn!(stream = %stream, error = %e, "reading delivery counts failed");
                    }
                    if !claimed.is_empty() {
                        tracing::warn!(
                            stream = %stream,
                            count = claimed.len(),
                            "claimed entries left pending by another consumer"
                        );
                    }
                    out.extend(claimed);
                }
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "claiming idle entries failed")
                }
            }
        }
        out
    }
}
