//! What a user meets at the command line: an error is said once, a closed stderr is no
//! panic, `produce` with nothing to add says so.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::common;

/// A config that fails validation (no Redis or Postgres needed).
const BAD: &str = "[redis]\nurl = \"redis://127.0.0.1:1\"\n[postgres]\nurl = \"postgres://u@127.0.0.1:1/db\"\n[batch]\nmax_batch = 0\n[[mapping]]\nstreams = [\"s\"]\ntable = \"public.t\"\n";

#[test]
fn a_fatal_error_is_printed_once() {
    let (code, _out, err) = common::redsink_cli(BAD, &["check"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("batch.max_batch").count(), 1, "once: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        !err.contains("ERROR"),
        "no second copy as a log line: {err}"
    );
}

#[test]
fn a_closed_stderr_is_no_panic() {
    let dir = std::env::temp_dir().join(common::unique("cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("redsink.toml");
    std::fs::write(&path, BAD).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_redsink"))
        .args(["check", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start redsink");
    drop(child.stderr.take()); // the reader goes away: writes to stderr fail
    let status = child.wait().expect("redsink ends");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(status.code(), Some(1), "not a panic (101): {status}");
}

#[test]
fn produce_with_nothing_to_add_fails_and_says_why() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_redsink"))
        .args([
            "produce",
            "--redis-url",
            &common::redis_url(),
            "--stream",
            "x",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start redsink");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"\n")
        .expect("write");
    let out = child.wait_with_output().expect("redsink ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing to add"), "{err}");
}

/// A fatal Redis error says which server it came from, what and where.
#[tokio::test]
async fn a_fatal_redis_error_names_the_server_and_the_stream() {
    let db = common::TestDb::new().await;
    db.exec(crate::ITEMS).await;
    let key = common::unique("cli:not-a-stream");
    let mut redis = redis::Client::open(common::redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("x")
        .query_async(&mut redis)
        .await
        .expect("SET");
    let text = common::config_text(&db, "cli", "")
        + &format!("[[mapping]]\nstreams = [\"{key}\"]\ntable = \"public.items\"\n");
    let (code, _out, err) = common::redsink_cli(&text, &["run"]);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("DEL");
    assert_eq!(code, 1, "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    let url = url::Url::parse(&common::redis_url()).expect("url");
    let at = format!(
        "redis at {}:{}",
        url.host_str().unwrap_or_default(),
        url.port().unwrap_or(6379)
    );
    assert!(line.contains(&at), "{err}");
    assert!(line.contains(&key) && line.contains("WRONGTYPE"), "{err}");
}
