//! A private master, replica and three sentinels with an ACL user, optional TLS, and a
//! failover on demand.

use std::time::{Duration, Instant};

use super::servers::acl_args;
use super::{free_port, tls_args, unique, wait_port};

/// A master, a replica and three sentinels (`mymaster`, quorum 2), private
/// redis-servers on free ports with an ACL user `user` / `password` (the default user is
/// off on the data nodes). Killed and removed when dropped.
pub struct RedisSentinel {
    children: Vec<std::process::Child>,
    dir: std::path::PathBuf,
    pub data_ports: [u16; 2],
    /// With TLS: the data nodes' TLS ports (what the sentinels know them by).
    pub tls_ports: Option<[u16; 2]>,
    pub sentinel_ports: Vec<u16>,
    /// With TLS: the sentinels' TLS ports.
    pub sentinel_tls_ports: Vec<u16>,
    pub user: String,
    pub password: String,
}

pub const SENTINEL_MASTER: &str = "mymaster";

impl RedisSentinel {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With `tls_dir` (test certificates from [`certificates`]) the data nodes also listen
    /// on TLS ports, replicate over TLS, and the sentinels monitor them over TLS (so they
    /// name the TLS ports); the sentinels listen on a TLS port too. The test's own
    /// commands use the plain ports.
    pub fn start_with(tls_dir: Option<&std::path::Path>) -> Self {
        let dir = std::env::temp_dir().join(unique("sentinel"));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let (user, password) = ("app".to_string(), unique("pw"));
        let data_ports = [free_port(), free_port()];
        let tls_ports = tls_dir.map(|_| [free_port(), free_port()]);
        let mut sentinel = Self {
            children: Vec::new(),
            dir,
            data_ports,
            tls_ports,
            sentinel_ports: Vec::new(),
            sentinel_tls_ports: Vec::new(),
            user,
            password,
        };
        sentinel.spawn_data_nodes(tls_dir);
        for p in data_ports.iter().chain(tls_ports.iter().flatten()) {
            wait_port(*p);
        }
        sentinel.spawn_sentinels(tls_dir);
        for p in sentinel
            .sentinel_ports
            .iter()
            .chain(&sentinel.sentinel_tls_ports)
        {
            wait_port(*p);
        }
        // Ready when the replica is in sync and every sentinel knows it and the others.
        let start = Instant::now();
        while !sentinel.ready() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "sentinels not ready after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sentinel
    }

    /// The address the sentinels and the replica use for each data node.
    fn known(&self) -> [u16; 2] {
        self.tls_ports.unwrap_or(self.data_ports)
    }

    /// The master and its replica, each in a directory of its own.
    fn spawn_data_nodes(&mut self, tls_dir: Option<&std::path::Path>) {
        let known = self.known();
        for (i, port) in self.data_ports.iter().enumerate() {
            let mut cmd = std::process::Command::new("redis-server");
            if let (Some(d), Some(t)) = (tls_dir, self.tls_ports) {
                cmd.args(tls_args(d, t[i]))
                    .args(["--tls-replication", "yes"]);
            }
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(acl_args(&self.user, &self.password));
            if i == 1 {
                cmd.args(["--replicaof", "127.0.0.1", &known[0].to_string()]);
            }
            // Its own directory: a replica writes the RDB it receives into the cwd.
            let node_dir = self.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            self.children.push(
                cmd.current_dir(&node_dir)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("start redis-server (scripts/services.sh installs it)"),
            );
        }
    }

    /// Three sentinels monitoring the master (over TLS with `tls_dir`).
    fn spawn_sentinels(&mut self, tls_dir: Option<&std::path::Path>) {
        let tls_conf = tls_dir.map_or_else(String::new, |d| {
            format!(
                "tls-replication yes\ntls-cert-file {0}/server.crt\ntls-key-file {0}/server.key\n\
                 tls-ca-cert-file {0}/ca.crt\n",
                d.display()
            )
        });
        for _ in 0..3 {
            let port = free_port();
            let conf = self.dir.join(format!("sentinel-{port}.conf"));
            // With TLS the sentinels also listen on a TLS port (for redsink).
            let tls_port = tls_dir.map(|_| free_port());
            let tls_listen = tls_port.map_or_else(String::new, |t| {
                format!("tls-port {t}\ntls-auth-clients no\n")
            });
            std::fs::write(
                &conf,
                tls_conf.clone() + &tls_listen + &format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor {m} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {m} 1000\nsentinel failover-timeout {m} 10000\n\
                     sentinel auth-user {m} {user}\nsentinel auth-pass {m} {password}\n",
                    m = SENTINEL_MASTER,
                    master = self.known()[0],
                    user = self.user,
                    password = self.password,
                ),
            )
            .expect("sentinel config");
            let child = std::process::Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel");
            self.children.push(child);
            self.sentinel_ports.push(port);
            self.sentinel_tls_ports.extend(tls_port);
        }
    }

    fn ready(&self) -> bool {
        let replica_up = self
            .data_query(self.data_ports[1], redis::cmd("INFO").arg("replication"))
            .is_some_and(|t| t.contains("master_link_status:up"));
        replica_up
            && self.sentinel_ports.iter().all(|p| {
                let master: Option<Vec<String>> = sentinel_query(
                    *p,
                    redis::cmd("SENTINEL").arg("MASTER").arg(SENTINEL_MASTER),
                );
                master.is_some_and(|fields| {
                    let get = |k: &str| {
                        fields
                            .iter()
                            .position(|f| f == k)
                            .and_then(|i| fields.get(i + 1))
                            .cloned()
                    };
                    get("num-slaves").as_deref() == Some("1")
                        && get("num-other-sentinels").as_deref() == Some("2")
                })
            })
    }

    fn data_query(&self, port: u16, cmd: &redis::Cmd) -> Option<String> {
        let url = format!("redis://{}:{}@127.0.0.1:{port}", self.user, self.password);
        let mut conn = redis::Client::open(url).ok()?.get_connection().ok()?;
        cmd.query(&mut conn).ok()
    }

    /// The sentinels' `rediss://` URLs (started with TLS).
    pub fn sentinel_tls_urls(&self) -> Vec<String> {
        self.sentinel_tls_ports
            .iter()
            .map(|p| format!("rediss://127.0.0.1:{p}"))
            .collect()
    }

    /// The sentinels' URLs.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinel_ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The current master's port, as the first sentinel reports it.
    pub fn master_port(&self) -> u16 {
        let addr: (String, u16) = sentinel_query(
            self.sentinel_ports[0],
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(SENTINEL_MASTER),
        )
        .expect("SENTINEL GET-MASTER-ADDR-BY-NAME");
        addr.1
    }

    /// The plain port of the data node the sentinels know by `port`.
    fn plain(&self, port: u16) -> u16 {
        match self.tls_ports {
            Some(t) if t[1] == port => self.data_ports[1],
            Some(_) => self.data_ports[0],
            None => port,
        }
    }

    /// The plain URL of the current master, with credentials.
    pub fn master_url(&self) -> String {
        format!(
            "redis://{}:{}@127.0.0.1:{}",
            self.user,
            self.password,
            self.plain(self.master_port())
        )
    }

    /// `SENTINEL FAILOVER`; returns the old master's port and when a sentinel first
    /// switched to the new one (`+switch-master`: its `SENTINEL MASTER` names the new
    /// address; polled every 10 ms). The old master is demoted later
    /// ([`RedisSentinel::wait_demoted`]).
    pub fn start_failover(&self) -> (u16, Instant) {
        let before = self.master_port();
        let _: String = sentinel_query(
            self.sentinel_ports[0],
            redis::cmd("SENTINEL").arg("FAILOVER").arg(SENTINEL_MASTER),
        )
        .expect("SENTINEL FAILOVER");
        let start = Instant::now();
        loop {
            let switched = self.sentinel_ports.iter().any(|p| {
                sentinel_query::<Vec<String>>(
                    *p,
                    redis::cmd("SENTINEL").arg("MASTER").arg(SENTINEL_MASTER),
                )
                .and_then(|fields| {
                    let i = fields.iter().position(|f| f == "port")?;
                    fields.get(i + 1)?.parse::<u16>().ok()
                })
                .is_some_and(|port| port != before)
            });
            if switched {
                return (before, Instant::now());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no sentinel switched to a new master after 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The plain URL of the data node the sentinels know by `port`.
    pub fn node_url(&self, port: u16) -> String {
        format!(
            "redis://{}:{}@127.0.0.1:{}",
            self.user,
            self.password,
            self.plain(port)
        )
    }

    /// Waits until the data node the sentinels knew by `port` is a replica again (the
    /// sentinels reconfigured the old master).
    pub fn wait_demoted(&self, port: u16) {
        let start = Instant::now();
        while !self
            .data_query(self.plain(port), redis::cmd("INFO").arg("replication"))
            .is_some_and(|t| t.contains("role:slave"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the old master was not demoted after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `SENTINEL FAILOVER`, then waits until every sentinel names the other node and it
    /// accepts writes.
    pub fn failover(&self) {
        let before = self.master_port();
        let _: String = sentinel_query(
            self.sentinel_ports[0],
            redis::cmd("SENTINEL").arg("FAILOVER").arg(SENTINEL_MASTER),
        )
        .expect("SENTINEL FAILOVER");
        let start = Instant::now();
        loop {
            let moved = self.sentinel_ports.iter().all(|p| {
                sentinel_query::<(String, u16)>(
                    *p,
                    redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(SENTINEL_MASTER),
                )
                .is_some_and(|(_, port)| port != before)
            });
            if moved
                && self
                    .data_query(
                        self.plain(self.master_port()),
                        redis::cmd("INFO").arg("replication"),
                    )
                    .is_some_and(|t| t.contains("role:master"))
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no failover after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn sentinel_query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection()
        .ok()?;
    cmd.query(&mut conn).ok()
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
