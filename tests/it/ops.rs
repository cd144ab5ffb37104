//! The operator commands, run as the real binary against the real services.

use crate::common::{self, TestDb};
use crate::{ITEMS, P_19_99, event, item, items_mapping, key};

#[tokio::test]
async fn status_shows_lag_pending_consumers_checkpoints_and_dead_letters() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    common::xadd(&mut r, &stream, "{}", "{not json").await;
    let applied =
        crate::add_change(&mut r, &stream, 2, "c", 11, "null", &item(2, "b", P_19_99)).await;
    let mapping = items_mapping(&prefix);
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    // Two entries the group has not read yet, and another group with a consumer that
    // read one entry and never acknowledged it.
    for id in [3, 4] {
        crate::add_change(
            &mut r,
            &stream,
            id,
            "c",
            12,
            "null",
            &item(id, "c", P_19_99),
        )
        .await;
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("other")
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("XGROUP CREATE");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("other")
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut r)
        .await
        .expect("XREADGROUP");

    let text = common::config_text(&db, "c1", &mapping);
    let (code, out, err) = common::redsink_cli(&text, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    let s = &json["streams"][0];
    assert_eq!(s["stream"], stream.as_str());
    assert_eq!(s["length"], 5);
    assert_eq!(s["dlq_length"], 1);
    assert_eq!(s["table"], "public.items");
    let groups = s["groups"].as_array().expect("groups");
    let group = |name: &str| {
        groups
            .iter()
            .find(|g| g["group"] == name)
            .unwrap_or_else(|| panic!("group {name} in {groups:?}"))
    };
    assert_eq!(group("redsink")["lag"], 2);
    assert_eq!(group("redsink")["pending"], 0);
    assert_eq!(group("other")["pending"], 1);
    assert_eq!(group("other")["consumers"][0]["name"], "ghost");
    assert!(group("other")["oldest_pending_idle_ms"].is_u64());
    assert_eq!(s["checkpoints"][0]["consumer_group"], "redsink");
    assert_eq!(s["checkpoints"][0]["last_id"], applied.as_str());

    let (code, out, err) = common::redsink_cli(&text, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("group redsink: lag 2, pending 0"), "{out}");
    assert!(out.contains("consumer ghost: pending 1"), "{out}");
    assert!(out.contains("dead letters 1"), "{out}");
    assert!(
        !out.contains("://") && !err.contains("://"),
        "no URL is printed: {out}{err}"
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn dead_letters_can_be_listed_shown_retried_and_purged() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let dlq = format!("{stream}:dlq");
    let mut r = common::redis().await;
    // Two events for a column that does not exist yet, and one that is not JSON.
    let wide =
        |id: i64| format!(r#"{{"id":{id},"name":"w","price":"B88=","qty":1,"colour":"red"}}"#);
    let first = common::xadd(&mut r, &stream, &key(1), &event("c", 10, "null", &wide(1))).await;
    common::xadd(&mut r, &stream, &key(2), &event("c", 11, "null", &wide(2))).await;
    common::xadd(&mut r, &stream, "{}", "{not json").await;
    let mapping = items_mapping(&prefix);
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(common::xlen(&mut r, &dlq).await, 3);
    let text = common::config_text(&db, "c1", &mapping);

    let (code, out, err) = common::redsink_cli(&text, &["dlq", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["entry_id"], first.as_str());
    assert_eq!(list[0]["stream"], stream.as_str());
    assert!(
        list[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("colour")),
        "{out}"
    );
    let ids: Vec<String> = list
        .iter()
        .map(|l| l["id"].as_str().unwrap_or_default().to_string())
        .collect();

    let (code, out, err) = common::redsink_cli(&text, &["dlq", "show", &ids[0]]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("from:  {stream} entry {first}")),
        "{out}"
    );
    assert!(
        out.contains("\"colour\":\"red\""),
        "the original fields: {out}"
    );

    // The column is added; the two retried events now apply through the normal path.
    db.exec("ALTER TABLE public.items ADD COLUMN colour text")
        .await;
    let (code, out, err) = common::redsink_cli(&text, &["dlq", "retry", &ids[0], &ids[1]]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(common::xlen(&mut r, &dlq).await, 1);
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    let colours: Vec<(i32, Option<String>)> =
        sqlx::query_as("SELECT id, colour FROM public.items ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    assert_eq!(
        colours,
        vec![(1, Some("red".into())), (2, Some("red".into()))]
    );

    let (code, out, _) = common::redsink_cli(&text, &["dlq", "purge", "--all"]);
    assert_ne!(code, 0, "purge without --yes changes nothing: {out}");
    assert_eq!(common::xlen(&mut r, &dlq).await, 1);
    let (code, _, err) = common::redsink_cli(&text, &["dlq", "purge", "--all", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(common::xlen(&mut r, &dlq).await, 0);
    let (code, _, err) = common::redsink_cli(&text, &["dlq", "show", "1-1"]);
    assert_ne!(code, 0);
    assert!(err.contains("no dead letter 1-1"), "{err}");
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn group_reset_redelivers_and_consumers_prune_removes_idle_ones() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let first =
        crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    crate::add_change(&mut r, &stream, 2, "c", 11, "null", &item(2, "b", P_19_99)).await;
    let mapping = items_mapping(&prefix);
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    let text = common::config_text(&db, "c1", &mapping);

    let (code, out, _) = common::redsink_cli(&text, &["group", "reset", "--to", "0"]);
    assert_ne!(code, 0, "without --yes nothing changes");
    assert!(out.contains("would move group redsink to 0"), "{out}");
    let (code, _, err) = common::redsink_cli(&text, &["group", "reset", "--to", &first, "--yes"]);
    assert_eq!(code, 0, "{err}");
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut r)
        .await
        .expect("XINFO");
    assert_eq!(
        groups[0].get("last-delivered-id"),
        Some(&redis::Value::BulkString(first.clone().into_bytes()))
    );

    // A consumer that read an entry and left.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("redsink")
        .arg("gone")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut r)
        .await
        .expect("XREADGROUP");
    // "gone" holds the entry it read: it is not pruned while that is pending.
    let (code, out, err) = common::redsink_cli(&text, &["consumers", "prune", "--idle", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed 0 consumers"), "{out}");
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("redsink")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut r)
        .await
        .expect("XPENDING");
    let ids: Vec<&String> = pending.iter().map(|p| &p.0).collect();
    let _: i64 = redis::cmd("XACK")
        .arg(&stream)
        .arg("redsink")
        .arg(ids)
        .query_async(&mut r)
        .await
        .expect("XACK");
    let (code, out, err) = common::redsink_cli(&text, &["consumers", "prune", "--idle", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed consumer gone"), "{out}");
    assert!(
        common::consumers(&mut r, &stream, "redsink")
            .await
            .is_empty()
    );
    common::cleanup_streams(&prefix).await;
}

/// GET `path` from `address`: (status code, body).
async fn http_get(address: &str, path: &str) -> (u16, String) {
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
fn sample(scrape: &str, line_start: &str) -> Option<f64> {
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

/// The trim script compares and increments IDs as decimal strings: a last-delivered ID
/// with the largest sequence number is followed by the next millisecond.
#[tokio::test]
async fn trimming_handles_the_largest_sequence_number() {
    let stream = format!("{}:edge", common::unique("s"));
    let mut r = common::redis().await;
    for id in ["5-0", "5-18446744073709551615", "6-0"] {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg(id)
            .arg("f")
            .arg("v")
            .query_async(&mut r)
            .await
            .expect("XADD");
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("5-18446744073709551615")
        .query_async(&mut r)
        .await
        .expect("XGROUP CREATE");
    let db = TestDb::new().await;
    let config = common::config(&db, "c1", &items_mapping("unused"));
    let mut control = redsink::redis::connect_control(&config.redis)
        .await
        .expect("connect");
    let trimmed = redsink::redis::admin::trim_acked(&mut control, &stream)
        .await
        .expect("trim");
    assert_eq!(trimmed, 2);
    let left: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .expect("XRANGE");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "6-0");
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut r)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn trimming_keeps_what_any_group_still_needs_and_counts_what_a_ceiling_drops() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_items(&stream, 10).await;
    // Another group on the stream: it read two entries and acknowledged only the first.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("slow")
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("XGROUP CREATE");
    type Entries = Vec<(String, Vec<(String, String)>)>;
    let read: Vec<(String, Entries)> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("slow")
        .arg("s1")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut r)
        .await
        .expect("XREADGROUP");
    let first = read[0].1[0].0.clone();
    let _: i64 = redis::cmd("XACK")
        .arg(&stream)
        .arg("slow")
        .arg(&first)
        .query_async(&mut r)
        .await
        .expect("XACK");

    let address = format!("127.0.0.1:{}", common::free_port());
    let extra = format!(
        "[http]\naddress = \"{address}\"\n{}trim = \"acked\"\ntrim_max_len = 5\n",
        items_mapping(&prefix)
    );
    let running = common::Running::start(common::config(&db, "c1", &extra));
    let trimmed = format!("redsink_entries_trimmed_total{{stream=\"{stream}\"}}");
    let dropped = format!("redsink_trim_dropped_unacked_total{{stream=\"{stream}\"}}");
    let started = std::time::Instant::now();
    let scrape = loop {
        if tokio::net::TcpStream::connect(&address).await.is_ok() {
            let scrape = http_get(&address, "/metrics").await.1;
            if sample(&scrape, &dropped).is_some() {
                break scrape;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(40),
            "no trim"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // redsink had applied and acknowledged all ten; "slow" still needs the second entry
    // on: only the first went as acknowledged, then the ceiling of 5 dropped 4 more.
    assert_eq!(sample(&scrape, &trimmed), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, &dropped), Some(4.0), "{scrape}");
    assert_eq!(common::xlen(&mut r, &stream).await, 5);
    assert_eq!(
        crate::items(&db).await.len(),
        10,
        "the replica has every row"
    );
    running.stop().await.expect("stop");
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn migrate_creates_redsinks_schema_and_is_idempotent() {
    let db = TestDb::new().await;
    let text = common::config_text(&db, "c1", &items_mapping(&common::unique("s")));
    for _ in 0..2 {
        let (code, out, err) = common::redsink_cli(&text, &["migrate"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    assert!(
        redsink::write::internal_tables_present(&db.pool)
            .await
            .expect("query")
    );
}
