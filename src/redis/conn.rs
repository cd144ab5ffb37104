//! Connections to the configured Redis deployment: one server, a Redis Cluster, or the
//! master that Redis Sentinel names.
//!
//! [`Control`] is the shared, non-blocking connection every module sends its commands
//! through; it implements redis-rs's `ConnectionLike`, so `query_async(&mut control)` works
//! the same in all three modes:
//! - standalone: a `ConnectionManager` (reconnects by itself);
//! - cluster: redis-rs's cluster connection (routes by key, follows MOVED/ASK, refreshes
//!   the slot map after a failover). Commands with keys in different slots cannot share a
//!   pipeline there: [`Control::pipeline_by_key`] splits them;
//! - sentinel: a connection to the master the sentinels name, dropped after a connection
//!   error or a `READONLY` reply (the master was demoted) so that the next command asks the
//!   sentinels again — redis-rs resolves the master only once (its issue #1438).
//!
//! [`Deployment::blocking`] opens a connection without a response timeout for one
//! blocking XREADGROUP (the caller puts an outer timeout around it).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use tokio::sync::Mutex;

use super::RedisError;
use crate::config::{RedisConfig, RedisMode, is_tls_url};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the configured Redis.
#[derive(Clone)]
pub enum Deployment {
    Standalone(Box<redis::Client>),
    Cluster {
        control: Box<ClusterClient>,
        /// Without a (short) response timeout, for blocking reads.
        blocking: Box<ClusterClient>,
    },
    Sentinel(Arc<Mutex<SentinelClient>>),
}

impl Deployment {
    pub fn new(config: &RedisConfig) -> Result<Self, RedisError> {
        let tls = Tls::read(config)?;
        match config.mode {
            RedisMode::Standalone => Ok(Self::Standalone(Box::new(tls.client(&config.url)?))),
            RedisMode::Cluster => {
                let mut seeds = vec![config.url.clone()];
                seeds.extend(config.nodes.iter().cloned());
                Ok(Self::Cluster {
                    control: Box::new(tls.cluster(&seeds, RESPONSE_TIMEOUT, 4)?),
                    // The outer timeout of each blocking read is what limits it. No
                    // retries: a read re-sent after a lost reply would leave what the
                    // first delivered in our PEL unseen; the error makes the pipeline
                    // re-read the PEL instead (MOVED and ASK come back as errors too).
                    blocking: Box::new(tls.cluster(&seeds, Duration::from_secs(24 * 3600), 0)?),
                })
            }
            RedisMode::Sentinel => {
                let name = config.master_name.as_deref().unwrap_or_default();
                Ok(Self::Sentinel(Arc::new(Mutex::new(tls.sentinel(
                    &config.url,
                    &config.nodes,
                    name,
                )?))))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// The shared connection for every non-blocking command.
    pub async fn control(&self) -> Result<Control, RedisError> {
        match self {
            Self::Standalone(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(2);
                client
                    .get_connection_manager_with_config(config)
                    .await
                    .map(Control::Single)
                    .map_err(RedisError::redis("connecting to redis"))
            }
            Self::Cluster { control, .. } => control
                .get_async_connection()
                .await
                .map(Control::Cluster)
                .map_err(RedisError::redis("connecting to the redis cluster")),
            Self::Sentinel(client) => {
                let control = SentinelControl {
                    client: client.clone(),
                    current: Arc::default(),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(RESPONSE_TIMEOUT)),
                };
                // Connect now, so that a wrong address or name is reported at start-up.
                control.connection().await.map_err(RedisError::redis(
                    "connecting to the master through the sentinels",
                ))?;
                Ok(Control::Sentinel(control))
            }
        }
    }

    /// A new connection for one blocking read at a time: no response timeout.
    pub async fn blocking(&self) -> Result<Blocking, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        match self {
            Self::Standalone(client) => client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(Blocking::Single)
                .map_err(RedisError::redis("connecting the reader to redis")),
            Self::Cluster { blocking, .. } => blocking
                .get_async_connection()
                .await
                .map(Blocking::Cluster)
                .map_err(RedisError::redis(
                    "connecting the reader to the redis cluster",
                )),
            Self::Sentinel(client) => client
                .lock()
                .await
                .get_async_connection_with_config(&config)
                .await
                .map(Blocking::Single)
                .map_err(RedisError::redis(
                    "connecting the reader to the master through the sentinels",
                )),
        }
    }
}

/// The TLS files of `[redis]`, read once.
struct Tls {
    ca: Option<Vec<u8>>,
    client: Option<redis::ClientTlsConfig>,
}

impl Tls {
    fn read(config: &RedisConfig) -> Result<Self, RedisError> {
        let read = |path: &Option<String>, what: &str| -> Result<Option<Vec<u8>>, RedisError> {
            path.as_ref()
                .map(|p| {
                    std::fs::read(p)
                        .map_err(|e| RedisError::Invalid(format!("redis.{what} {p}: {e}")))
                })
                .transpose()
        };
        let ca = read(&config.tls_ca_file, "tls_ca_file")?;
        let cert = read(&config.tls_cert_file, "tls_cert_file")?;
        let key = read(&config.tls_key_file, "tls_key_file")?;
        // rustls (rediss://) needs a process-wide crypto provider; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match (cert, key) {
            (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
            (None, None) => None,
            _ => {
                return Err(RedisError::Invalid(
                    "redis.tls_cert_file and redis.tls_key_file go together".into(),
                ));
            }
        };
        Ok(Self { ca, client })
    }

    fn configured(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client.clone(),
            root_cert: self.ca.clone(),
        }
    }

    fn client(&self, url: &str) -> Result<redis::Client, RedisError> {
        if self.configured() {
            redis::Client::build_with_tls(url, self.certificates())
                .map_err(RedisError::redis("opening redis url with TLS"))
        } else {
            redis::Client::open(url).map_err(RedisError::redis("opening redis url"))
        }
    }

    fn cluster(
        &self,
        seeds: &[String],
        response: Duration,
        retries: u32,
    ) -> Result<ClusterClient, RedisError> {
        let first = seeds
            .first()
            .map(|s| s.as_str().into_connection_info())
            .transpose()
            .map_err(RedisError::redis("parsing redis.url"))?;
        let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response)
            .retries(retries);
        if let Some(info) = &first {
            let settings = info.redis_settings();
            if let Some(user) = settings.username() {
                builder = builder.username(user);
            }
            if let Some(password) = settings.password() {
                builder = builder.password(password);
            }
        }
        if seeds.iter().any(|s| is_tls_url(s)) {
            builder = builder.tls(redis::TlsMode::Secure);
        }
        if self.configured() {
            builder = builder.certs(self.certificates());
        }
        builder
            .build()
            .map_err(RedisError::redis("opening the redis cluster seed nodes"))
    }

    /// Sentinel: the sentinels' addresses and credentials come from `nodes`, the master's
    /// credentials, database and TLS from `url`.
    fn sentinel(
        &self,
        url: &str,
        nodes: &[String],
        master: &str,
    ) -> Result<SentinelClient, RedisError> {
        let master_info = url
            .into_connection_info()
            .map_err(RedisError::redis("parsing redis.url"))?;
        let mut addrs = Vec::new();
        let mut sentinel_auth = None;
        for node in nodes {
            let info = node
                .as_str()
                .into_connection_info()
                .map_err(RedisError::redis(format!(
                    "parsing redis.nodes entry {}",
                    crate::config::redact_url(node)
                )))?;
            let s = info.redis_settings();
            if sentinel_auth.is_none() && (s.username().is_some() || s.password().is_some()) {
                sentinel_auth = Some((
                    s.username().map(str::to_string),
                    s.password().map(str::to_string),
                ));
            }
            addrs.push(info.addr().clone());
        }
        let sentinel_tls = nodes.iter().any(|n| is_tls_url(n));
        let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
            .map_err(RedisError::redis("configuring the sentinels"))?;
        let settings = master_info.redis_settings();
        b = b.set_client_to_redis_db(settings.db());
        if let Some(user) = settings.username() {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(password) = settings.password() {
            b = b.set_client_to_redis_password(password);
        }
        if let Some((user, password)) = sentinel_auth {
            if let Some(user) = user {
                b = b.set_client_to_sentinel_username(user);
            }
            if let Some(password) = password {
                b = b.set_client_to_sentinel_password(password);
            }
        }
        if is_tls_url(url) {
            b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            if self.configured() {
                b = b.set_client_to_redis_certificates(self.certificates());
            }
        }
        if sentinel_tls {
            b = b.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if self.configured() {
                b = b.set_client_to_sentinel_certificates(self.certificates());
            }
        }
        b.build()
            .map_err(RedisError::redis("configuring the sentinels"))
    }
}

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

/// A connection that knows whether its commands are routed by hash slot.
pub trait Routed: ConnectionLike + Clone + Send + 'static {
    fn is_cluster(&self) -> bool;
}

impl Routed for Control {
    fn is_cluster(&self) -> bool {
        Control::is_cluster(self)
    }
}

impl Routed for MultiplexedConnection {
    fn is_cluster(&self) -> bool {
        false
    }
}

impl Routed for ClusterConnection {
    fn is_cluster(&self) -> bool {
        true
    }
}

/// Sends `commands` (each with the key it is routed by) in as few round trips as the
/// deployment allows: one pipeline, or on a cluster one pipeline per hash slot, sent
/// concurrently. Returns the number of pipelines sent.
pub async fn pipeline_by_key<C: Routed>(
    conn: &mut C,
    commands: Vec<(Vec<u8>, Cmd)>,
) -> redis::RedisResult<usize> {
    if commands.is_empty() {
        return Ok(0);
    }
    if !conn.is_cluster() {
        let mut pipe = redis::pipe();
        for (_, cmd) in commands {
            pipe.add_command(cmd).ignore();
        }
        pipe.query_async::<()>(conn).await?;
        return Ok(1);
    }
    let mut by_slot: std::collections::BTreeMap<u16, Pipeline> = Default::default();
    for (key, cmd) in commands {
        by_slot
            .entry(slot(&key))
            .or_insert_with(redis::pipe)
            .add_command(cmd)
            .ignore();
    }
    let sent = by_slot.len();
    let results = join_all(by_slot.into_values().map(|pipe| {
        let mut conn = conn.clone();
        async move { pipe.query_async::<()>(&mut conn).await }
    }))
    .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(sent)
}

/// `<id> <addr> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges…>` lines of
/// `CLUSTER NODES` → the first slot of each master that serves slots.
fn master_slots(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let flags = parts.get(2)?;
            if !flags.split(',').any(|f| f == "master") {
                return None;
            }
            // Ranges `a-b` or single slots; `[…]` are slots being migrated.
            parts.get(8..)?.iter().find_map(|range| {
                let first = range.split('-').next()?;
                first.parse::<u16>().ok()
            })
        })
        .collect()
}

/// The cluster hash slot of `key` (CRC16/XMODEM of the key or of its `{hash tag}`).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
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

/// A connection to the master the sentinels name, asked again after a failure.
#[derive(Clone)]
pub struct SentinelControl {
    client: Arc<Mutex<SentinelClient>>,
    current: Arc<Mutex<Option<MultiplexedConnection>>>,
    config: AsyncConnectionConfig,
}

impl SentinelControl {
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self
            .client
            .lock()
            .await
            .get_async_connection_with_config(&self.config)
            .await?;
        *current = Some(conn.clone());
        Ok(conn)
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
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Blocking {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
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
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
        assert_ne!(slot(b"{}x"), slot(b"x"));
        assert_eq!(slot(b"orders:{7}"), slot(b"7"));
    }

    #[test]
    fn finds_a_slot_of_each_master_in_cluster_nodes() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461 5462-10922 [5461->-a1]
c3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
e5 127.0.0.1:7004@17004 master,fail? - 0 0 4 connected 10923-16383
";
        assert_eq!(master_slots(text), vec![0, 5461, 10923]);
    }
}
