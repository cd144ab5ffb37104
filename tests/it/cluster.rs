//! Redis Cluster: three masters with a replica each (an ACL user, the default user off),
//! eight shard streams spread over the masters, two redsink instances in one group and
//! 100k events. A master is killed with SIGKILL mid-sync; its replica takes over and
//! both instances carry on; then the slot of another shard is migrated to another
//! master while they read it (ASK during the move, MOVED after). At the end the replica equals the expected rows and nothing
//! is pending. The mapping is a glob, so the shards are found by SCAN on every master.
//! A second test runs a cluster over TLS.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redsink::demo::produce::{Entry, Orders, xadd_all};

use crate::common::{self, RedisCluster, Running, TestDb};
use crate::load::{ORDERS, actual, expected};

/// XADDs `entries`, retrying while the cluster fails over (a retried chunk repeats
/// events in their order, which leaves every row as it was).
async fn produce(r: &mut ClusterConnection, entries: Vec<Entry>) {
    for chunk in entries.chunks(5_000) {
        let start = Instant::now();
        while let Err(e) = xadd_all(r, chunk.iter().cloned()).await {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "XADD during failover: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn wait_drained(r: &mut ClusterConnection, streams: &[String], runs: &[&Running]) {
    let start = Instant::now();
    loop {
        if common::drained(r, streams, "redsink").await {
            return;
        }
        assert!(
            runs.iter().all(|run| !run.is_finished()),
            "an instance ended early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not drained after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_three_master_cluster_survive_a_master_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let stream = format!("{}.orders", common::unique("cl"));
    let streams: Vec<String> = (0..8).map(|i| format!("{stream}:{i}")).collect();
    let masters: BTreeSet<usize> = streams.iter().map(|s| cluster.master_of(s)).collect();
    assert!(
        masters.len() >= 2,
        "the shards should live on several masters"
    );

    let client = ClusterClient::new(vec![cluster.url(0)]).expect("cluster client");
    let mut r = client.get_async_connection().await.expect("connect");
    let orders = Orders {
        keys: 20_000,
        delete_every: Some(97),
    };
    let (n, first) = (100_000, 60_000);
    produce(
        &mut r,
        (0..first).map(|j| orders.entry(j, &stream, 8)).collect(),
    )
    .await;

    let config = |consumer: &str| {
        let text = format!(
            "[redis]\nmode = \"cluster\"\nurl = \"{}\"\nnodes = [\"{}\"]\nconsumer = \"{consumer}\"\n\
             block = \"200ms\"\nclaim_idle = \"3s\"\n[postgres]\nurl = \"{}\"\n\
             [batch]\nmax_batch = 1000\nmax_delay = \"10ms\"\n\
             [[mapping]]\nstreams = [\"{stream}:*\"]\ntable = \"public.orders\"\n",
            cluster.url(0),
            cluster.url(1),
            db.url
        );
        redsink::config::Config::from_toml(&text, "cluster test", std::iter::empty())
            .expect("config")
    };
    let a = Running::start(config("c1"));
    let b = Running::start(config("c2"));
    common::wait_rows(&db, "public.orders", 3_000).await;

    // Kill the master of shard 0 mid-sync; its replica is promoted after the node timeout.
    let victim = cluster.master_of(&streams[0]);
    cluster.kill(victim);
    let waited = Instant::now();
    tokio::task::block_in_place(|| {
        cluster.wait_failover(victim, &streams[0], Duration::from_secs(30));
    });
    eprintln!(
        "failover of node {victim} took {:.1} s",
        waited.elapsed().as_secs_f64()
    );
    assert_ne!(
        cluster.master_of(&streams[0]),
        victim,
        "a replica took over"
    );

    // More events after the failover, to the new master; while the instances work
    // through them, the slot of another shard moves to another master (ASK, then MOVED).
    produce(
        &mut r,
        (first..n).map(|j| orders.entry(j, &stream, 8)).collect(),
    )
    .await;
    let moved = &streams[1];
    let before = cluster.master_of(moved);
    let after =
        tokio::task::block_in_place(|| cluster.move_slot_of(moved, Duration::from_millis(500)));
    assert_ne!(before, after);
    eprintln!("moved the slot of {moved} from node {before} to node {after}");
    wait_drained(&mut r, &streams, &[&a, &b]).await;
    let sa = a.stop().await.expect("instance 1 stops cleanly");
    let sb = b.stop().await.expect("instance 2 stops cleanly");
    eprintln!(
        "instance 1 read {}, instance 2 read {} (of {n}; re-reads after the failover count twice)",
        sa.read, sb.read
    );
    assert!(sa.read > 0 && sb.read > 0, "both instances did work");
    assert!(sa.read + sb.read >= n);
    assert_eq!(actual(&db).await, expected(&orders, n));
    for s in &streams {
        assert_eq!(common::pending(&mut r, s, "redsink").await, 0, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_from_a_cluster_over_tls_with_an_acl_user() {
    let certs = common::CertDir::new("cltls");
    let dir = certs.0.clone();
    let cluster = RedisCluster::start_with(3, 0, Some(&dir));
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let stream = format!("{}.orders", common::unique("ct"));
    let streams: Vec<String> = (0..8).map(|i| format!("{stream}:{i}")).collect();
    let client = ClusterClient::new(vec![cluster.url(0)]).expect("cluster client");
    let mut r = client.get_async_connection().await.expect("connect");
    let orders = Orders {
        keys: 1_000,
        delete_every: Some(7),
    };
    let n = 5_000;
    // `redsink produce --cluster` sends each shard to the master of its slot.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
        .args(["produce", "--cluster", "--redis-url", &cluster.url(0)])
        .args(["--stream", &stream, "--shards", "8", "--keys", "1000"])
        .args(["--delete-every", "7", "--generate-orders", &n.to_string()])
        .output()
        .expect("redsink produce");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = format!(
        "[redis]\nmode = \"cluster\"\nurl = \"{}\"\ntls_ca_file = \"{}\"\nconsumer = \"t1\"\n\
         block = \"200ms\"\n[postgres]\nurl = \"{}\"\n\
         [[mapping]]\nstreams = [\"{stream}:{{0..7}}\"]\ntable = \"public.orders\"\n",
        cluster.tls_url(0),
        dir.join("ca.crt").display(),
        db.url
    );
    let config = redsink::config::Config::from_toml(&text, "cluster TLS test", std::iter::empty())
        .expect("config");
    let run = Running::start(config);
    wait_drained(&mut r, &streams, &[&run]).await;
    let stats = run.stop().await.expect("stops cleanly");
    assert!(stats.read >= n, "{stats:?}");
    assert_eq!(actual(&db).await, expected(&orders, n));

    // Pointed at a cluster node without mode = "cluster", redsink says what to set.
    let standalone = text.replace("mode = \"cluster\"\n", "");
    assert_ne!(standalone, text);
    let (code, out, err) = common::redsink_cli(&standalone, &["run"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("set redis.mode = \"cluster\""), "{err}");

    // The operator commands work against the cluster too.
    let (code, out, err) = common::redsink_cli(&text, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("may run every command"), "{out}");
    let (code, status, err) = common::redsink_cli(&text, &["status", "--json"]);
    assert_eq!(code, 0, "{status}{err}");
    for s in &streams {
        assert!(status.contains(s.as_str()), "{s} in {status}");
    }

    // A user with only the rule `check` printed, set on every node, syncs over TLS.
    let rule = crate::privilege::section(&out, "redis acl")
        .replace("<user>", "restricted")
        .replace("<password>", "pw2");
    for i in 0..cluster.ports().len() {
        let mut node = redis::Client::open(cluster.url(i))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        crate::privilege::acl_setuser(&mut node, &rule).await;
    }
    let more = 1_000;
    produce(
        &mut r,
        (n..n + more).map(|j| orders.entry(j, &stream, 8)).collect(),
    )
    .await;
    let restricted = text.replace(
        &format!("{}:{}@", cluster.user, cluster.password),
        "restricted:pw2@",
    );
    assert_ne!(restricted, text);
    let (code, out, err) = common::redsink_cli(&restricted, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    let config = redsink::config::Config::from_toml(&restricted, "restricted", std::iter::empty())
        .expect("config");
    let run = Running::start(config);
    wait_drained(&mut r, &streams, &[&run]).await;
    let stats = run.stop().await.expect("stops cleanly");
    assert!(stats.read >= more, "{stats:?}");
    assert_eq!(actual(&db).await, expected(&orders, n + more));
    drop(cluster);
}
