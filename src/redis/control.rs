//! [`Control`] is the shared, non-blocking connection every module sends its commands
//! through; it implements redis-rs's `ConnectionLike`, so `query_async(&mut control)` works
//! the same in all three modes:
//! - standalone: a `ConnectionManager` (reconnects by itself);
//! - cluster: redis-rs's cluster connection (routes by key, follows MOVED/ASK, refreshes
//!   the slot map after a failover). Commands with keys in different slots cannot share a
//!   pipeline there: [`pipeline_by_key`](super::pipeline_by_key) splits them;
//! - sentinel: a connection to the master the sentinels name, dropped after a connection
//!   error or a `READONLY` reply (the master was demoted) so that the next command asks the
//!   sentinels again — redis-rs resolves the master only once (its issue #1438) — and
//!   replaced before the next command as soon as the sentinels name another master
//!   (`sentinel`: the old one accepts commands for seconds after a failover, and what it
//!   accepts then is thrown away).
//!
//! [`Blocking`] is a reader's connection for blocking reads.

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::Mutex;

use super::RedisError;
use super::raw::RawConn;
use super::route::master_slots;
use super::sentinel::{MasterAddr, MasterConnection, Sentinels};

/// The shared connection for non-blocking commands (see the module docs).
#[derive(Clone)]
pub enum Control {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelControl),
}

impl Control {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// With Sentinel: `(connected, named)` when this connection goes to a master the
    /// sentinels no longer name (it is replaced before its next command).
    pub async fn moved(&self) -> Option<(MasterAddr, MasterAddr)> {
        match self {
            Self::Sentinel(s) => s.moved().await,
            _ => None,
        }
    }

    /// Every key matching `glob` of type stream, on every master of a cluster.
    pub async fn scan_streams(&mut self, glob: &str) -> Result<Vec<String>, RedisError> {
        let mut out = Vec::new();
        // On a cluster, SCAN goes to each master in turn, addressed by a slot it serves
        // (so the connection's own slot map, addresses and TLS names apply).
        let targets: Vec<Option<u16>> = match self {
            Self::Cluster(conn) => {
                let text: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(conn)
                    .await
                    .map_err(RedisError::redis("CLUSTER NODES"))?;
                master_slots(&text).into_iter().map(Some).collect()
            }
            _ => vec![None],
        };
        for target in targets {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(glob)
                    .arg("COUNT")
                    .arg(1000)
                    .arg("TYPE")
                    .arg("stream");
                let context = || format!("scanning for streams matching {glob}");
                let reply: Value = match (&mut *self, target) {
                    (Self::Cluster(conn), Some(slot)) => conn
                        .route_command(
                            cmd,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                                Route::new(slot, SlotAddr::Master),
                            )),
                        )
                        .await
                        .map_err(RedisError::redis(context()))?,
                    _ => cmd
                        .query_async(&mut *self)
                        .await
                        .map_err(RedisError::redis(context()))?,
                };
                let (next, keys): (u64, Vec<String>) =
                    redis::from_redis_value(reply).map_err(|e| RedisError::Reply {
                        command: "SCAN",
                        detail: e.to_string(),
                    })?;
                out.extend(keys);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl ConnectionLike for Control {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(s) => Box::pin(async move {
                let mut conn = s.connection().await?;
                let result = conn.req_packed_command(cmd).await;
                s.after(result.as_ref().err()).await;
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(s) => Box::pin(async move {
                let mut conn = s.connection().await?;
                let result = conn.req_packed_commands(pipeline, offset, count).await;
                s.after(result.as_ref().err()).await;
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(_) => 0,
        }
    }
}

/// A connection to the master the sentinels name, asked again after a failure or when
/// they name another master.
#[derive(Clone)]
pub struct SentinelControl {
    sentinels: Arc<Sentinels>,
    current: Arc<Mutex<Option<MasterConnection>>>,
    config: AsyncConnectionConfig,
}

impl SentinelControl {
    /// Asks the sentinels for the master on first use.
    pub(super) fn new(sentinels: Arc<Sentinels>, config: AsyncConnectionConfig) -> Self {
        Self {
            sentinels,
            current: Arc::default(),
            config,
        }
    }

    pub(super) async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut current = self.current.lock().await;
        if let Some((conn, addr)) = current.as_ref() {
            match self.sentinels.moved(addr) {
                None => return Ok(conn.clone()),
                Some(named) => {
                    tracing::info!(
                        from = %addr,
                        to = %named,
                        "reconnecting to the master the sentinels name"
                    );
                }
            }
        }
        let (conn, addr) = self.sentinels.open(&self.config).await?;
        *current = Some((conn.clone(), addr));
        Ok(conn)
    }

    /// `(connected, named)` when the shared connection goes to a master the sentinels no
    /// longer name (it is replaced before its next command).
    pub(super) async fn moved(&self) -> Option<(MasterAddr, MasterAddr)> {
        let current = self.current.lock().await;
        let addr = &current.as_ref()?.1;
        self.sentinels
            .moved(addr)
            .map(|named| (addr.clone(), named))
    }

    /// Forgets the connection after an error that means the master may have moved.
    async fn after(&self, error: Option<&redis::RedisError>) {
        if let Some(e) = error
            && master_may_have_moved(e)
        {
            tracing::warn!(error = %e, "redis master unreachable or demoted: asking the sentinels again");
            *self.current.lock().await = None;
        }
    }
}

fn master_may_have_moved(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

/// A connection for blocking reads.
pub enum Blocking {
    /// redsink's own, to a standalone Redis over plain TCP (`raw`).
    Raw(RawConn),
    /// redsink's own, to the master the sentinels named when it was opened (plain TCP).
    RawMaster(RawConn, MasterAddr),
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
    /// To the master the sentinels named when it was opened (its address).
    Master(MultiplexedConnection, MasterAddr),
}

impl ConnectionLike for Blocking {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Raw(c) | Self::RawMaster(c, _) => c.req_packed_command(cmd),
            Self::Single(c) | Self::Master(c, _) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Raw(c) | Self::RawMaster(c, _) => c.req_packed_commands(pipeline, offset, count),
            Self::Single(c) | Self::Master(c, _) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Raw(c) | Self::RawMaster(c, _) => c.get_db(),
            Self::Single(c) | Self::Master(c, _) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How many of [`at_once`]'s asks are in flight together.
const AT_ONCE: usize = 64;

/// Runs `asks` (each a command or two on a clone of the shared [`Control`]: one
/// multiplexed connection, so they travel pipelined), up to 64 at a time, and returns
/// their answers in `asks`' order: for the callers that ask the same of many streams
/// (1,600 of them one after the other took seconds).
pub async fn at_once<F: Future>(asks: Vec<F>) -> Vec<F::Output> {
    use futures_util::StreamExt as _;
    futures_util::stream::iter(asks)
        .buffered(AT_ONCE)
        .collect()
        .await
}
