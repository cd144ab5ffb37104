//! Transaction mode (`[transactions]`): a source whose every transaction keeps each
//! order's total and line count equal to its lines (tests/common/txsource.rs) is
//! replicated while a sampler reads the replica in REPEATABLE READ snapshots every
//! ~20 ms. No snapshot may show half a transaction, a non-deferrable foreign key from
//! lines to orders must hold, killed instances must not change that, and an END that
//! promises an event that never comes holds the transactions behind it for `wait`.

use std::time::{Duration, Instant};

use crate::common::txsource::{
    self, Sampler, Samples, TxSource, data_streams, emit, mappings, spawn_producer, tables,
    transactions, wait_replica,
};
use crate::common::{self, Running, Spawned, TestDb};
use crate::serve::http_get;

/// Source transactions per second, and how many each test produces.
const RATE: u32 = 250;
const SINGLE: u32 = 750;

/// The checks every test ends with: no partial snapshot (and enough snapshots with
/// rows that it means something), every data stream drained, nothing dead-lettered.
async fn assert_consistent(samples: &Samples, prefix: &str) {
    eprintln!("sampler: {samples:?}");
    assert_eq!(
        samples.partial, 0,
        "half-applied transactions seen: {samples:?}"
    );
    assert!(
        samples.with_rows >= 20 && samples.errors * 10 <= samples.taken,
        "too few good snapshots to mean anything: {samples:?}"
    );
    let mut r = common::redis().await;
    let streams = data_streams(prefix);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !common::drained(&mut r, &streams, "redsink").await {
        assert!(
            Instant::now() < deadline,
            "the data streams were not drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &streams {
        assert_eq!(
            common::xlen(&mut r, &format!("{s}:dlq")).await,
            0,
            "dead letters on {s}"
        );
    }
}

/// One in-process instance applies the workload while it is produced.
async fn one_instance(test: &str, fk: bool) {
    let db = TestDb::new().await;
    db.exec(&tables(fk)).await;
    let prefix = common::unique("tx");
    let extra = format!("{}{}", mappings(&prefix), transactions(&prefix, ""));
    let sampler = Sampler::start(&db).await;
    let running = Running::start(common::config(&db, "c1", &extra));
    let source = TxSource::new(&prefix, txsource::seed(test));
    let source = spawn_producer(source, SINGLE, RATE)
        .await
        .expect("producer");
    let applied = wait_replica(&db, &source, Duration::from_secs(30)).await;
    let samples = sampler.stop().await;
    if let Err(diff) = applied {
        panic!(
            "{diff}; pipeline: {:?}; sampler: {samples:?}",
            running.is_finished()
        );
    }
    let stats = running.stop().await.expect("the pipeline stops cleanly");
    assert_eq!(stats.dead_lettered, 0);
    assert_consistent(&samples, &prefix).await;
    common::cleanup_streams(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_never_seen_half_applied() {
    one_instance("transactions_are_never_seen_half_applied", false).await;
}

/// Lines reference their order, NOT DEFERRABLE: a new order's lines come after it, a
/// deleted order's lines before it, so applying each transaction's events in
/// total_order never violates the key (a violation would dead-letter or stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_deferrable_foreign_key_holds() {
    one_instance("a_non_deferrable_foreign_key_holds", true).await;
}

/// The config of one spawned instance: low claim_idle/prune_idle, so that a killed
/// instance's entries are claimed and its name pruned within the test.
fn instance_config(db: &TestDb, consumer: &str, prefix: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\ngroup = \"redsink\"\nconsumer = \"{consumer}\"\nblock = \"200ms\"\n\
         claim_idle = \"1s\"\nprune_idle = \"2s\"\n[postgres]\nurl = \"{}\"\n\
         [batch]\nmax_batch = 500\nmax_delay = \"20ms\"\n{}{}",
        common::redis_url(),
        db.url,
        mappings(prefix),
        transactions(prefix, ""),
    )
}

/// Three processes share the group; one is killed with SIGKILL every 2.5 s while the
/// source produces (a new consumer name on each restart, so its staged-but-unacked
/// entries must be claimed, and a killed committer's lock taken over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_kills_stay_consistent() {
    let db = TestDb::new().await;
    db.exec(&tables(false)).await;
    let prefix = common::unique("tx");
    let start = |i: usize, life: usize| {
        let config = instance_config(&db, &format!("i{i}-{life}"), &prefix);
        Spawned::start(&config, &["run"], "warn")
    };
    let mut instances: Vec<Spawned> = (0..3).map(|i| start(i, 0)).collect();
    let sampler = Sampler::start(&db).await;
    let seed = txsource::seed("three_instances_with_kills_stay_consistent");
    let producer = spawn_producer(TxSource::new(&prefix, seed), 6 * RATE, RATE);
    let mut kills = 0;
    while !producer.is_finished() || kills < 2 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let victim = kills % instances.len();
        drop(instances.remove(victim)); // SIGKILL, then wait for it
        kills += 1;
        instances.insert(victim, start(victim, kills));
    }
    let source = producer.await.expect("producer");
    let applied = wait_replica(&db, &source, Duration::from_secs(40)).await;
    let samples = sampler.stop().await;
    if let Err(diff) = applied {
        let logs: Vec<String> = instances
            .iter_mut()
            .map(|s| {
                s.wait_line(Duration::from_millis(100), |_| false);
                s.log()
            })
            .collect();
        panic!(
            "{diff}; sampler: {samples:?}; logs of the live instances:\n{}",
            logs.join("\n--\n")
        );
    }
    eprintln!("{kills} kills");
    assert_consistent(&samples, &prefix).await;
    drop(instances);
    common::cleanup_streams(&prefix).await;
}

/// The orders of the replica.
async fn order_ids(db: &TestDb) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM public.orders ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("orders")
}

/// Four transactions: create 1, create 2 (its END promises one more line than sent),
/// create 3, update 1. Transaction 2 waits `wait` = 1 s for the line that never comes,
/// and 3 and 4 wait behind it (source commit order); then all are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_missing_an_event_is_applied_after_wait() {
    let db = TestDb::new().await;
    db.exec(&tables(false)).await;
    let prefix = common::unique("tx");
    let address = format!("127.0.0.1:{}", common::free_port());
    let extra = format!(
        "[http]\naddress = \"{address}\"\n{}{}",
        mappings(&prefix),
        transactions(&prefix, "wait = \"1s\"")
    );
    let running = Running::start(common::config(&db, "c1", &extra));
    let ready = Instant::now();
    while http_get_status(&address, "/readyz").await != 200 {
        assert!(ready.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut source = TxSource::new(&prefix, txsource::seed("missing_event"));
    let mut r = common::redis().await;
    let t1 = source.create_order();
    emit(&mut r, t1.entries(0)).await;
    let t2 = source.create_order();
    emit(&mut r, t2.entries(1)).await;
    let ended = Instant::now();
    let t3 = source.create_order();
    emit(&mut r, t3.entries(0)).await;
    let t4 = source.update_order(t1.orders[0]);
    emit(&mut r, t4.entries(0)).await;

    // Until 0.9 s after transaction 2's END, neither it nor the one behind it is applied.
    let mut first_seen = false;
    while ended.elapsed() < Duration::from_millis(900) {
        let ids = order_ids(&db).await;
        assert!(
            !ids.contains(&t2.orders[0]) && !ids.contains(&t3.orders[0]),
            "transaction {} or {} applied {:?} after the END that promised a missing event",
            t2.id,
            t3.id,
            ended.elapsed()
        );
        first_seen |= ids.contains(&t1.orders[0]);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    eprintln!("transaction 1 applied within the wait: {first_seen}");
    wait_replica(&db, &source, Duration::from_secs(15))
        .await
        .unwrap_or_else(|diff| panic!("{diff}"));
    assert!(
        ended.elapsed() >= Duration::from_secs(1),
        "applied before wait"
    );

    let scrape = http_get(&address, "/metrics").await.1;
    let timed_out = total(&scrape, "redsink_transactions_timed_out_total");
    assert!(
        timed_out >= 1.0,
        "no timed-out transaction counted:\n{scrape}"
    );
    let applied = total(&scrape, "redsink_transactions_applied_total");
    assert!(applied >= 4.0, "applied_total {applied}:\n{scrape}");
    let stats = running.stop().await.expect("the pipeline stops cleanly");
    assert_eq!(stats.dead_lettered, 0);
    common::cleanup_streams(&prefix).await;
}

async fn http_get_status(address: &str, path: &str) -> u16 {
    if tokio::net::TcpStream::connect(address).await.is_err() {
        return 0;
    }
    http_get(address, path).await.0
}

/// The sum of a metric's samples over all its labels in a scrape.
fn total(scrape: &str, metric: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
