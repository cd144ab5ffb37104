//! Read: Redis Streams → [`StreamEntry`] through a consumer group.
//! Input: configured stream patterns; output: batches of entries, own PEL first.
//! I/O: yes (one dedicated connection for blocking reads, a shared one for the rest).
//! Errors: [`RedisError`]; `is_retryable` tells the pipeline to back off and rewind.
//!
//! The blocking connection has no response timeout (redis-rs's default 500 ms would
//! cut every `BLOCK` short) and an outer `tokio::time::timeout` instead; nothing else is
//! sent on it, because a `BLOCK` stalls every other command on its connection.
//!
//! With Sentinel, what a read returns from a master the sentinels no longer name is not
//! returned ([`RedisError::MasterMoved`]: the rewind that follows reads the new master's
//! PEL). With `redis.wait_replicas`, what a read returns is held until that many replicas
//! confirm it (`WAIT`), asked again at each call ([`RedisError::NotReplicated`] until
//! then; nothing is re-read, so delivery counts do not grow).
//!
//! This file holds the [`Reader`], its cursors and the read round; `lanes` keeps the
//! blocking reads in flight (one per hash-slot lane), `pending` re-reads our own PEL
//! with its delivery counts, `claim` takes over what other consumers left (XAUTOCLAIM)
//! and tidies the group's consumers, `outage` lets one cluster lane fail and recover
//! alone.

mod claim;
mod lanes;
mod outage;
mod pending;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;

use crate::entry::{EntryId, StreamEntry};
use crate::redis::{Blocking, Control, Deployment, RedisError, at_once, inspect, range, slot};

use lanes::{Held, LaneRead};
pub use outage::LaneEvent;

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
    /// Lanes whose last read was redirected (MOVED/ASK) or failed, not read again
    /// before then.
    cooling: HashMap<u16, Instant>,
    /// Cluster lanes that failed and have not answered since (see `outage`).
    outages: HashMap<u16, outage::Outage>,
    /// Outages begun or ended, for the pipeline to log ([`Reader::take_lane_events`]).
    lane_events: Vec<LaneEvent>,
    /// Where each stream's next XAUTOCLAIM scan starts.
    claim_cursors: HashMap<Arc<str>, EntryId>,
    /// Commands sent to read entries (XREADGROUP, and XPENDING for delivery counts).
    round_trips: u64,
    /// Ends the client name of the blocking connections (see [`Reader::client_name`]).
    client_tag: String,
    /// `redis.wait_replicas`: entries are returned only once this many replicas hold them.
    wait_replicas: u32,
    /// What a read returned that the replicas have not confirmed yet.
    held: Option<Held>,
    /// Streams not read for new entries for now ([`Reader::pause`]).
    paused: HashSet<Arc<str>>,
}

impl Reader {
    /// A reader of `group` as `consumer`, with the deployment and shared connection that
    /// [`connect`](crate::redis::connect) returns.
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
            outages: HashMap::new(),
            lane_events: Vec::new(),
            claim_cursors: HashMap::new(),
            round_trips: 0,
            client_tag: String::new(),
            wait_replicas: 0,
            held: None,
            paused: HashSet::new(),
        }
    }

    /// Reads no new entries of `streams` until the next call (their own pending
    /// entries are still re-read): the pipeline holds back streams that run ahead of
    /// the others (transaction mode). Streams not among the read ones are ignored.
    pub fn pause(&mut self, streams: HashSet<Arc<str>>) {
        self.paused = streams;
    }

    /// Whether a read's entries wait for the replicas' confirmation
    /// (`redis.wait_replicas`).
    pub fn holds_unconfirmed(&self) -> bool {
        self.held.is_some()
    }

    /// Returns entries only once `replicas` replicas hold them (`WAIT` after each read
    /// that returned some): a failover cannot then take back what was applied.
    #[must_use]
    pub fn with_wait_replicas(mut self, replicas: u32) -> Self {
        self.wait_replicas = replicas;
        self
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
        lane_of(&self.deployment, stream)
    }

    /// Creates the group on each stream (MKSTREAM) and starts reading them, own PEL first.
    /// Streams already being read are left as they are. The groups are created many at a
    /// time ([`at_once`]: one after the other, 1,600 streams took 0.2 s to start). On an
    /// error, the streams before the one that failed (in `names`' order) are read, the
    /// others are not.
    pub async fn add_streams(&mut self, names: &[String], start: &str) -> Result<(), RedisError> {
        let new: Vec<&str> = {
            let mut seen: HashSet<&str> = self.streams.iter().map(|(s, _)| s.as_ref()).collect();
            names
                .iter()
                .map(String::as_str)
                .filter(|name| seen.insert(name))
                .collect()
        };
        let created = self.create_groups(&new, start).await;
        for (name, result) in new.into_iter().zip(created) {
            result?;
            self.streams
                .push((Arc::from(name), Cursor::Pending(EntryId::ZERO)));
        }
        Ok(())
    }

    /// Creates the group on each stream (MKSTREAM), 64 at a time: for each, `true` when
    /// it had to be created, `false` when it was there.
    async fn create_groups(
        &mut self,
        streams: &[&str],
        start: &str,
    ) -> Vec<Result<bool, RedisError>> {
        let cluster = self.deployment.is_cluster();
        // Owned, so that the future is `Send` (a closure over references in it is not).
        let creates: Vec<_> = streams
            .iter()
            .map(|name| {
                let (mut control, group) = (self.control.clone(), self.group.clone());
                let (name, start) = (name.to_string(), start.to_string());
                async move { create_group(&mut control, cluster, &group, &name, &start).await }
            })
            .collect();
        at_once(creates).await
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

    /// The control connection, for the administrative commands of
    /// [`admin`](crate::redis::admin).
    pub fn control(&mut self) -> &mut Control {
        &mut self.control
    }

    /// The streams' and their groups' counts (for the metrics): `(stream, dead-letter
    /// stream)` → [`inspect::gauges`].
    pub fn gauges(
        &self,
        streams: Vec<(Arc<str>, String)>,
    ) -> impl Future<Output = inspect::Gauges> + Send + 'static {
        let control = self.control.clone();
        async move { inspect::gauges(&control, streams).await }
    }

    /// Commands sent to read entries so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// Reads up to `count` entries per stream: our own pending entries while there are
    /// any (no blocking), then new ones, blocking up to `block` (zero: no `BLOCK`, only
    /// what is there). A lane's read still in flight from an earlier call counts toward
    /// the bound: at most one per lane.
    ///
    /// Cancel safety: not cancel safe. A cancelled read can leave entries in our PEL that
    /// were never returned; they are read again after [`Reader::rewind`] or a restart.
    pub async fn read(
        &mut self,
        block: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        if let Some(held) = self.held.take() {
            return self.confirm_held(held).await;
        }
        // A lane in an outage re-reads its pending entries on its own connection, among
        // the lanes' reads, so that waiting for its master holds up no other lane.
        let pending: Vec<(Arc<str>, EntryId)> = self
            .streams
            .iter()
            .filter_map(|(s, c)| match c {
                Cursor::Pending(id) if !self.in_outage(self.lane(s)) => Some((s.clone(), *id)),
                _ => None,
            })
            .collect();
        if !pending.is_empty() {
            return self.read_pending(&pending, count).await;
        }
        if self.streams.is_empty() {
            tokio::time::sleep(block).await;
            return Ok(Vec::new());
        }
        self.start_reads(block, count);
        if self.in_flight.is_empty() {
            // Every lane is waiting out a redirect (a slot being migrated) or an outage.
            let until = self.cooling.values().min().copied();
            let wait = until.map_or(block, |t| t.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait.min(block).max(Duration::from_millis(1))).await;
            return Ok(Vec::new());
        }
        self.land_answered().await
    }
}

/// The lane `stream` is read in: its hash slot on a cluster, else the one lane 0.
fn lane_of(deployment: &Deployment, stream: &str) -> u16 {
    if deployment.is_cluster() {
        slot(stream.as_bytes())
    } else {
        0
    }
}

/// Creates `group` on `stream` (MKSTREAM): `true` when it had to be created, `false`
/// when it was there.
async fn create_group(
    control: &mut Control,
    cluster: bool,
    group: &str,
    stream: &str,
    start: &str,
) -> Result<bool, RedisError> {
    let result: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async(control)
        .await;
    match result {
        Ok(()) => {
            tracing::info!(stream, group, start, "created consumer group");
            Ok(true)
        }
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) if matches!(e.code(), Some("MOVED" | "ASK")) && !cluster => {
            Err(RedisError::Invalid(format!(
                "redis: creating group {group} on stream {stream}: the server answered {}: \
                 it is a Redis Cluster node; set redis.mode = \"cluster\"",
                e.code().unwrap_or_default()
            )))
        }
        Err(e) => Err(RedisError::Redis {
            context: format!("creating group {group} on stream {stream}"),
            source: e,
        }),
    }
}
