//! Chaos: three redsink processes in one consumer group over eight shards while a
//! driver kills one with SIGKILL every few seconds and starts it again (a new consumer
//! name each time). At the end the replica equals the expected rows, every entry is
//! acknowledged, and `XINFO CONSUMERS` lists only the live instances. Run on one Redis
//! server (200k events) and on a three-master Redis Cluster (100k events).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redsink::demo::produce::Orders;

use crate::common::{self, TestDb};
use crate::load::{ORDERS, actual, expected, mapping, produce};

fn start(config: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
        .args(["run", "--config"])
        .arg(config)
        .env("REDSINK_LOG", "error")
        .spawn()
        .expect("start redsink")
}

/// The default consumer name of a process (`<hostname>-<pid>`).
fn consumer_name(child: &std::process::Child) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "redsink".into());
    format!("{host}-{}", child.id())
}

async fn live_consumers<C: redis::aio::ConnectionLike + Send>(
    r: &mut C,
    streams: &[String],
) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for s in streams {
        all.extend(common::consumers(r, s, "redsink").await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_killed_and_restarted_lose_nothing() {
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let prefix = common::unique("chaos");
    let orders = Orders {
        keys: 20_000,
        delete_every: Some(17),
    };
    let n = 200_000;
    let streams = produce(&prefix, &orders, n).await;
    let redis = format!("url = \"{}\"", common::redis_url());
    let mut r = common::redis().await;
    chaos(&mut r, &redis, &db, &orders, n, &streams, &mapping(&prefix)).await;
    common::cleanup_streams(&prefix).await;
}

/// The same on a Redis Cluster (three masters, no replicas): the shards live on
/// different masters and every instance reads them in lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_cluster_killed_and_restarted_lose_nothing() {
    let cluster = common::RedisCluster::start(3, 0);
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let stream = format!("{}.orders", common::unique("chaoscl"));
    let orders = Orders {
        keys: 10_000,
        delete_every: Some(17),
    };
    let n = 100_000;
    let mut r = redis::cluster::ClusterClient::new(vec![cluster.url(0)])
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("connect");
    redsink::demo::produce::xadd_all(&mut r, (0..n).map(|j| orders.entry(j, &stream, 8)))
        .await
        .expect("XADD");
    let streams: Vec<String> = (0..8).map(|i| format!("{stream}:{i}")).collect();
    let redis = format!("mode = \"cluster\"\nurl = \"{}\"", cluster.url(0));
    let mapping =
        format!("[[mapping]]\nstreams = [\"{stream}:{{0..7}}\"]\ntable = \"public.orders\"\n");
    chaos(&mut r, &redis, &db, &orders, n, &streams, &mapping).await;
}

/// Three processes with `[redis]` settings `redis`, one killed with SIGKILL every 3 s
/// and restarted while there is work; then the checks of the module docs.
async fn chaos<C: redis::aio::ConnectionLike + Send>(
    r: &mut C,
    redis: &str,
    db: &TestDb,
    orders: &Orders,
    n: u64,
    streams: &[String],
    mapping: &str,
) {
    let dir = std::env::temp_dir().join(common::unique("chaos"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("redsink.toml");
    // No consumer name: each process is <hostname>-<pid>, so a restarted one is a new
    // consumer and the killed one's entries must be claimed and its name pruned.
    std::fs::write(
        &config,
        format!(
            "[redis]\n{redis}\nblock = \"200ms\"\nclaim_idle = \"2s\"\nprune_idle = \"4s\"\n\
             [postgres]\nurl = \"{}\"\n[batch]\nmax_batch = 500\nmax_delay = \"10ms\"\n{mapping}",
            db.url,
        ),
    )
    .expect("write config");
    let mut instances: Vec<std::process::Child> = (0..3).map(|_| start(&config)).collect();
    let started = Instant::now();
    let mut kills = 0;
    let mut killed: BTreeSet<String> = BTreeSet::new();
    // Kill one instance every 3 s while there is work, at most ~45 s.
    while started.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if common::drained(r, streams, "redsink").await {
            break;
        }
        let victim = kills % instances.len();
        killed.insert(consumer_name(&instances[victim]));
        let _ = instances[victim].kill(); // SIGKILL
        let _ = instances[victim].wait();
        instances[victim] = start(&config);
        kills += 1;
    }
    assert!(kills >= 2, "the chaos driver killed only {kills} instances");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !common::drained(r, streams, "redsink").await {
        assert!(Instant::now() < deadline, "not drained after the chaos");
        for child in &mut instances {
            assert!(
                child.try_wait().ok().flatten().is_none(),
                "an instance exited"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(actual(db).await, expected(orders, n));
    for s in streams {
        assert_eq!(
            common::xlen(r, &format!("{s}:dlq")).await,
            0,
            "nothing dead-lettered on {s}"
        );
    }
    // The killed instances' names go once they have been idle for prune_idle.
    let live: BTreeSet<String> = instances.iter().map(consumer_name).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Live instances may be missing too: with nothing to read for prune_idle, Redis
        // 7.0 counts them idle and any instance prunes them (nothing pending); their
        // next read brings them back. Killed ones must be gone.
        let listed = live_consumers(r, streams).await;
        if listed.is_subset(&live) && listed.is_disjoint(&killed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "listed {listed:?}, live {live:?}, killed {killed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for child in &mut instances {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
    }
    assert!(
        live_consumers(r, streams).await.is_empty(),
        "clean shutdowns leave the group"
    );
    for s in streams {
        assert_eq!(common::pending(r, s, "redsink").await, 0, "{s}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
