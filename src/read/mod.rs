//! Read: Redis Streams → [`StreamEntry`] through a consumer group.
//! Input: configured stream patterns; output: batches of entries, own PEL first.
//! I/O: yes (one dedicated connection for blocking reads, a shared one for the rest).
//! Errors: [`ReadError`]; `is_retryable` tells the pipeline to back off and rewind.
//!
//! The blocking connection has no response timeout (redis-rs's default 500 ms would
//! cut every `BLOCK` short) and an outer `tokio::time::timeout` instead; nothing else is
//! sent on it, because a `BLOCK` stalls every other command on its connection.

pub mod admin;
pub mod conn;
mod entry;
pub mod inspect;
mod pattern;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::Value;

use crate::config::RedisConfig;

pub use conn::{Control, Deployment};
pub use entry::{EntryId, StreamEntry};
pub use pattern::StreamPattern;

/// The most entries one XAUTOCLAIM takes over per stream and round (it scans at most
/// ten times as many pending entries).
const CLAIM_COUNT: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
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
    /// A request that cannot be carried out as asked (operator commands).
    #[error("{0}")]
    Invalid(String),
}

impl ReadError {
    fn redis(context: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Self {
        let context = context.into();
        move |source| Self::Redis { context, source }
    }

    /// Connection trouble, timeouts, a loading or failing-over server: back off and retry.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } => true,
            Self::Redis { source, .. } => redis_retryable(source),
            Self::Reply { .. } | Self::Invalid(_) => false,
        }
    }
}

/// How long opening a reader's connection may take (a cluster connection also loads the
/// slot map).
const CONNECT_WITHIN: Duration = Duration::from_secs(15);

/// A cluster refused the command without running it: the slot moved or is migrating, or
/// the cluster is (briefly) down.
fn refused_by_cluster(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN"))
}

/// Shared by read and ack: which Redis errors are worth retrying.
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

/// Opens the shared (non-blocking) connection to the configured deployment.
pub async fn connect_control(redis: &RedisConfig) -> Result<Control, ReadError> {
    Ok(connect(redis).await?.1)
}

/// The configured deployment (for a [`Reader`]'s own connections) and its shared connection.
pub async fn connect(redis: &RedisConfig) -> Result<(Deployment, Control), ReadError> {
    let deployment = Deployment::new(redis)?;
    let control = deployment.control().await?;
    Ok((deployment, control))
}

/// Expands patterns into stream names: ranges and exact names as they are, globs by SCAN
/// (on every master of a cluster); each name once, in pattern order.
pub async fn discover(
    control: &mut Control,
    patterns: &[StreamPattern],
) -> Result<Vec<String>, ReadError> {
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

/// Up to `count` entries of `stream` from `start` to `end` (XRANGE syntax: an ID,
/// `(ID` for after it, `-`, `+`), outside any consumer group.
pub async fn range(
    control: &mut Control,
    stream: &Arc<str>,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<StreamEntry>, ReadError> {
    const CMD: &str = "XRANGE";
    let reply: Value = redis::cmd(CMD)
        .arg(stream.as_ref())
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(control)
        .await
        .map_err(ReadError::redis(format!("XRANGE {stream} {start} {end}")))?;
    let mut out = Vec::new();
    parse_entries(stream, reply, CMD, &mut out)?;
    Ok(out)
}

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
    idle: HashMap<u16, conn::Blocking>,
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
    conn: conn::Blocking,
    result: Result<Value, ReadError>,
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
            conn::slot(stream.as_bytes())
        } else {
            0
        }
    }

    /// Expands patterns into stream names: ranges and exact names as they are, globs by SCAN.
    pub async fn discover(&mut self, patterns: &[StreamPattern]) -> Result<Vec<String>, ReadError> {
        discover(&mut self.control, patterns).await
    }

    /// Creates the group on each stream (MKSTREAM) and starts reading them, own PEL first.
    /// Streams already being read are left as they are.
    pub async fn add_streams(&mut self, names: &[String], start: &str) -> Result<(), ReadError> {
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

    async fn create_group(&mut self, stream: &str, start: &str) -> Result<(), ReadError> {
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
                Err(ReadError::Invalid(format!(
                    "redis: creating group {} on stream {stream}: the server answered {}: \
                     it is a Redis Cluster node; set redis.mode = \"cluster\"",
                    self.group,
                    e.code().unwrap_or_default()
                )))
            }
            Err(e) => Err(ReadError::Redis {
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
    ) -> Result<Vec<StreamEntry>, ReadError> {
        self.round_trips += 1;
        range(&mut self.control, stream, start, end, count).await
    }

    /// The ID of the newest entry of `stream`, if it has any.
    pub async fn last_entry(&mut self, stream: &str) -> Result<Option<EntryId>, ReadError> {
        inspect::last_entry(&mut self.control, stream).await
    }

    /// After an error the reply to a read may have been lost, leaving entries in our
    /// PEL that we never saw: read the PEL again from the start. Call only when every
    /// entry read so far has been acked or is about to be (else it would be read twice).
    pub async fn rewind(&mut self) -> Result<(), ReadError> {
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
    ) -> Result<Option<inspect::StreamStatus>, ReadError> {
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
    ) -> Result<Vec<StreamEntry>, ReadError> {
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
                Err(ReadError::Redis { source, .. }) if refused_by_cluster(&source) => {
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
    fn land(&mut self, answer: LaneRead) -> Result<Vec<StreamEntry>, ReadError> {
        let LaneRead { lane, conn, result } = answer;
        self.busy.remove(&lane);
        let entries = result.and_then(parse_read_reply)?;
        self.idle.insert(lane, conn);
        Ok(entries)
    }

    /// Sends a blocking read for each lane with no read in flight.
    async fn start_reads(&mut self, block: Duration, count: usize) -> Result<(), ReadError> {
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
                        .map_err(|_| ReadError::Timeout {
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
                        Err(_) => Err(ReadError::Timeout {
                            context: "XREADGROUP".into(),
                            timeout,
                        }),
                        Ok(r) => r.map_err(ReadError::redis("XREADGROUP")),
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
    ) -> Result<Vec<StreamEntry>, ReadError> {
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
                .map_err(ReadError::redis("XREADGROUP (own pending entries)"))?;
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
    ) -> Result<(), ReadError> {
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
            .map_err(ReadError::redis(format!("XPENDING on {stream}")))?;
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
                .map_err(ReadError::redis(format!("XAUTOCLAIM on {stream}")))
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

fn reply_err(command: &'static str, detail: impl Into<String>) -> ReadError {
    ReadError::Reply {
        command,
        detail: detail.into(),
    }
}

fn bytes(v: Value, command: &'static str) -> Result<Vec<u8>, ReadError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(reply_err(
            command,
            format!("expected a string, got {other:?}"),
        )),
    }
}

/// `[[stream, [[id, [field, value, …] | nil], …]], …]` (RESP2) or a map (RESP3).
fn parse_read_reply(reply: Value) -> Result<Vec<StreamEntry>, ReadError> {
    const CMD: &str = "XREADGROUP";
    let streams: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop().unwrap_or(Value::Nil);
                    let name = pair.pop().unwrap_or(Value::Nil);
                    Ok((name, entries))
                }
                other => Err(reply_err(CMD, format!("bad stream item {other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(reply_err(CMD, format!("bad reply {other:?}"))),
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        let name = String::from_utf8(bytes(name, CMD)?)
            .map_err(|_| reply_err(CMD, "stream name is not UTF-8"))?;
        let stream: Arc<str> = Arc::from(name);
        parse_entries(&stream, entries, CMD, &mut out)?;
    }
    Ok(out)
}

fn parse_entries(
    stream: &Arc<str>,
    entries: Value,
    command: &'static str,
    out: &mut Vec<StreamEntry>,
) -> Result<(), ReadError> {
    let Value::Array(entries) = entries else {
        return Err(reply_err(command, "entries are not an array"));
    };
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            return Err(reply_err(command, "entry is not an array"));
        };
        if parts.len() != 2 {
            return Err(reply_err(command, "entry is not [id, fields]"));
        }
        let fields = parts.pop().unwrap_or(Value::Nil);
        let id_bytes = bytes(parts.pop().unwrap_or(Value::Nil), command)?;
        let id_text = std::str::from_utf8(&id_bytes)
            .map_err(|_| reply_err(command, "entry ID is not UTF-8"))?;
        let id = EntryId::parse(id_text)
            .ok_or_else(|| reply_err(command, format!("bad entry ID {id_text}")))?;
        let fields = match fields {
            // The entry was deleted (XDEL/XTRIM) while pending: its ID is all that is left.
            Value::Nil => None,
            Value::Array(flat) => {
                if flat.len() % 2 != 0 {
                    return Err(reply_err(command, "odd number of field items"));
                }
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(f), Some(v)) = (it.next(), it.next()) {
                    pairs.push((bytes(f, command)?, bytes(v, command)?));
                }
                Some(pairs)
            }
            Value::Map(map) => Some(
                map.into_iter()
                    .map(|(f, v)| Ok((bytes(f, command)?, bytes(v, command)?)))
                    .collect::<Result<_, ReadError>>()?,
            ),
            other => return Err(reply_err(command, format!("bad fields {other:?}"))),
        };
        out.push(StreamEntry {
            deliveries: 0,
            stream: stream.clone(),
            id,
            fields,
        });
    }
    Ok(())
}

/// `[next-cursor, [[id, fields], …], [deleted-id, …]]` → (next cursor, entries). The
/// deleted IDs (Redis ≥ 7) were removed from the PEL by XAUTOCLAIM itself; they are
/// returned as entries without fields so that their loss is reported, not silent.
fn parse_autoclaim_reply(
    stream: &Arc<str>,
    reply: Value,
) -> Result<(EntryId, Vec<StreamEntry>), ReadError> {
    const CMD: &str = "XAUTOCLAIM";
    let Value::Array(parts) = reply else {
        return Err(reply_err(CMD, "reply is not an array"));
    };
    let mut parts = parts.into_iter();
    let (Some(next), Some(claimed)) = (parts.next(), parts.next()) else {
        return Err(reply_err(CMD, "reply is too short"));
    };
    let next = String::from_utf8(bytes(next, CMD)?)
        .ok()
        .and_then(|t| EntryId::parse(&t))
        .ok_or_else(|| reply_err(CMD, "bad cursor"))?;
    let mut out = Vec::new();
    parse_entries(stream, claimed, CMD, &mut out)?;
    if let Some(Value::Array(deleted)) = parts.next() {
        for id in deleted {
            let text = String::from_utf8(bytes(id, CMD)?).map_err(|_| reply_err(CMD, "bad ID"))?;
            let id = EntryId::parse(&text).ok_or_else(|| reply_err(CMD, "bad ID"))?;
            out.push(StreamEntry {
                deliveries: 0,
                stream: stream.clone(),
                id,
                fields: None,
            });
        }
    }
    Ok((next, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_resp2_read_reply_with_deleted_entry() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s:0"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-1"),
                    Value::Array(vec![bulk("{\"id\":1}"), bulk("{}")]),
                ]),
                Value::Array(vec![bulk("6-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(&*entries[0].stream, "s:0");
        assert_eq!(entries[0].id, EntryId { ms: 5, seq: 1 });
        let fields = entries[0].fields.as_ref().expect("fields");
        assert_eq!(fields[0].0, b"{\"id\":1}");
        assert!(entries[1].fields.is_none());
        assert!(parse_read_reply(Value::Nil).expect("nil").is_empty());
    }

    #[test]
    fn parses_autoclaim_with_cursor_and_deleted_ids() {
        let reply = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![Value::Array(vec![
                bulk("5-0"),
                Value::Array(vec![bulk("k"), bulk("v")]),
            ])]),
            Value::Array(vec![bulk("6-0")]),
        ]);
        let (next, entries) = parse_autoclaim_reply(&Arc::from("s"), reply).expect("parses");
        assert_eq!(next, EntryId { ms: 7, seq: 0 });
        assert_eq!(entries.len(), 2);
        assert!(entries[0].fields.is_some());
        assert_eq!(entries[1].id, EntryId { ms: 6, seq: 0 });
        assert!(entries[1].fields.is_none(), "deleted while pending");
    }

    #[test]
    fn rejects_malformed_replies_without_panicking() {
        for reply in [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk("s"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk("s"),
                Value::Array(vec![Value::Array(vec![bulk("x-y"), Value::Array(vec![])])]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("s"),
                Value::Array(vec![Value::Array(vec![
                    bulk("1-1"),
                    Value::Array(vec![bulk("f")]),
                ])]),
            ])]),
        ] {
            assert!(parse_read_reply(reply).is_err());
        }
    }
}
