//! A private Redis Cluster with an ACL user, optional TLS, failover and resharding.

use std::time::{Duration, Instant};

use super::servers::acl_args;
use super::{free_port, free_port_below, tls_args, unique, wait_port};

/// One node of a [`RedisCluster`].
struct ClusterNode {
    port: u16,
    /// The TLS port, when the cluster has TLS.
    tls_port: Option<u16>,
    child: std::process::Child,
}

impl ClusterNode {
    /// Starts a cluster-enabled redis-server in a directory of its own under `dir`.
    fn spawn(
        dir: &std::path::Path,
        user: &str,
        password: &str,
        tls_dir: Option<&std::path::Path>,
    ) -> Self {
        // A cluster node's bus port is port + 10000: Redis 7.0 refuses ports above 55535.
        let port = free_port_below(55_535);
        let tls_port = tls_dir.map(|_| free_port());
        let node_dir = dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let mut tls = Vec::new();
        if let (Some(d), Some(p)) = (tls_dir, tls_port) {
            tls = tls_args(d, p);
            tls.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
        }
        let child = std::process::Command::new("redis-server")
            .args(&tls)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .args(["--cluster-config-file", "nodes.conf", "--save", ""])
            .args(["--appendonly", "no", "--repl-diskless-sync-delay", "0"])
            .args(acl_args(user, password))
            .current_dir(&node_dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/services.sh installs it)");
        Self {
            port,
            tls_port,
            child,
        }
    }
}

/// A Redis Cluster of private redis-servers (masters, each with `replicas` replicas) on
/// free ports, created with `redis-cli --cluster create`, with an ACL user `user` /
/// `password` (the default user is off). Killed and removed when dropped.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    /// Nodes killed by [`RedisCluster::kill`].
    killed: Vec<usize>,
    dir: std::path::PathBuf,
    pub user: String,
    pub password: String,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, None)
    }

    /// With `tls_dir` (test certificates from [`certificates`]) every node also has a TLS
    /// port, and the nodes talk to each other over TLS; the test's own commands use the
    /// plain ports.
    pub fn start_with(masters: usize, replicas: usize, tls_dir: Option<&std::path::Path>) -> Self {
        let dir = std::env::temp_dir().join(unique("cluster"));
        let (user, password) = ("app".to_string(), unique("pw"));
        let nodes = (0..masters * (1 + replicas))
            .map(|_| ClusterNode::spawn(&dir, &user, &password, tls_dir))
            .collect();
        let cluster = Self {
            nodes,
            killed: Vec::new(),
            dir,
            user,
            password,
        };
        for n in &cluster.nodes {
            wait_port(n.port);
            if let Some(p) = n.tls_port {
                wait_port(p);
            }
        }
        cluster.create(replicas);
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// `redis-cli --cluster create` over every node, `replicas` per master.
    fn create(&self, replicas: usize) {
        let mut args: Vec<String> = vec!["--user".into(), self.user.clone()];
        args.extend(["--pass".into(), self.password.clone()]);
        args.extend([
            "--no-auth-warning".into(),
            "--cluster".into(),
            "create".into(),
        ]);
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = std::process::Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A node's URL with the ACL user's credentials.
    pub fn url(&self, i: usize) -> String {
        format!(
            "redis://{}:{}@127.0.0.1:{}",
            self.user, self.password, self.nodes[i].port
        )
    }

    /// A node's `rediss://` URL (clusters started with TLS).
    pub fn tls_url(&self, i: usize) -> String {
        format!(
            "rediss://{}:{}@127.0.0.1:{}",
            self.user,
            self.password,
            self.nodes[i].tls_port.expect("a cluster with TLS")
        )
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `CLUSTER INFO` of every live node says `cluster_state:ok` and all slots are served.
    pub fn wait_ok(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let ok = self.nodes.iter().enumerate().all(|(i, _)| {
                self.info(i).is_some_and(|t| {
                    t.contains("cluster_state:ok") && t.contains("cluster_slots_ok:16384")
                })
            });
            if ok {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "cluster not ok after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn info(&self, i: usize) -> Option<String> {
        let client = redis::Client::open(self.url(i)).ok()?;
        let mut conn = client.get_connection().ok()?;
        redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()
    }

    /// The index of the node that is master of `key`'s slot.
    pub fn master_of(&self, key: &str) -> usize {
        let mut conn = (0..self.nodes.len())
            .find_map(|i| redis::Client::open(self.url(i)).ok()?.get_connection().ok())
            .expect("a live node");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("CLUSTER KEYSLOT");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut conn)
            .expect("CLUSTER NODES");
        for line in nodes.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() < 9 || !parts[2].contains("master") {
                continue;
            }
            let serves = parts[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<i64>().is_ok_and(|a| a <= slot)
                        && b.parse::<i64>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<i64>().is_ok_and(|s| s == slot),
            });
            if serves {
                let port: u16 = parts[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("node port");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("known node");
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// How many nodes (master and replicas, read with `READONLY`) hold `group` on
    /// `stream`: replication is asynchronous, and a replica promoted before it received
    /// the group's creation serves the stream without it.
    pub fn nodes_with_group(&self, stream: &str, group: &str) -> usize {
        (0..self.nodes.len())
            .filter(|&i| {
                let Some(mut conn) = redis::Client::open(self.url(i))
                    .ok()
                    .and_then(|c| c.get_connection().ok())
                else {
                    return false;
                };
                let _: redis::RedisResult<()> = redis::cmd("READONLY").query(&mut conn);
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(stream)
                    .query::<redis::streams::StreamInfoGroupsReply>(&mut conn)
                    .is_ok_and(|reply| reply.groups.iter().any(|g| g.name == group))
            })
            .count()
    }

    /// `kill -9` node `i` (its replica takes over after the node timeout).
    pub fn kill(&mut self, i: usize) {
        self.killed.push(i);
        let _ = self.nodes[i].child.kill();
        let _ = self.nodes[i].child.wait();
    }

    fn conn(&self, i: usize) -> redis::Connection {
        redis::Client::open(self.url(i))
            .expect("url")
            .get_connection()
            .expect("connect to a cluster node")
    }

    /// Moves the hash slot of `key` (and its keys) from its master to another live master
    /// the way resharding does: IMPORTING/MIGRATING, MIGRATE of each key, then — after
    /// `ask_window`, during which the old master answers ASK for the moved keys — the new
    /// owner announced to every master (after which it answers MOVED). Returns the new
    /// owner's index.
    pub fn move_slot_of(&self, key: &str, ask_window: Duration) -> usize {
        let from = self.master_of(key);
        let live = (0..self.nodes.len()).filter(|i| !self.killed.contains(i));
        let masters: Vec<usize> = live
            .filter(|i| {
                let role: Vec<redis::Value> =
                    redis::cmd("ROLE").query(&mut self.conn(*i)).expect("ROLE");
                matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
            })
            .collect();
        let to = *masters
            .iter()
            .find(|i| **i != from)
            .expect("another master");
        let id = |i: usize| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut self.conn(i))
                .expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from), id(to));
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.conn(from))
            .expect("KEYSLOT");
        let setslot = |node: usize, args: &[&str]| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(args);
            let _: () = cmd.query(&mut self.conn(node)).expect("CLUSTER SETSLOT");
        };
        setslot(to, &["IMPORTING", &from_id]);
        setslot(from, &["MIGRATING", &to_id]);
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000)
            .query(&mut self.conn(from))
            .expect("GETKEYSINSLOT");
        for k in &keys {
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("AUTH2")
                .arg(&self.user)
                .arg(&self.password)
                .arg("KEYS")
                .arg(k)
                .query(&mut self.conn(from))
                .expect("MIGRATE");
        }
        std::thread::sleep(ask_window);
        // The new owner first, then the old one (else they would send clients back and
        // forth), then the others.
        setslot(to, &["NODE", &to_id]);
        setslot(from, &["NODE", &to_id]);
        for m in masters.iter().filter(|m| **m != to && **m != from) {
            setslot(*m, &["NODE", &to_id]);
        }
        to
    }

    /// Waits until a replica of the killed node `dead` serves `key`'s slot and the
    /// other nodes report the cluster as ok.
    pub fn wait_failover(&self, dead: usize, key: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let ok = (0..self.nodes.len())
                .filter(|i| *i != dead)
                .all(|i| self.info(i).is_some_and(|t| t.contains("cluster_state:ok")));
            if ok && self.master_of(key) != dead {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "cluster did not fail over in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
