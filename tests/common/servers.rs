//! Private servers for one test: free ports, a redis-server that can be killed and
//! restarted, a PostgreSQL cluster (logical WAL, optional TLS), and the ACL arguments
//! the cluster and sentinel nodes share.

use std::time::{Duration, Instant};

use super::unique;

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
        wait_port(self.port);
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
        let bin = pg_binaries();
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
            options.push_str(&server.enable_tls(certs, &data));
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

    /// Puts the test certificates of `certs` where the server reads them and refuses TCP
    /// clients without TLS; returns the server options that turn TLS on.
    fn enable_tls(&self, certs: &std::path::Path, data: &std::path::Path) -> String {
        // Postgres wants its key owned by itself and private.
        for f in ["server.crt", "server.key"] {
            std::fs::copy(certs.join(f), self.dir.join(f)).expect("copy certificate");
        }
        let key = self.dir.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod key");
        if is_root() {
            for f in ["server.crt", "server.key"] {
                let _ = std::process::Command::new("chown")
                    .arg("postgres")
                    .arg(self.dir.join(f))
                    .status();
            }
        }
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
        format!(
            " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
            self.dir.display()
        )
    }

    /// `program` of the PostgreSQL binaries, as the postgres user when we are root.
    fn command(&self, program: &str) -> std::process::Command {
        let exe = self.bin.join(program);
        if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
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
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data.to_string_lossy(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest PostgreSQL installed under /usr/lib/postgresql.
fn pg_binaries() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL binaries under /usr/lib/postgresql (scripts/services.sh installs them)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .max()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// redis-server arguments: the default user off, `user` with every permission, and the
/// same user for replication.
pub(super) fn acl_args(user: &str, password: &str) -> Vec<String> {
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
