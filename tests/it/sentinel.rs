//! Redis Sentinel: redsink finds the master by name through three sentinels (an ACL user
//! on the data nodes), and a `SENTINEL FAILOVER` in the middle of a sync loses nothing:
//! it follows the new master, re-reads what the old one had not replicated, and the
//! replica ends equal to the expected rows with nothing pending.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redsink::demo::produce::{Orders, xadd_all};
use redsink::entry::EntryId;

use crate::common::{self, RedisSentinel, Running, SENTINEL_MASTER, TestDb};
use crate::load::{ORDERS, actual, expected};

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_during_sync_loses_nothing() {
    let sentinel = RedisSentinel::start();
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let stream = format!("{}.orders", common::unique("sn"));
    let streams: Vec<String> = (0..8).map(|i| format!("{stream}:{i}")).collect();
    let orders = Orders {
        keys: 10_000,
        delete_every: Some(31),
    };
    let (n, first) = (60_000, 40_000);
    let mut r = connect(&sentinel.master_url()).await;
    xadd_all(&mut r, (0..first).map(|j| orders.entry(j, &stream, 8)))
        .await
        .expect("XADD");
    // The replica has everything before the failover (else Redis itself would lose it).
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut r)
        .await
        .expect("WAIT");

    // `url` carries the data nodes' user and password; the address comes from the sentinels.
    let text = format!(
        "[redis]\nmode = \"sentinel\"\nmaster_name = \"{SENTINEL_MASTER}\"\nnodes = {nodes:?}\n\
         url = \"redis://{user}:{password}@{SENTINEL_MASTER}\"\nconsumer = \"s1\"\nblock = \"200ms\"\n\
         [postgres]\nurl = \"{pg}\"\n[batch]\nmax_batch = 500\nmax_delay = \"10ms\"\n\
         [[mapping]]\nstreams = [\"{stream}:{{0..7}}\"]\ntable = \"public.orders\"\n",
        nodes = sentinel.sentinel_urls(),
        user = sentinel.user,
        password = sentinel.password,
        pg = db.url,
    );
    let config = redsink::config::Config::from_toml(&text, "sentinel test", std::iter::empty())
        .expect("config");
    let run = Running::start(config);
    common::wait_rows(&db, "public.orders", 2_000).await;

    let old = sentinel.master_port();
    let started = Instant::now();
    tokio::task::block_in_place(|| sentinel.failover());
    let new = sentinel.master_port();
    eprintln!(
        "failover {old} → {new} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_ne!(old, new);

    let mut r = connect(&sentinel.master_url()).await;
    xadd_all(&mut r, (first..n).map(|j| orders.entry(j, &stream, 8)))
        .await
        .expect("XADD to the new master");
    let run = run
        .until_drained_at(&sentinel.master_url(), &streams, "redsink")
        .await;
    let stats = run.stop().await.expect("stops cleanly");
    eprintln!("{n} events: {stats:?}");
    assert!(stats.read >= n);
    assert_eq!(actual(&db).await, expected(&orders, n));
    for s in &streams {
        assert_eq!(common::pending(&mut r, s, "redsink").await, 0, "{s}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took too long after the failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_over_tls_to_the_sentinels_and_the_master_they_name() {
    let certs = common::CertDir::new("sntls");
    let dir = certs.0.clone();
    let sentinel = RedisSentinel::start_with(Some(&dir));
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let stream = format!("{}.orders", common::unique("st"));
    let streams: Vec<String> = (0..8).map(|i| format!("{stream}:{i}")).collect();
    let orders = Orders {
        keys: 1_000,
        delete_every: Some(7),
    };
    let n = 5_000;
    let mut r = connect(&sentinel.master_url()).await;
    xadd_all(&mut r, (0..n).map(|j| orders.entry(j, &stream, 8)))
        .await
        .expect("XADD");
    // rediss:// in `url`: the master the sentinels name is reached over TLS; rediss://
    // in `nodes`: so are the sentinels.
    let text = format!(
        "[redis]\nmode = \"sentinel\"\nmaster_name = \"{SENTINEL_MASTER}\"\nnodes = {nodes:?}\n\
         url = \"rediss://{user}:{password}@{SENTINEL_MASTER}\"\ntls_ca_file = \"{ca}\"\n\
         consumer = \"t1\"\nblock = \"200ms\"\n[postgres]\nurl = \"{pg}\"\n\
         [[mapping]]\nstreams = [\"{stream}:{{0..7}}\"]\ntable = \"public.orders\"\n",
        nodes = sentinel.sentinel_tls_urls(),
        user = sentinel.user,
        password = sentinel.password,
        ca = dir.join("ca.crt").display(),
        pg = db.url,
    );
    let config = redsink::config::Config::from_toml(&text, "sentinel TLS test", std::iter::empty())
        .expect("config");
    let stats = common::sync_at(&sentinel.master_url(), config, &streams).await;
    assert!(stats.read >= n, "{stats:?}");
    assert_eq!(actual(&db).await, expected(&orders, n));

    // `check` through the sentinels; then a user with only the rule it printed (set on
    // the master and its replica) syncs more.
    let (code, out, err) = common::redsink_cli(&text, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    let rule = crate::privilege::section(&out, "redis acl")
        .replace("<user>", "restricted")
        .replace("<password>", "pw2");
    assert!(rule.contains("+role"), "{rule}");
    for port in sentinel.data_ports {
        let mut node = connect(&format!(
            "redis://{}:{}@127.0.0.1:{port}",
            sentinel.user, sentinel.password
        ))
        .await;
        crate::privilege::acl_setuser(&mut node, &rule).await;
    }
    let more = 1_000;
    xadd_all(&mut r, (n..n + more).map(|j| orders.entry(j, &stream, 8)))
        .await
        .expect("XADD");
    let restricted = text.replace(
        &format!("{}:{}@", sentinel.user, sentinel.password),
        "restricted:pw2@",
    );
    assert_ne!(restricted, text);
    let config = redsink::config::Config::from_toml(&restricted, "restricted", std::iter::empty())
        .expect("config");
    let stats = common::sync_at(&sentinel.master_url(), config, &streams).await;
    assert!(stats.read >= more, "{stats:?}");
    assert_eq!(actual(&db).await, expected(&orders, n + more));
    drop(sentinel);
}

/// What a failover with a producer writing through it left.
struct Switch {
    /// From a sentinel announcing the new master (`+switch-master`) to redsink reading
    /// new entries there (the group's last delivered ID there moves).
    stall: Duration,
    /// Keys whose row holds a version no stream holds (applied from the old master,
    /// then discarded by Redis).
    ghosts: usize,
    /// Keys whose row is older than the newest version the streams hold.
    behind: usize,
}

/// A backlog, then `SENTINEL FAILOVER` while a producer keeps writing to the master it
/// knows (the old one, until it is demoted: what it writes there meanwhile is lost by
/// Redis) and one entry goes to the new master. Measures how long after `+switch-master`
/// redsink reads new entries from the new master, then compares the replica with what
/// the new master's streams hold once the old master is demoted and the producer follows.
async fn failover_with_a_producer(extra: &str) -> Switch {
    const MARKER: u64 = 10_000_000;
    let sentinel = RedisSentinel::start();
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let stream = format!("{}.orders", common::unique("sw"));
    let streams: Vec<String> = (0..2).map(|i| format!("{stream}:{i}")).collect();
    // A key per event: an event lost by Redis leaves its key in no stream.
    let orders = Orders {
        keys: 1_000_000,
        delete_every: None,
    };
    let backlog = 20_000;
    let mut r = connect(&sentinel.master_url()).await;
    xadd_all(&mut r, (0..backlog).map(|j| orders.entry(j, &stream, 2)))
        .await
        .expect("XADD");
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut r)
        .await
        .expect("WAIT");
    let text = format!(
        "[redis]\nmode = \"sentinel\"\nmaster_name = \"{SENTINEL_MASTER}\"\nnodes = {nodes:?}\n\
         url = \"redis://{user}:{password}@{SENTINEL_MASTER}\"\nconsumer = \"s1\"\n{extra}\n\
         [postgres]\nurl = \"{pg}\"\n[batch]\nmax_batch = 500\n\
         [[mapping]]\nstreams = [\"{stream}:{{0..1}}\"]\ntable = \"public.orders\"\n",
        nodes = sentinel.sentinel_urls(),
        user = sentinel.user,
        password = sentinel.password,
        pg = db.url,
    );
    let config = redsink::config::Config::from_toml(&text, "switch test", std::iter::empty())
        .expect("config");
    let run = Running::start(config);
    common::wait_rows(&db, "public.orders", 500).await;

    // The producer writes to the master it connected to until a write fails, then asks
    // the sentinels again (as most clients do).
    let stop = Arc::new(AtomicBool::new(false));
    let followed = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, followed) = (stop.clone(), followed.clone());
        let (stream, url) = (stream.clone(), sentinel.master_url());
        let nodes = sentinel.sentinel_ports.clone();
        tokio::spawn(async move {
            let mut conn = connect(&url).await;
            let mut j = backlog;
            let mut switched_at = None;
            while !stop.load(Ordering::Relaxed) {
                let chunk = (j..j + 10).map(|k| orders.entry(k, &stream, 2));
                if xadd_all(&mut conn, chunk).await.is_ok() {
                    j += 10;
                } else {
                    let url = tokio::task::block_in_place(|| master_url_from(&url, &nodes));
                    conn = connect(&url).await;
                    switched_at.get_or_insert(j);
                    followed.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (j, switched_at)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (old, switched) = tokio::task::block_in_place(|| sentinel.start_failover());
    // What the new master's group had delivered when it was promoted: redsink reads
    // there once that moves (nothing replicates from the old master any more).
    let mut new = connect(&sentinel.master_url()).await;
    let mut promoted = Vec::new();
    for s in &streams {
        promoted.push(last_delivered(&mut new, s).await);
    }
    let marker = orders.entry(MARKER, &stream, 2);
    let mut add = redis::cmd("XADD");
    add.arg(&marker.stream).arg("*");
    for (f, v) in &marker.fields {
        add.arg(f).arg(v);
    }
    let _: String = add.query_async(&mut new).await.expect("XADD the marker");
    loop {
        let mut moved = false;
        for (s, at) in streams.iter().zip(&promoted) {
            moved |= last_delivered(&mut new, s).await > *at;
        }
        if moved {
            break;
        }
        assert!(
            switched.elapsed() < Duration::from_secs(30),
            "redsink did not read the new master within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stall = switched.elapsed();
    eprintln!(
        "read from the new master {:.2} s after the switch",
        stall.as_secs_f64()
    );

    tokio::task::block_in_place(|| sentinel.wait_demoted(old));
    common::wait_for("the producer to follow", Duration::from_secs(30), || {
        let followed = followed.load(Ordering::Relaxed);
        async move { followed }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (written, followed_at) = producer.await.expect("producer");
    eprintln!("producer wrote {written} entries, followed the new master at {followed_at:?}");
    let run = run
        .until_drained_at(&sentinel.master_url(), &streams, "redsink")
        .await;
    let stats = run.stop().await.expect("stops cleanly");
    eprintln!("{stats:?}");
    compare(&db, &mut new, &streams, &orders, stall).await
}

/// The master's plain URL as the sentinels at `nodes` name it (with the credentials of
/// `url`).
fn master_url_from(url: &str, nodes: &[u16]) -> String {
    for port in nodes {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
            continue;
        };
        let Ok(mut conn) = client.get_connection() else {
            continue;
        };
        let addr: redis::RedisResult<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SENTINEL_MASTER)
            .query(&mut conn);
        if let Ok((_, master)) = addr {
            let (head, _) = url.rsplit_once(':').expect("url with a port");
            return format!("{head}:{master}");
        }
    }
    url.to_string()
}

/// The group's last delivered ID on `stream`.
async fn last_delivered(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Option<EntryId> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap_or_default();
    groups.iter().find_map(|g| {
        g.get("last-delivered-id")
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .and_then(|s| EntryId::parse(&s))
    })
}

/// Each key's newest event among the entries `streams` hold, against the replica's row.
async fn compare(
    db: &TestDb,
    conn: &mut redis::aio::MultiplexedConnection,
    streams: &[String],
    orders: &Orders,
    stall: Duration,
) -> Switch {
    let mut newest: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
    for s in streams {
        // In pages: one reply of the whole stream can outlast the client's 500 ms.
        let mut entries: Vec<(String, Vec<String>)> = Vec::new();
        loop {
            let start = entries
                .last()
                .map_or("-".to_string(), |(id, _)| format!("({id}"));
            let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(s)
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(2_000)
                .query_async(conn)
                .await
                .expect("XRANGE");
            if page.is_empty() {
                break;
            }
            entries.extend(page);
        }
        for (_, fields) in entries {
            let value = fields.get(1).expect("key and value fields");
            let v: serde_json::Value = serde_json::from_str(value).expect("event JSON");
            let j = v["source"]["txId"].as_u64().expect("txId") - 1000;
            let id = i64::try_from(orders.id(j)).expect("id");
            let e = newest.entry(id).or_default();
            *e = (*e).max(j);
        }
    }
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, note FROM public.orders")
        .fetch_all(&db.pool)
        .await
        .expect("orders");
    let held: std::collections::HashMap<i64, u64> = rows
        .into_iter()
        .map(|(id, note)| {
            let j = note
                .trim_start_matches("order note ")
                .parse()
                .expect("note");
            (id, j)
        })
        .collect();
    let (mut ghosts, mut behind) = (0, 0);
    for (id, j) in &newest {
        match held.get(id) {
            Some(h) if h > j => ghosts += 1,
            Some(h) if h == j => {}
            _ => behind += 1,
        }
    }
    ghosts += held.keys().filter(|id| !newest.contains_key(id)).count();
    eprintln!("{ghosts} keys ahead of every stream, {behind} behind");
    Switch {
        stall,
        ghosts,
        behind,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_sentinels_within_two_seconds_of_a_failover() {
    let s = failover_with_a_producer("").await;
    assert_eq!(s.behind, 0, "every event the new master holds is applied");
    assert!(
        s.stall <= Duration::from_secs(2),
        "read the new master {:?} after the sentinels named it",
        s.stall
    );
}

/// With `wait_replicas = 1` nothing the old master accepted after the promotion is
/// applied. redsink reads the new master as promptly, but the new master here has no
/// replica until the sentinels demote the old one (~10 s), and until then what it reads
/// there is held unapplied: that is the option's meaning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_applies_only_what_the_new_master_holds() {
    let s = failover_with_a_producer("wait_replicas = 1").await;
    assert_eq!(s.behind, 0, "every event the new master holds is applied");
    assert_eq!(
        s.ghosts, 0,
        "rows hold events that no stream holds (read from the old master, then lost)"
    );
}
