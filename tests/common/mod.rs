//! Test servers and helpers. Servers come from REDSINK_TEST_REDIS_URL and
//! REDSINK_TEST_POSTGRES_URL (set by scripts/services.sh), else the local defaults.
//! Each test gets its own database (`t_<uuid>`) and its own stream prefix.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use redsink::config::Config;
use redsink::pipeline::{self, PipelineError, Stats};

pub fn redis_url() -> String {
    std::env::var("REDSINK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn pg_admin_url() -> String {
    std::env::var("REDSINK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A unique name: `t_<32 hex>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A database of its own, dropped when the test ends (also on panic).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = unique("t");
        let admin = PgPool::connect(&pg_admin_url())
            .await
            .expect("connect to the admin database");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let base = pg_admin_url();
        let url = match base.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{name}"),
            None => panic!("bad postgres url {base}"),
        };
        let pool = PgPool::connect(&url)
            .await
            .expect("connect to the test database");
        Self { name, url, pool }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop the database from a thread and runtime of its own: Drop cannot await, and
        // the test's runtime is blocked here. FORCE ends the test pool's connections.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = PgPool::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                }
            });
        })
        .join();
    }
}

pub async fn redis() -> MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Deletes every key that starts with `prefix` (the test's streams and DLQs).
pub async fn cleanup_streams(prefix: &str) {
    let mut conn = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// XADD one compact-format entry; returns its ID.
pub async fn xadd(
    conn: &mut MultiplexedConnection,
    stream: &str,
    key: &str,
    value: &str,
) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(key)
        .arg(value)
        .query_async(conn)
        .await
        .expect("XADD")
}

/// Number of entries pending in `group` on `stream`.
pub async fn pending<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> u64 {
    // No group yet counts as nothing pending.
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap_or(redis::Value::Nil);
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        },
        _ => 0,
    }
}

/// Entries of `group` not yet delivered on `stream` (XINFO GROUPS `lag`).
pub async fn lag<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> Option<u64> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .ok()?;
    let g = groups.into_iter().find(
        |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
    )?;
    match g.get("lag") {
        Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// True when on every stream the group has read everything and acked it.
pub async fn drained<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    streams: &[String],
    group: &str,
) -> bool {
    for s in streams {
        if lag(conn, s, group).await != Some(0) || pending(conn, s, group).await != 0 {
            return false;
        }
    }
    true
}

/// The dead letters of `stream` (`<stream>:dlq`): (ID, fields), oldest first.
pub async fn dead_letters<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
) -> Vec<(String, std::collections::HashMap<String, String>)> {
    redis::cmd("XRANGE")
        .arg(format!("{stream}:dlq"))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE of the dead-letter stream")
}

pub async fn xlen<C: redis::aio::ConnectionLike + Send>(conn: &mut C, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("XLEN")
}

/// Polls `cond` until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config for one test: its database, group and mappings (TOML `[[mapping]]` blocks).
pub fn config(db: &TestDb, consumer: &str, extra: &str) -> Config {
    let text = config_text(db, consumer, extra);
    Config::from_toml(&text, "test config", std::iter::empty()).expect("test config is valid")
}

/// The TOML text of [`config`].
pub fn config_text(db: &TestDb, consumer: &str, extra: &str) -> String {
    format!(
        r#"
[redis]
url = "{redis}"
group = "redsink"
consumer = "{consumer}"
block = "200ms"
[postgres]
url = "{pg}"
[batch]
max_batch = 500
max_delay = "20ms"
{extra}
"#,
        redis = redis_url(),
        pg = db.url,
    )
}

/// Runs the `redsink` binary with `args` and `config` (TOML text, written to a temporary
/// file passed as `--config`): (exit code, stdout, stderr).
pub fn redsink_cli(config: &str, args: &[&str]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(unique("redsink-cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("redsink.toml");
    std::fs::write(&path, config).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("REDSINK_LOG", "warn")
        .output()
        .expect("run redsink");
    std::fs::remove_dir_all(&dir).ok();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A running pipeline; `stop` cancels it and returns how it ended.
pub struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<Stats, PipelineError>>,
}

impl Running {
    pub fn start(config: Config) -> Self {
        let token = CancellationToken::new();
        let handle = tokio::spawn(pipeline::run(config, token.clone()));
        Self { token, handle }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub async fn stop(self) -> Result<Stats, PipelineError> {
        self.token.cancel();
        self.handle.await.expect("pipeline task panicked")
    }
}

impl Running {
    /// Waits until `group` has read and acknowledged everything on `streams`; panics
    /// with the pipeline's error if it ends first, or after 120 s.
    pub async fn until_drained(self, streams: &[String], group: &str) -> Self {
        self.until_drained_at(&redis_url(), streams, group).await
    }

    /// [`Running::until_drained`] on the Redis at `url`.
    pub async fn until_drained_at(self, url: &str, streams: &[String], group: &str) -> Self {
        let mut conn = redis::Client::open(url)
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        let start = Instant::now();
        while !drained(&mut conn, streams, group).await {
            if self.is_finished() {
                panic!("pipeline ended early: {:?}", self.stop().await);
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "not drained after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self
    }
}

/// Runs a pipeline until `streams` are drained, then stops it.
pub async fn sync(config: Config, streams: &[String]) -> Stats {
    sync_at(&redis_url(), config, streams).await
}

/// [`sync`] with the Redis at `url` (a plain URL the test can reach) to watch.
pub async fn sync_at(url: &str, config: Config, streams: &[String]) -> Stats {
    Running::start(config)
        .until_drained_at(url, streams, "redsink")
        .await
        .stop()
        .await
        .expect("pipeline stops cleanly")
}

/// A free TCP port on 127.0.0.1 no higher than `max`.
pub fn free_port_below(max: u16) -> u16 {
    loop {
        let port = free_port();
        if port <= max {
            return port;
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private redis-server from the installed binary, with an append-only file so a
/// restart after `kill -9` keeps the streams. Killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("redis"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and directory, and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed? scripts/services.sh installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Loading the AOF answers LOADING for a moment; wait for a real PONG.
        let client = redis::Client::open(self.url()).expect("url");
        while client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `table` has more than `rows` rows.
pub async fn wait_rows(db: &TestDb, table: &str, rows: i64) {
    let sql = format!("SELECT count(*) FROM {table}");
    wait_for(
        &format!("more than {rows} rows in {table}"),
        Duration::from_secs(60),
        || {
            let (pool, sql) = (db.pool.clone(), sql.clone());
            async move {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0)
                    > rows
            }
        },
    )
    .await;
}

/// Consumer names of `group` on `stream`.
pub async fn consumers<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> Vec<String> {
    let list: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap_or_default();
    list.iter()
        .filter_map(|c| match c.get("name") {
            Some(redis::Value::BulkString(n)) => Some(String::from_utf8_lossy(n).into_owned()),
            _ => None,
        })
        .collect()
}

/// A private PostgreSQL cluster with `wal_level=logical` (for a real Debezium capture),
/// from the installed binaries, on a free port; stopped and removed when dropped.
pub struct PgServer {
    pub port: u16,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl PgServer {
    pub fn start_logical() -> Self {
        Self::start_with(None)
    }

    /// With `tls_dir` (test certificates from [`certificates`]) the server speaks TLS
    /// (`ssl=on`, the test certificate for 127.0.0.1) and refuses TCP clients without it.
    pub fn start_with(tls_dir: Option<&std::path::Path>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL binaries under /usr/lib/postgresql (scripts/services.sh installs them)",
            )
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = std::env::temp_dir().join(unique("pg"));
        std::fs::create_dir_all(&dir).expect("pg dir");
        let server = Self {
            port: free_port(),
            dir,
            bin,
        };
        if is_root() {
            let ok = std::process::Command::new("chown")
                .arg("postgres")
                .arg(&server.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown postgres {}", server.dir.display());
        }
        let data = server.dir.join("data");
        server.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
             -c max_replication_slots=10 -c max_wal_senders=10 -c fsync=off",
            server.port,
            server.dir.display()
        );
        if let Some(certs) = tls_dir {
            // Postgres wants its key owned by itself and private.
            for f in ["server.crt", "server.key"] {
                std::fs::copy(certs.join(f), server.dir.join(f)).expect("copy certificate");
            }
            let key = server.dir.join("server.key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod key");
            if is_root() {
                for f in ["server.crt", "server.key"] {
                    let _ = std::process::Command::new("chown")
                        .arg("postgres")
                        .arg(server.dir.join(f))
                        .status();
                }
            }
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                server.dir.display()
            ));
            // TCP connections without TLS are refused (`hostssl` instead of `host`).
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            let only_tls: String = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&hba, only_tls).expect("write pg_hba.conf");
        }
        let log = server.dir.join("postgres.log");
        server.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
        server
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", &data.to_string_lossy(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// One node of a [`RedisCluster`].
struct ClusterNode {
    port: u16,
    /// The TLS port, when the cluster has TLS.
    tls_port: Option<u16>,
    child: std::process::Child,
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
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
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
                .args(acl_args(&user, &password))
                .current_dir(&node_dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start redis-server (scripts/services.sh installs it)");
            nodes.push(ClusterNode {
                port,
                tls_port,
                child,
            });
        }
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
        let mut args: Vec<String> = vec!["--user".into(), cluster.user.clone()];
        args.extend(["--pass".into(), cluster.password.clone()]);
        args.extend([
            "--no-auth-warning".into(),
            "--cluster".into(),
            "create".into(),
        ]);
        args.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
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
        cluster.wait_ok(Duration::from_secs(30));
        cluster
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

    fn replication(&self, i: usize) -> Option<String> {
        let client = redis::Client::open(self.url(i)).ok()?;
        let mut conn = client.get_connection().ok()?;
        redis::cmd("INFO").arg("replication").query(&mut conn).ok()
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

/// redis-server arguments: the default user off, `user` with every permission, and the
/// same user for replication.
fn acl_args(user: &str, password: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--user", "default", "off", "--user", user, "on"]
        .map(String::from)
        .to_vec();
    args.push(format!(">{password}"));
    args.extend(
        [
            "~*",
            "&*",
            "+@all",
            "--masteruser",
            user,
            "--masterauth",
            password,
        ]
        .map(String::from),
    );
    args
}

/// Waits until something listens on `port` (10 s).
pub fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
        // The address the sentinels and the replica use for each data node.
        let known = tls_ports.unwrap_or(data_ports);
        let mut children = Vec::new();
        for (i, port) in data_ports.iter().enumerate() {
            let mut cmd = std::process::Command::new("redis-server");
            if let (Some(d), Some(t)) = (tls_dir, tls_ports) {
                cmd.args(tls_args(d, t[i]))
                    .args(["--tls-replication", "yes"]);
            }
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(acl_args(&user, &password));
            if i == 1 {
                cmd.args(["--replicaof", "127.0.0.1", &known[0].to_string()]);
            }
            // Its own directory: a replica writes the RDB it receives into the cwd.
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            children.push(
                cmd.current_dir(&node_dir)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("start redis-server (scripts/services.sh installs it)"),
            );
        }
        let mut sentinel = Self {
            children,
            dir,
            data_ports,
            tls_ports,
            sentinel_ports: Vec::new(),
            sentinel_tls_ports: Vec::new(),
            user,
            password,
        };
        for p in data_ports.iter().chain(tls_ports.iter().flatten()) {
            wait_port(*p);
        }
        let tls_conf = tls_dir.map_or_else(String::new, |d| {
            format!(
                "tls-replication yes\ntls-cert-file {0}/server.crt\ntls-key-file {0}/server.key\n\
                 tls-ca-cert-file {0}/ca.crt\n",
                d.display()
            )
        });
        for _ in 0..3 {
            let port = free_port();
            let conf = sentinel.dir.join(format!("sentinel-{port}.conf"));
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
                    master = known[0],
                    user = sentinel.user,
                    password = sentinel.password,
                ),
            )
            .expect("sentinel config");
            let child = std::process::Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel");
            sentinel.children.push(child);
            sentinel.sentinel_ports.push(port);
            sentinel.sentinel_tls_ports.extend(tls_port);
        }
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

pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/services.sh installs redis, which depends on it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 in `dir`.
pub fn certificates(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=redsink test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
}

/// A directory with a test CA and a server certificate for 127.0.0.1 ([`certificates`]),
/// removed when dropped (also when the test fails).
pub struct CertDir(pub std::path::PathBuf);

impl CertDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("certificate dir");
        certificates(&dir);
        Self(dir)
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client for `url`, trusting the test CA in `ca_dir` when there is one.
pub fn client_for(url: &str, ca_dir: Option<&std::path::Path>) -> redis::Client {
    match ca_dir {
        None => redis::Client::open(url).expect("redis url"),
        Some(dir) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(dir.join("ca.crt")).expect("ca.crt")),
                },
            )
            .expect("redis url with TLS")
        }
    }
}

/// redis-server arguments for a TLS port with the test certificates of `dir`.
pub fn tls_args(dir: &std::path::Path, port: u16) -> Vec<String> {
    let file = |f: &str| dir.join(f).display().to_string();
    vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        file("server.crt"),
        "--tls-key-file".into(),
        file("server.key"),
        "--tls-ca-cert-file".into(),
        file("ca.crt"),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}
