//! What a user meets when a side is away or blocked: a connection error names the
//! endpoint and its real cause once, Redis is reached before Postgres is migrated, and
//! a write blocked on a table lock is reported, naming the table.

use std::time::Duration;

use crate::common::{self, Spawned, TestDb};
use crate::{ITEMS, add_change, item, items_mapping};

/// A config of the shared Redis (or `redis`) and the Postgres at `pg`.
fn config(redis: &str, pg: &str, extra: &str) -> String {
    let mapping = items_mapping(&common::unique("fc"));
    format!(
        "[redis]\nurl = \"{redis}\"\nblock = \"200ms\"\n[postgres]\nurl = \"{pg}\"\n{extra}\n{mapping}"
    )
}

#[test]
fn a_refused_postgres_is_named_with_its_cause() {
    let port = common::free_port();
    let pg = format!("postgres://postgres:hunter2@127.0.0.1:{port}/replica");
    let mut run = Spawned::start(&config(&common::redis_url(), &pg, ""), &["run"], "warn");
    let line = run
        .wait_line(Duration::from_secs(8), |l| {
            l.contains("connecting to postgres")
        })
        .unwrap_or_else(|| panic!("no retry warning within 8 s: {}", run.log()));
    assert!(
        line.contains(&format!("127.0.0.1:{port}/replica")),
        "{line}"
    );
    assert_eq!(
        line.matches("Connection refused").count(),
        1,
        "once: {line}"
    );
    assert!(!line.contains("pool timed out"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
}

#[test]
fn a_missing_database_is_said_once() {
    let name = common::unique("missing");
    let admin = common::pg_admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let pg = format!("{base}/{name}");
    let (code, _out, err) = common::redsink_cli(&config(&common::redis_url(), &pg, ""), &["run"]);
    assert_eq!(code, 1, "{err}");
    let said = format!("database \"{name}\" does not exist");
    assert_eq!(err.matches(&said).count(), 1, "once: {err}");
    assert!(
        !err.contains("at line"),
        "no line of the server's source: {err}"
    );
    let host = base.rsplit_once('@').map_or(base, |(_, h)| h);
    assert!(
        err.contains(&format!("{host}/{name}")),
        "names the endpoint: {err}"
    );
}

#[tokio::test]
async fn redis_is_reached_before_postgres_is_migrated() {
    let db = TestDb::new().await;
    let port = common::free_port();
    let redis = format!("redis://127.0.0.1:{port}");
    let mut run = Spawned::start(&config(&redis, &db.url, ""), &["run"], "warn");
    let line = run
        .wait_line(Duration::from_secs(8), |l| {
            l.contains("connecting to redis")
        })
        .unwrap_or_else(|| panic!("no retry warning within 8 s: {}", run.log()));
    assert!(line.contains(&format!("redis=127.0.0.1:{port}")), "{line}");
    assert_eq!(
        line.matches("Connection refused").count(),
        1,
        "once: {line}"
    );
    let schema: Option<String> = sqlx::query_scalar("SELECT to_regnamespace('redsink')::text")
        .fetch_one(&db.pool)
        .await
        .expect("query");
    assert_eq!(schema, None, "nothing migrated while redis is away");
}

#[tokio::test]
async fn a_write_blocked_on_a_table_lock_is_reported() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("blocked");
    let stream = format!("{prefix}:items");
    let text = format!(
        "[redis]\nurl = \"{}\"\nblock = \"200ms\"\n[postgres]\nurl = \"{}\"\nslow_write_after = \"1s\"\n{}",
        common::redis_url(),
        db.url,
        items_mapping(&prefix)
    );
    let mut run = Spawned::start(&text, &["run"], "info");
    run.wait_line(Duration::from_secs(20), |l| l.contains("pipeline: started"))
        .unwrap_or_else(|| panic!("not started: {}", run.log()));
    let mut lock = db.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE public.items IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let mut r = common::redis().await;
    add_change(&mut r, &stream, 1, "c", 11, "null", &item(1, "a", "B88=")).await;
    let warned = run
        .wait_line(Duration::from_secs(6), |l| {
            l.contains("WARN") && l.contains("writing a batch has taken")
        })
        .unwrap_or_else(|| panic!("no warning while blocked: {}", run.log()));
    assert!(warned.contains("public.items"), "names the table: {warned}");
    // A second batch waits for the blocked one: the loop waits, its progress line not.
    add_change(&mut r, &stream, 2, "c", 12, "null", &item(2, "b", "B88=")).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // read and due: the loop waits
    run.wait_line(Duration::from_secs(12), |l| l.contains(" progress stats="))
        .unwrap_or_else(|| panic!("no progress line while blocked: {}", run.log()));
    lock.rollback().await.expect("release the lock");
    common::wait_rows(&db, "public.items", 1).await; // more than 1
    let ended = run
        .wait_line(Duration::from_secs(10), |l| {
            l.contains("the slow write ended")
        })
        .unwrap_or_else(|| panic!("no end of the slow write: {}", run.log()));
    assert!(ended.contains("public.items"), "{ended}");
    common::cleanup_streams(&prefix).await;
}
