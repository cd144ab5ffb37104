//! The HTTP endpoints of a running pipeline: /healthz, /readyz and /metrics.

use crate::common::{self, TestDb};
use crate::{ITEMS, items_mapping};

/// GET `path` from `address`: (status code, body).
pub async fn http_get(address: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    socket.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `line_start` (metric name and labels) in a scrape.
pub fn sample(scrape: &str, line_start: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

async fn wait_http(address: &str, path: &str, status: u16) -> String {
    let started = std::time::Instant::now();
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            let (s, body) = http_get(address, path).await;
            if s == status {
                return body;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{path} never answered {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_move_during_a_sync_and_health_endpoints_answer() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let address = format!("127.0.0.1:{}", common::free_port());
    let extra = format!(
        "[http]\naddress = \"{address}\"\n{}",
        items_mapping(&prefix)
    );
    let running = common::Running::start(common::config(&db, "c1", &extra));
    let ready = wait_http(&address, "/readyz", 200).await;
    assert_eq!(ready, "ready\n");
    assert_eq!(http_get(&address, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(&address, "/nope").await.0, 404);

    crate::add_items(&stream, 20).await;
    common::xadd(&mut r, &stream, "{}", "{not json").await;
    common::wait_rows(&db, "public.items", 19).await;
    let read = format!("redsink_entries_read_total{{stream=\"{stream}\"}}");
    let acked = format!("redsink_entries_acked_total{{stream=\"{stream}\"}}");
    let dead = format!("redsink_entries_dead_lettered_total{{stream=\"{stream}\"}}");
    let mut scrape = String::new();
    for _ in 0..200 {
        scrape = http_get(&address, "/metrics").await.1;
        if sample(&scrape, &acked) == Some(21.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&scrape, &read), Some(21.0), "{scrape}");
    assert_eq!(sample(&scrape, &acked), Some(21.0), "{scrape}");
    assert_eq!(sample(&scrape, &dead), Some(1.0), "{scrape}");
    assert_eq!(
        sample(
            &scrape,
            "redsink_rows_written_total{table=\"public.items\"}"
        ),
        Some(20.0)
    );
    assert!(sample(&scrape, "redsink_batch_entries_count").is_some_and(|n| n >= 1.0));
    assert!(sample(&scrape, "redsink_commit_duration_seconds_count").is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(&scrape, "redsink_end_to_end_latency_seconds_count"),
        Some(20.0)
    );
    assert_eq!(sample(&scrape, "redsink_ready"), Some(1.0));
    assert!(scrape.contains("redsink_build_info{version=\""));
    // The group gauges are polled every 15 s.
    let lag = format!("redsink_group_lag{{stream=\"{stream}\",group=\"redsink\"}}");
    let dlq = format!("redsink_dlq_length{{stream=\"{stream}\"}}");
    for _ in 0..600 {
        scrape = http_get(&address, "/metrics").await.1;
        if sample(&scrape, &dlq) == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&scrape, &lag), Some(0.0), "{scrape}");
    assert_eq!(sample(&scrape, &dlq), Some(1.0), "{scrape}");
    // Every metric the Grafana dashboard queries is exported.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/dashboards/redsink.json"
    ))
    .expect("dashboard");
    let mut names: Vec<&str> = dashboard
        .match_indices("redsink_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            scrape.contains(&format!("# TYPE {base} ")),
            "the dashboard uses {name}, which /metrics does not export"
        );
    }
    running.stop().await.expect("stop");
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn readyz_fails_while_postgres_is_unreachable() {
    let db = TestDb::new().await;
    let address = format!("127.0.0.1:{}", common::free_port());
    let prefix = common::unique("s");
    let extra = format!(
        "[http]\naddress = \"{address}\"\n{}",
        items_mapping(&prefix)
    );
    let mut config = common::config(&db, "c1", &extra);
    config.postgres.url = format!("postgres://postgres@127.0.0.1:{}/none", common::free_port());
    let running = common::Running::start(config);
    let why = wait_http(&address, "/readyz", 503).await;
    assert!(why.contains("not yet connected"), "{why}");
    assert_eq!(http_get(&address, "/healthz").await.0, 200);
    let retries = "redsink_retries_total{operation=\"connecting to postgres\"}";
    let mut scrape = String::new();
    for _ in 0..200 {
        scrape = http_get(&address, "/metrics").await.1;
        if sample(&scrape, retries).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&scrape, "redsink_ready"), Some(0.0));
    assert!(
        sample(&scrape, retries).is_some_and(|n| n >= 1.0),
        "{scrape}"
    );
    running.stop().await.expect("stop");
    common::cleanup_streams(&prefix).await;
}

/// An idle instance (nothing to write) still notices that Postgres went away: the
/// gauge round (every 15 s) asks it, and /readyz says so.
#[tokio::test]
async fn readyz_fails_when_postgres_goes_away_while_idle() {
    let pg = common::PgServer::start_logical();
    let url = pg.url("postgres");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::raw_sql(ITEMS).execute(&pool).await.expect("table");
    pool.close().await;
    let db = TestDb::new().await;
    let address = format!("127.0.0.1:{}", common::free_port());
    let prefix = common::unique("s");
    let extra = format!(
        "[http]\naddress = \"{address}\"\n{}",
        items_mapping(&prefix)
    );
    let mut config = common::config(&db, "c1", &extra);
    config.postgres.url = url;
    let running = common::Running::start(config);
    wait_http(&address, "/readyz", 200).await;
    drop(pg);
    let why = wait_http(&address, "/readyz", 503).await;
    assert!(why.contains("reaching postgres is failing"), "{why}");
    running.stop().await.expect("stop");
    common::cleanup_streams(&prefix).await;
}

/// Idle clients (connected, sending nothing) cannot starve the probes: with 40 of them
/// holding connections open, every /healthz and /readyz probe is answered.
#[tokio::test]
async fn probes_are_answered_while_idle_connections_are_held_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let address = format!("127.0.0.1:{}", common::free_port());
    let extra = format!(
        "[http]\naddress = \"{address}\"\n{}",
        items_mapping(&prefix)
    );
    let running = common::Running::start(common::config(&db, "c1", &extra));
    wait_http(&address, "/readyz", 200).await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    // Let the server accept them all before probing.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for round in 0..3 {
        for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
            let probe = async {
                let mut socket = tokio::net::TcpStream::connect(&address).await?;
                socket
                    .write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                    .await?;
                let mut response = String::new();
                socket.read_to_string(&mut response).await?;
                std::io::Result::Ok(response)
            };
            let answer = tokio::time::timeout(std::time::Duration::from_secs(3), probe).await;
            let response = match answer {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => panic!("probe {round} of {path}: {e}"),
                Err(_) => panic!("probe {round} of {path}: no answer within 3 s"),
            };
            assert!(
                response.starts_with("HTTP/1.1 200") && response.ends_with(body),
                "probe {round} of {path}: {response:?}"
            );
        }
    }
    drop(idle);
    running.stop().await.expect("stop");
    common::cleanup_streams(&prefix).await;
}

/// A stream deleted while being read (or lost by a Redis restart without persistence)
/// comes back without its group: redsink creates the group again, says so loudly and
/// counts it, since entries may have been lost with it.
#[tokio::test]
async fn a_stream_recreated_without_its_group_is_counted() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let address = format!("127.0.0.1:{}", common::free_port());
    let extra = format!(
        "[http]\naddress = \"{address}\"\n{}",
        items_mapping(&prefix)
    );
    crate::add_items(&stream, 2).await;
    let running = common::Running::start(common::config(&db, "c1", &extra))
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut r)
        .await
        .expect("DEL");
    crate::add_change(
        &mut r,
        &stream,
        3,
        "c",
        20,
        "null",
        &crate::item(3, "c", crate::P_19_99),
    )
    .await;
    common::wait_rows(&db, "public.items", 2).await;
    let recreated = format!("redsink_groups_recreated_total{{stream=\"{stream}\"}}");
    let mut scrape = String::new();
    for _ in 0..200 {
        scrape = http_get(&address, "/metrics").await.1;
        if sample(&scrape, &recreated).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&scrape, &recreated), Some(1.0), "{scrape}");
    running.stop().await.expect("stop");
    common::cleanup_streams(&prefix).await;
}
