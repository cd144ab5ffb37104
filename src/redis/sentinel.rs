//! Following the master that Redis Sentinel names.
//!
//! redis-rs asks the sentinels only when a connection is opened (its issue #1438). After
//! a failover the old master goes on accepting reads, writes and acknowledgements until
//! the sentinels reconfigure it as a replica — after `SENTINEL FAILOVER` about 10 s
//! after they announced the new master (they look at a replica's `INFO` every 10 s).
//! What the old master accepts in that window never reaches the new one: an instance
//! that waited for a connection error would apply events that Redis then discards, and
//! acknowledge on a server whose state is thrown away.
//!
//! So [`Sentinels`] asks every sentinel `SENTINEL MASTERS` every [`ASK_EVERY`], from a
//! task of its own (a dead sentinel never slows the read loop), and follows the answer
//! with the highest `config-epoch`: the sentinel that led the failover knows first, the
//! others learn it from each other within seconds. Connections to the master are opened
//! to that address (and checked with `ROLE`); each remembers it ([`MasterAddr`]), and
//! one to a master the sentinels no longer name is stale ([`Sentinels::moved`]): the
//! shared connection reconnects before its next command, and a reader drops what a
//! read on it returned (see `read`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, TlsCertificates};
use tokio::sync::Mutex;

use super::raw::RawConn;

/// How often the sentinels are asked which master they name.
pub const ASK_EVERY: Duration = Duration::from_millis(250);
/// How long one question to a sentinel may take (connecting included).
const ASK_WITHIN: Duration = Duration::from_secs(1);
/// How long a new master connection's `ROLE` check may take.
const ROLE_WITHIN: Duration = Duration::from_secs(5);

/// The address of a master, as the sentinels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterAddr {
    host: String,
    port: u16,
}

impl std::fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A connection to the master, with the address it was opened to.
pub type MasterConnection = (MultiplexedConnection, MasterAddr);

/// How to reach the master the sentinels name (see the module docs).
pub struct Sentinels {
    /// The name the sentinels monitor.
    master: String,
    /// One client per sentinel, and its connection once open.
    askers: Vec<redis::Client>,
    conns: Mutex<Vec<Option<MultiplexedConnection>>>,
    /// The master's user, password, database and TCP settings; the address is filled in.
    template: ConnectionInfo,
    /// `rediss://` to the master, with these certificates (`None`: the system's roots).
    tls: Option<Option<TlsCertificates>>,
    /// The master the sentinels named when last asked (`None`: not asked yet).
    named: SyncMutex<Option<MasterAddr>>,
    /// The watch task has been started (on the first connection, inside the runtime).
    watching: std::sync::Once,
}

impl Sentinels {
    pub(super) fn new(
        master: &str,
        askers: Vec<redis::Client>,
        template: ConnectionInfo,
        tls: Option<Option<TlsCertificates>>,
    ) -> Self {
        Self {
            master: master.to_string(),
            conns: Mutex::new(vec![None; askers.len()]),
            askers,
            template,
            tls,
            named: SyncMutex::new(None),
            watching: std::sync::Once::new(),
        }
    }

    /// A new connection to the master the sentinels name (asked now if they were never
    /// asked), checked with `ROLE`. Starts the watch on first use.
    pub(super) async fn open(
        self: &Arc<Self>,
        config: &AsyncConnectionConfig,
    ) -> redis::RedisResult<MasterConnection> {
        let (info, addr) = self.master_info().await?;
        let client = match &self.tls {
            Some(Some(certs)) => redis::Client::build_with_tls(info, certs.clone())?,
            _ => redis::Client::open(info)?,
        };
        let mut conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        check_role(&mut conn, &addr).await?;
        Ok((conn, addr))
    }

    /// [`Self::open`] on redsink's own connection (`raw`), for the readers' blocking
    /// reads; `None` with TLS (redis-rs' connection serves that).
    pub(super) async fn open_raw(
        self: &Arc<Self>,
    ) -> Option<redis::RedisResult<(RawConn, MasterAddr)>> {
        if self.tls.is_some() {
            return None;
        }
        let opened = async {
            let (info, addr) = self.master_info().await?;
            let mut conn = RawConn::connect(&info).await.ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Client, "not a TCP address"))
            })??;
            check_role(&mut conn, &addr).await?;
            Ok((conn, addr))
        };
        Some(opened.await)
    }

    /// The connection info of the master the sentinels name (asking them when none is
    /// known yet), and its address.
    async fn master_info(self: &Arc<Self>) -> redis::RedisResult<(ConnectionInfo, MasterAddr)> {
        self.watching.call_once(|| {
            tokio::spawn(watch(Arc::downgrade(self)));
        });
        let known = self
            .named
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let addr = match known {
            Some(addr) => addr,
            None => self.ask().await?.ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::MasterNameNotFoundBySentinel,
                    "no sentinel names a master that is up under redis.master_name",
                    self.master.clone(),
                ))
            })?,
        };
        let conn_addr = if self.tls.is_some() {
            ConnectionAddr::TcpTls {
                host: addr.host.clone(),
                port: addr.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(addr.host.clone(), addr.port)
        };
        Ok((self.template.clone().set_addr(conn_addr), addr))
    }

    /// The master the sentinels name now, when it is not `connected` (the address a
    /// connection was opened to): that connection is stale.
    pub fn moved(&self, connected: &MasterAddr) -> Option<MasterAddr> {
        let named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        named.as_ref().filter(|named| *named != connected).cloned()
    }

    /// Asks every sentinel at once and records the master named with the highest
    /// `config-epoch` among those up; `None` when the sentinels that answered name none.
    /// An error only when no sentinel answered.
    async fn ask(&self) -> redis::RedisResult<Option<MasterAddr>> {
        let mut conns = self.conns.lock().await;
        let questions = conns
            .iter_mut()
            .zip(&self.askers)
            .map(|(conn, client)| ask_one(client, conn, &self.master));
        let answers = futures_util::future::join_all(questions).await;
        let mut best: Option<(MasterAddr, u64)> = None;
        let mut error = None;
        let mut answered = false;
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(found) => {
                    answered = true;
                    if let Some((addr, epoch)) = found
                        && best.as_ref().is_none_or(|(_, e)| epoch > *e)
                    {
                        best = Some((addr, epoch));
                    }
                }
                Err(e) => {
                    tracing::debug!(sentinel = i, error = %e, "asking a sentinel for the master failed");
                    error = Some(e);
                }
            }
        }
        match (best, error) {
            (Some((addr, _)), _) => {
                self.record(addr.clone());
                Ok(Some(addr))
            }
            (None, Some(e)) if !answered => Err(e),
            (None, _) => Ok(None),
        }
    }

    /// Records the master the sentinels name; logs when it changed.
    fn record(&self, addr: MasterAddr) {
        let mut named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        if named.as_ref() != Some(&addr) {
            if let Some(old) = named.as_ref() {
                tracing::warn!(
                    master = %self.master, from = %old, to = %addr,
                    "the sentinels name another redis master: following it"
                );
            }
            *named = Some(addr);
        }
    }
}

/// One sentinel's `(address, config-epoch)` of `master`, if it names one that is up
/// (not flagged `s_down` or `o_down`). Forgets the connection after a failure.
async fn ask_one(
    client: &redis::Client,
    conn: &mut Option<MultiplexedConnection>,
    master: &str,
) -> redis::RedisResult<Option<(MasterAddr, u64)>> {
    let question = async {
        let c = match conn {
            Some(c) => c,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(ASK_WITHIN))
                    .set_response_timeout(Some(ASK_WITHIN));
                conn.insert(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
        };
        redis::cmd("SENTINEL")
            .arg("MASTERS")
            .query_async::<Vec<HashMap<String, String>>>(c)
            .await
    };
    let masters = match tokio::time::timeout(ASK_WITHIN, question).await {
        Ok(Ok(masters)) => masters,
        Ok(Err(e)) => {
            *conn = None;
            return Err(e);
        }
        Err(_) => {
            *conn = None;
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the sentinel did not answer SENTINEL MASTERS in time",
            )
            .into());
        }
    };
    Ok(masters.iter().find_map(|m| named(m, master)))
}

/// `(address, config-epoch)` of one entry of `SENTINEL MASTERS`, if it is `master` and up.
fn named(m: &HashMap<String, String>, master: &str) -> Option<(MasterAddr, u64)> {
    let flags = m.get("flags")?;
    if m.get("name").map(String::as_str) != Some(master)
        || !flags.contains("master")
        || flags.contains("s_down")
        || flags.contains("o_down")
    {
        return None;
    }
    let addr = MasterAddr {
        host: m.get("ip")?.clone(),
        port: m.get("port")?.parse().ok()?,
    };
    let epoch = m
        .get("config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    Some((addr, epoch))
}

/// `ROLE` on a new connection: the server the sentinels name may not have finished its
/// promotion (or may have been demoted since). Not a master: an I/O-like error, retried.
async fn check_role<C: ConnectionLike + Send>(
    conn: &mut C,
    addr: &MasterAddr,
) -> redis::RedisResult<()> {
    let cmd = redis::cmd("ROLE");
    let role = cmd.query_async::<Vec<redis::Value>>(conn);
    let role = match tokio::time::timeout(ROLE_WITHIN, role).await {
        Ok(role) => role?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the master at {addr} did not answer ROLE in time"),
            )
            .into());
        }
    };
    let first = role
        .first()
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
    if first.as_deref() == Some("master") {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "the server at {addr} the sentinels name is not a master yet (ROLE {})",
        first.unwrap_or_default()
    ))
    .into())
}

/// Asks the sentinels every [`ASK_EVERY`] until the [`Sentinels`] are dropped.
async fn watch(sentinels: Weak<Sentinels>) {
    let mut tick = tokio::time::interval(ASK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = sentinels.upgrade() else {
            return;
        };
        if let Err(e) = s.ask().await {
            tracing::debug!(error = %e, "no sentinel answered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, flags: &str, port: &str, epoch: &str) -> HashMap<String, String> {
        [
            ("name", name),
            ("flags", flags),
            ("ip", "10.0.0.1"),
            ("port", port),
            ("config-epoch", epoch),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn only_the_named_master_that_is_up_counts() {
        let up = named(&entry("m", "master", "6380", "3"), "m");
        assert_eq!(
            up,
            Some((
                MasterAddr {
                    host: "10.0.0.1".into(),
                    port: 6380
                },
                3
            ))
        );
        assert_eq!(named(&entry("other", "master", "6380", "3"), "m"), None);
        assert_eq!(named(&entry("m", "master,s_down", "6380", "3"), "m"), None);
        assert_eq!(named(&entry("m", "master,o_down", "6380", "3"), "m"), None);
        assert_eq!(named(&entry("m", "master", "x", "3"), "m"), None);
    }
}
