//! How to reach the configured Redis: one server, a Redis Cluster, or the master that
//! Redis Sentinel names ([`Deployment`], built from `[redis]` with its TLS files and ACL
//! users), and the connections it opens: [`Deployment::control`] the shared one (see
//! `control`), [`Deployment::blocking`] one without a response timeout for one blocking
//! XREADGROUP (the caller puts an outer timeout around it).

use std::sync::Arc;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, IntoConnectionInfo};

use super::control::SentinelControl;
use super::raw::RawConn;
use super::sentinel::{MasterAddr, Sentinels};
use super::{Blocking, Control, RedisError};
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
    Sentinel(Arc<Sentinels>),
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
                    // first delivered in our PEL unseen; after the error the lane re-reads
                    // its own PEL instead (MOVED and ASK come back as errors too).
                    blocking: Box::new(tls.cluster(&seeds, Duration::from_secs(24 * 3600), 0)?),
                })
            }
            RedisMode::Sentinel => {
                let name = config.master_name.as_deref().unwrap_or_default();
                let sentinels = tls.sentinel(&config.url, &config.nodes, name)?;
                Ok(Self::Sentinel(Arc::new(sentinels)))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// With Sentinel: `(connected, named)` when `conn` was opened to a master other than
    /// the one the sentinels name now (what a read on it returned may never reach the
    /// new master).
    pub fn moved(&self, conn: &Blocking) -> Option<(MasterAddr, MasterAddr)> {
        match (self, conn) {
            (
                Self::Sentinel(sentinels),
                Blocking::Master(_, addr) | Blocking::RawMaster(_, addr),
            ) => sentinels.moved(addr).map(|named| (addr.clone(), named)),
            _ => None,
        }
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
            Self::Sentinel(sentinels) => {
                let control = SentinelControl::new(
                    sentinels.clone(),
                    AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(RESPONSE_TIMEOUT)),
                );
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
            Self::Standalone(client) => {
                let connected = match RawConn::connect(client.get_connection_info()).await {
                    Some(raw) => raw.map(Blocking::Raw),
                    None => client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Blocking::Single),
                };
                connected.map_err(RedisError::redis("connecting the reader to redis"))
            }
            Self::Cluster { blocking, .. } => blocking
                .get_async_connection()
                .await
                .map(Blocking::Cluster)
                .map_err(RedisError::redis(
                    "connecting the reader to the redis cluster",
                )),
            Self::Sentinel(sentinels) => match sentinels.open_raw().await {
                Some(raw) => raw.map(|(conn, addr)| Blocking::RawMaster(conn, addr)),
                None => sentinels
                    .open(&config)
                    .await
                    .map(|(conn, addr)| Blocking::Master(conn, addr)),
            }
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
        let info = url
            .into_connection_info()
            .map_err(RedisError::redis("parsing redis.url"))?
            .set_tcp_settings(tcp_settings());
        if self.configured() {
            redis::Client::build_with_tls(info, self.certificates())
                .map_err(RedisError::redis("opening redis url with TLS"))
        } else {
            redis::Client::open(info).map_err(RedisError::redis("opening redis url"))
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
            .retries(retries)
            .tcp_settings(tcp_settings());
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
    fn sentinel(&self, url: &str, nodes: &[String], master: &str) -> Result<Sentinels, RedisError> {
        let template = url
            .into_connection_info()
            .map_err(RedisError::redis("parsing redis.url"))?
            .set_tcp_settings(tcp_settings());
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
            if s.username().is_some() || s.password().is_some() {
                sentinel_auth = Some((
                    s.username().map(str::to_string),
                    s.password().map(str::to_string),
                ));
                break;
            }
        }
        let askers = self.askers(nodes, sentinel_auth.as_ref())?;
        let tls = is_tls_url(url).then(|| self.configured().then(|| self.certificates()));
        Ok(Sentinels::new(master, askers, template, tls))
    }

    /// A client per sentinel for the watch's questions, with the sentinels' credentials
    /// and TLS files.
    fn askers(
        &self,
        nodes: &[String],
        auth: Option<&(Option<String>, Option<String>)>,
    ) -> Result<Vec<redis::Client>, RedisError> {
        let mut out = Vec::new();
        for node in nodes {
            let context = || format!("opening sentinel {}", crate::config::redact_url(node));
            let mut info = node
                .as_str()
                .into_connection_info()
                .map_err(RedisError::redis(context()))?
                .set_tcp_settings(tcp_settings());
            if let Some((user, password)) = auth {
                let mut settings = info.redis_settings().clone();
                if let Some(user) = user {
                    settings = settings.set_username(user);
                }
                if let Some(password) = password {
                    settings = settings.set_password(password);
                }
                info = info.set_redis_settings(settings);
            }
            let client = if is_tls_url(node) && self.configured() {
                redis::Client::build_with_tls(info, self.certificates())
            } else {
                redis::Client::open(info)
            };
            out.push(client.map_err(RedisError::redis(context()))?);
        }
        Ok(out)
    }
}

/// The settings of every TCP socket redsink opens to Redis: `TCP_NODELAY` on. redis-rs
/// turns it off explicitly; with Nagle's algorithm a command written in more than one
/// piece waits for the server's delayed ACK, about 40 ms a round trip even on localhost
/// (docs/BENCHMARKS.md).
pub fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}
