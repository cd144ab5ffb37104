//! Redis Cluster failover seen from the shards that did not fail: one master of three
//! (each with a replica) is killed with SIGKILL while a producer keeps writing to eight
//! shard streams spread over all masters. The shards on the healthy masters must keep
//! being applied while the dead master's replica takes over (no pipeline-wide backoff),
//! everything must converge afterwards (every row there, nothing pending), and the log
//! must say once that reading the dead master's shards failed and once that it
//! recovered, with the outage's length, without the client library's flood of WARNs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio_util::sync::CancellationToken;

use crate::common::{self, RedisCluster, TestDb};

const TABLE: &str = "CREATE TABLE public.ev (id bigint PRIMARY KEY, shard int NOT NULL)";
const SHARDS: usize = 8;
/// Row IDs of shard `i` are `i * ID_BASE + seq`.
const ID_BASE: u64 = 1_000_000;

/// XADDs one insert event after another to `stream` (shard `shard`) until `stop`, each
/// retried until it is in (so a shard's events stay in order); `sent` counts them.
async fn produce_shard(
    mut r: ClusterConnection,
    stream: String,
    shard: u64,
    sent: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut seq = 1;
    while !stop.is_cancelled() {
        let id = shard * ID_BASE + seq;
        let key = format!(r#"{{"id":{id}}}"#);
        let after = format!(r#"{{"id":{id},"shard":{shard}}}"#);
        let value = crate::event("c", id, "null", &after);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*").arg(&key).arg(&value);
        let xadd = cmd.query_async::<String>(&mut r);
        match tokio::time::timeout(Duration::from_secs(2), xadd).await {
            Ok(Ok(_)) => {
                seq += 1;
                sent.store(seq - 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The shard's master is down: try the same event again shortly.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Rows written so far per shard.
async fn rows_per_shard(db: &TestDb) -> BTreeMap<i32, i64> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT shard, count(*) FROM public.ev GROUP BY shard")
            .fetch_all(&db.pool)
            .await
            .expect("count rows");
    rows.into_iter().collect()
}

/// `redsink run` (the binary, with its default log filter) logging to a file in its
/// own directory; killed and removed when dropped (a failed assertion included).
struct Redsink {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Redsink {
    fn start(config: &str) -> Self {
        let dir = std::env::temp_dir().join(common::unique("failover"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("redsink.toml");
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::File::create(dir.join("redsink.log")).expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
            .args(["run", "--config"])
            .arg(&path)
            .env_remove("REDSINK_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start redsink run");
        Self { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redsink.log")).expect("log")
    }
}

impl Drop for Redsink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_stops_only_the_shards_it_served() {
    let mut cluster = RedisCluster::start(3, 1);
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let stream = format!("{}.ev", common::unique("fo"));
    let streams: Vec<String> = (0..SHARDS).map(|i| format!("{stream}:{i}")).collect();
    let client = ClusterClient::new(vec![cluster.url(0)]).expect("cluster client");
    let mut r = client.get_async_connection().await.expect("connect");

    let stop = CancellationToken::new();
    let sent: Vec<Arc<AtomicU64>> = (0..SHARDS).map(|_| Arc::default()).collect();
    let producers: Vec<_> = (0..SHARDS)
        .map(|i| {
            tokio::spawn(produce_shard(
                r.clone(),
                streams[i].clone(),
                i as u64,
                sent[i].clone(),
                stop.clone(),
            ))
        })
        .collect();

    let config = format!(
        "[redis]\nmode = \"cluster\"\nurl = \"{}\"\nnodes = [\"{}\"]\nconsumer = \"f1\"\n\
         block = \"200ms\"\n[postgres]\nurl = \"{}\"\n\
         [batch]\nmax_batch = 500\nmax_delay = \"10ms\"\n\
         [[mapping]]\nstreams = [\"{stream}:{{0..7}}\"]\ntable = \"public.ev\"\n",
        cluster.url(0),
        cluster.url(1),
        db.url
    );
    let mut redsink = Redsink::start(&config);
    common::wait_for("rows on every shard", Duration::from_secs(60), || async {
        rows_per_shard(&db)
            .await
            .values()
            .filter(|n| **n >= 20)
            .count()
            == SHARDS
    })
    .await;

    // Kill the master of shard 0; the shards of the other masters are the healthy ones.
    let victim = cluster.master_of(&streams[0]);
    let healthy: BTreeSet<i32> = (0..SHARDS)
        .filter(|i| cluster.master_of(&streams[*i]) != victim)
        .map(|i| i32::try_from(i).expect("shard"))
        .collect();
    assert!(!healthy.is_empty(), "some shards live on other masters");
    let healthy_rows = |rows: &BTreeMap<i32, i64>| -> i64 {
        rows.iter()
            .filter(|(s, _)| healthy.contains(s))
            .map(|(_, n)| n)
            .sum()
    };
    // The victim's replica has the groups of its streams (else the failover loses them,
    // a separate case, which `serve::a_stream_recreated_without_its_group_is_counted` covers).
    let victim_streams: Vec<&String> = streams
        .iter()
        .filter(|s| cluster.master_of(s) == victim)
        .collect();
    common::wait_for(
        "the groups on the victim's replica",
        Duration::from_secs(10),
        || async {
            tokio::task::block_in_place(|| {
                victim_streams
                    .iter()
                    .all(|s| cluster.nodes_with_group(s, "redsink") >= 2)
            })
        },
    )
    .await;
    cluster.kill(victim);
    let killed = Instant::now();

    // Until a second after the replica took over, the healthy shards' rows must keep
    // growing: no stall of the whole pipeline while one master is away.
    let mut last = healthy_rows(&rows_per_shard(&db).await);
    let (mut grew_at, mut longest_stall) = (Instant::now(), Duration::ZERO);
    let mut failed_over: Option<Instant> = None;
    while failed_over.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = healthy_rows(&rows_per_shard(&db).await);
        if now > last {
            (last, grew_at) = (now, Instant::now());
        }
        longest_stall = longest_stall.max(grew_at.elapsed());
        if failed_over.is_none()
            && tokio::task::block_in_place(|| cluster.master_of(&streams[0])) != victim
        {
            failed_over = Some(Instant::now());
        }
    }
    eprintln!(
        "failover after {:.1} s; the healthy shards' rows stalled for at most {:.2} s",
        (failed_over.expect("failed over") - killed).as_secs_f64(),
        longest_stall.as_secs_f64()
    );
    assert!(
        longest_stall < Duration::from_millis(1500),
        "the shards on healthy masters stalled for {longest_stall:?} while another master \
         failed over; the log:\n{}",
        redsink.log()
    );

    // Everything converges: every event of every shard applied, nothing pending.
    stop.cancel();
    for p in producers {
        p.await.expect("producer");
    }
    let want: BTreeMap<i32, i64> = (0..SHARDS)
        .map(|i| {
            let n = i64::try_from(sent[i].load(Ordering::SeqCst)).expect("count");
            (i32::try_from(i).expect("shard"), n)
        })
        .collect();
    let start = Instant::now();
    while !(rows_per_shard(&db).await == want && common::drained(&mut r, &streams, "redsink").await)
    {
        assert!(
            redsink.child.try_wait().expect("redsink status").is_none(),
            "redsink ended early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not converged after 60 s: {:?} of {want:?}",
            rows_per_shard(&db).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in &streams {
        assert_eq!(common::pending(&mut r, s, "redsink").await, 0, "{s}");
    }
    let pid = redsink.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    let status = redsink.child.wait().expect("redsink exits");
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    // The log: one line when reading the dead master's shards failed, one when it
    // recovered (with the outage's length), and few WARNs in all.
    let log = redsink.log();
    let warns = log.lines().filter(|l| l.contains("WARN")).count();
    eprintln!("{warns} WARN lines:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("recovered after") && l.contains(" s")),
        "no recovery line with the outage's length:\n{log}"
    );
    assert!(warns <= 10, "{warns} WARN lines:\n{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("cause=") && l.ends_with("cause=")),
        "an empty cause:\n{log}"
    );
}
