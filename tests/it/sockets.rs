//! Every TCP socket redsink opens to Redis or Postgres has `TCP_NODELAY` on: the real
//! binary runs a sync under `strace`, and each socket that connects to either server must
//! have had `setsockopt(…, TCP_NODELAY, [1])` and never a later `[0]`. Without it, Nagle's
//! algorithm and the server's delayed ACK cost ~40 ms per round trip (vendor/README.md).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{self, TestDb};
use crate::{ITEMS, P_19_99, item, items_mapping};

/// What one socket (a file descriptor between its creation and its close) did.
#[derive(Debug, Default, Clone)]
struct Socket {
    /// The `connect` target, e.g. `sin_port=htons(6379)`.
    peer: Option<String>,
    /// The last `TCP_NODELAY` value set on it.
    nodelay: Option<bool>,
}

/// Joins strace's `<unfinished ...>` / `<... resumed>` halves (per process) into whole
/// lines, without the `[pid N]` prefix.
fn whole_lines(trace: &str) -> Vec<(String, String)> {
    let mut open: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for line in trace.lines() {
        let (pid, rest) = match line.split_once(' ') {
            Some((pid, rest)) if pid.chars().all(|c| c.is_ascii_digit()) => (pid, rest.trim()),
            _ => ("", line.trim()),
        };
        if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            open.insert(pid.to_string(), head.to_string());
        } else if rest.starts_with("<...") {
            let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
            let head = open.remove(pid).unwrap_or_default();
            out.push((pid.to_string(), format!("{head}{tail}")));
        } else {
            out.push((pid.to_string(), rest.to_string()));
        }
    }
    out
}

/// The first argument of a syscall line: `connect(12, …` → 12.
fn fd_of(call: &str) -> Option<u32> {
    call.split_once('(')?
        .1
        .split([',', ')'])
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Every socket that connected somewhere, from an strace of `socket`, `connect`,
/// `setsockopt` and `close` (`-f`, `-o`: one file for all threads).
fn sockets(trace: &str) -> Vec<Socket> {
    let mut live: HashMap<u32, Socket> = HashMap::new();
    let mut done = Vec::new();
    for (_, call) in whole_lines(trace) {
        if call.starts_with("socket(") {
            let Some(fd) = call
                .rsplit_once("= ")
                .and_then(|(_, r)| r.trim().parse().ok())
            else {
                continue;
            };
            if let Some(old) = live.insert(fd, Socket::default()) {
                done.push(old);
            }
        } else if call.starts_with("close(") {
            if let Some(s) = fd_of(&call).and_then(|fd| live.remove(&fd)) {
                done.push(s);
            }
        } else if let Some(fd) = fd_of(&call) {
            let s = live.entry(fd).or_default();
            if call.starts_with("connect(") && call.contains("sin") {
                let port = call
                    .split("htons(")
                    .nth(1)
                    .and_then(|p| p.split(')').next());
                s.peer = port.map(str::to_string);
            } else if call.starts_with("setsockopt(") && call.contains("TCP_NODELAY") {
                s.nodelay = Some(call.contains("[1]"));
            }
        }
    }
    done.extend(live.into_values());
    done.into_iter().filter(|s| s.peer.is_some()).collect()
}

fn port_of(url: &str) -> String {
    let after_host = url.rsplit('@').next().unwrap_or(url);
    let host_port = after_host.split('/').nth(2).unwrap_or(after_host);
    let host_port = host_port.split(['/', '?']).next().unwrap_or(host_port);
    host_port.rsplit(':').next().unwrap_or("").to_string()
}

#[test]
fn parses_strace_lines_per_socket() {
    let trace = "\
11 socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK, IPPROTO_TCP) = 9
11 setsockopt(9, SOL_TCP, TCP_NODELAY, [0], 4) = 0
11 connect(9, {sa_family=AF_INET, sin_port=htons(6379), sin_addr=inet_addr(\"127.0.0.1\")}, 16 <unfinished ...>
12 socket(AF_INET, SOCK_STREAM, IPPROTO_TCP) = 10
11 <... connect resumed>) = -1 EINPROGRESS (Operation now in progress)
12 connect(10, {sa_family=AF_INET, sin_port=htons(5432), sin_addr=inet_addr(\"127.0.0.1\")}, 16) = 0
12 setsockopt(10, SOL_TCP, TCP_NODELAY, [1], 4) = 0
11 close(9) = 0
";
    let s = sockets(trace);
    assert_eq!(s.len(), 2, "{s:?}");
    let redis = s
        .iter()
        .find(|s| s.peer.as_deref() == Some("6379"))
        .expect("redis");
    assert_eq!(redis.nodelay, Some(false));
    let pg = s
        .iter()
        .find(|s| s.peer.as_deref() == Some("5432"))
        .expect("pg");
    assert_eq!(pg.nodelay, Some(true));
    assert_eq!(
        port_of("postgres://u:p@127.0.0.1:5433/db?sslmode=disable"),
        "5433"
    );
    assert_eq!(port_of("redis://127.0.0.1:6380"), "6380");
}

#[tokio::test]
async fn every_redis_and_postgres_socket_has_tcp_nodelay() {
    let strace = std::process::Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "this test needs strace (apt-get install strace; scripts/test.sh installs it)"
    );
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("nodelay");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    for id in 1..=20_i64 {
        let after = item(id, "x", P_19_99);
        let lsn = 10 + id.unsigned_abs();
        crate::add_change(&mut r, &stream, id, "c", lsn, "null", &after).await;
    }
    let dir = std::env::temp_dir().join(common::unique("nodelay"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("redsink.toml");
    let text = common::config_text(&db, "nodelay", &items_mapping(&prefix));
    std::fs::write(&config, text).expect("write config");
    let trace = dir.join("trace");
    let mut child = std::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=socket,connect,setsockopt,close",
            "-o",
        ])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_redsink"))
        .args(["run", "--config"])
        .arg(&config)
        .env("REDSINK_LOG", "warn")
        .spawn()
        .expect("start redsink under strace");
    let start = Instant::now();
    while crate::items(&db).await.len() < 20 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not synced under strace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().to_string();
    // SIGTERM to redsink (strace's child), not to strace: find it by its parent.
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for c in children.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", c])
            .status();
    }
    let status = child.wait().expect("strace ends");
    assert!(
        status.success(),
        "redsink under strace exited with {status}"
    );
    let text = std::fs::read_to_string(&trace).expect("read trace");
    std::fs::remove_dir_all(&dir).ok();
    let ports = [port_of(&common::redis_url()), port_of(&db.url)];
    let ours: Vec<Socket> = sockets(&text)
        .into_iter()
        .filter(|s| s.peer.as_ref().is_some_and(|p| ports.contains(p)))
        .collect();
    for port in &ports {
        assert!(
            ours.iter().any(|s| s.peer.as_ref() == Some(port)),
            "no socket to port {port} seen: {ours:?}"
        );
    }
    let without: Vec<&Socket> = ours.iter().filter(|s| s.nodelay != Some(true)).collect();
    assert!(
        without.is_empty(),
        "sockets without TCP_NODELAY: {without:?}"
    );
}
