//! Volume: 100k events over 8 shards in-process, and a real process killed mid-sync.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redsink::demo::produce::{OrderState, Orders, xadd_all};

use crate::common::{self, TestDb};

pub const ORDERS: &str =
    "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint, status text,
  amount numeric(12,2), note text, created_at timestamptz, updated_at timestamp, attrs jsonb)";

type OrderRow = (i64, i64, String, String, String);

/// The state the first `n` events leave the table in.
pub fn expected(orders: &Orders, n: u64) -> Vec<OrderRow> {
    let mut last: HashMap<u64, u64> = HashMap::new();
    for j in 0..n {
        last.insert(orders.id(j), j);
    }
    let mut rows: Vec<OrderRow> = last
        .into_iter()
        .filter_map(|(id, j)| match orders.state(j) {
            OrderState::Deleted => None,
            OrderState::Row {
                customer_id,
                status,
                amount,
                note,
            } => Some((
                i64::try_from(id).unwrap_or(0),
                customer_id,
                status,
                amount,
                note,
            )),
        })
        .collect();
    rows.sort();
    rows
}

pub async fn actual(db: &TestDb) -> Vec<OrderRow> {
    sqlx::query_as(
        "SELECT id, customer_id, status, amount::text, note FROM public.orders ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("orders")
}

pub async fn produce(prefix: &str, orders: &Orders, n: u64) -> Vec<String> {
    let mut r = common::redis().await;
    let stream = format!("{prefix}.orders");
    xadd_all(&mut r, (0..n).map(|j| orders.entry(j, &stream, 8)))
        .await
        .expect("XADD");
    (0..8).map(|i| format!("{stream}:{i}")).collect()
}

pub fn mapping(prefix: &str) -> String {
    format!("[[mapping]]\nstreams = [\"{prefix}.orders:{{0..7}}\"]\ntable = \"public.orders\"\n")
}

#[tokio::test]
async fn one_hundred_thousand_events_over_eight_shards_converge() {
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let prefix = common::unique("load");
    let orders = Orders {
        keys: 20_000,
        delete_every: Some(97),
    };
    let n = 100_000;
    let streams = produce(&prefix, &orders, n).await;
    let mut config = common::config(&db, "c1", &mapping(&prefix));
    config.batch.max_batch = 2048;
    let start = Instant::now();
    let stats = common::sync(config, &streams).await;
    let elapsed = start.elapsed();
    eprintln!(
        "synced {n} events over 8 shards in {:.2} s ({:.0} events/s, {} batches)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        stats.batches
    );
    assert_eq!(stats.read, n);
    assert_eq!(stats.acked, n);
    assert_eq!(actual(&db).await, expected(&orders, n));
    let mut r = common::redis().await;
    for s in &streams {
        assert_eq!(common::pending(&mut r, s, "redsink").await, 0, "{s}");
    }
    common::cleanup_streams(&prefix).await;
}

fn start_process(config_path: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
        .args(["run", "--config"])
        .arg(config_path)
        .env("REDSINK_LOG", "warn")
        .spawn()
        .expect("start redsink")
}

#[tokio::test]
async fn a_process_killed_mid_sync_resumes_without_loss_after_restart() {
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let prefix = common::unique("kill");
    let orders = Orders {
        keys: 5_000,
        delete_every: Some(13),
    };
    let n = 40_000;
    let streams = produce(&prefix, &orders, n).await;
    let dir = std::env::temp_dir().join(common::unique("cfg"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("redsink.toml");
    std::fs::write(
        &path,
        format!(
            "[redis]\nurl = \"{}\"\nconsumer = \"k1\"\nblock = \"200ms\"\n[postgres]\nurl = \"{}\"\n[batch]\nmax_batch = 200\nmax_delay = \"5ms\"\n{}",
            common::redis_url(),
            db.url,
            mapping(&prefix)
        ),
    )
    .expect("write config");

    // Kill -9 once some batches have committed, and again a little later.
    for _ in 0..2 {
        let mut child = start_process(&path);
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM public.orders")
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0);
        common::wait_rows(&db, "public.orders", seen + 500).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    let mut r = common::redis().await;
    assert!(
        !common::drained(&mut r, &streams, "redsink").await,
        "killed before the end"
    );

    // Restart: the same consumer re-reads its PEL, then the rest; SIGTERM exits cleanly.
    let mut child = start_process(&path);
    let start = Instant::now();
    while !common::drained(&mut r, &streams, "redsink").await {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not drained after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert_eq!(actual(&db).await, expected(&orders, n));
    for s in &streams {
        assert!(
            common::consumers(&mut r, s, "redsink").await.is_empty(),
            "k1 left the group on {s}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn two_groups_applying_the_same_events_at_once_converge() {
    // Two groups = two independent instances writing every key at the same time, as a
    // replay running beside the live sync does.
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let prefix = common::unique("two");
    let orders = Orders {
        keys: 500,
        delete_every: Some(3),
    };
    let n = 20_000;
    let streams = produce(&prefix, &orders, n).await;
    let mut a = common::config(&db, "a", &mapping(&prefix));
    a.batch.max_batch = 100;
    let mut b = a.clone();
    b.redis.group = "other".into();
    b.redis.consumer = Some("b".into());
    b.batch.max_batch = 37;
    let (ra, rb) = (common::Running::start(a), common::Running::start(b));
    let ra = ra.until_drained(&streams, "redsink").await;
    let rb = rb.until_drained(&streams, "other").await;
    ra.stop().await.expect("a stops");
    rb.stop().await.expect("b stops");
    assert_eq!(actual(&db).await, expected(&orders, n));
    common::cleanup_streams(&prefix).await;
}
