//! Transaction mode (`[transactions]`): a source whose every transaction keeps each
//! order's total and line count equal to its lines (tests/common/txsource.rs) is
//! replicated while a sampler reads the replica in REPEATABLE READ snapshots every
//! ~20 ms. No snapshot may show half a transaction, a non-deferrable foreign key from
//! lines to orders must hold, killed instances must not change that, and an END that
//! promises an event that never comes holds the transactions behind it for `wait`.

use std::time::{Duration, Instant};

use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

use crate::common::txsource::{
    self, TxSource, data_streams, emit, mappings, spawn_producer, tables, transactions,
    wait_replica,
};
use crate::common::{self, Running, Spawned, TestDb};
use crate::serve::http_get;

/// Source transactions per second, and how many each test produces.
const RATE: u32 = 250;
const SINGLE: u32 = 750;

/// The checks every test ends with: no partial snapshot (and enough snapshots with
/// rows that it means something), every data stream drained, nothing dead-lettered,
/// each of the `n` transactions applied exactly once, none of them late, none staged.
async fn assert_consistent(db: &TestDb, samples: &Samples, prefix: &str, n: u32) {
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
    for s in streams.iter().chain([&format!("{prefix}.transaction")]) {
        assert_eq!(
            common::xlen(&mut r, &format!("{s}:dlq")).await,
            0,
            "dead letters on {s}"
        );
    }
    let committer = wait_committed(db, prefix, Duration::from_secs(30)).await;
    assert_eq!(committer.applied, i64::from(n), "{committer:?}");
    assert!(committer.late.is_empty(), "{committer:?}");
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
    assert_consistent(&db, &samples, &prefix, SINGLE).await;
    let stats = running.stop().await.expect("the pipeline stops cleanly");
    assert_eq!(stats.dead_lettered, 0);
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
    const PRODUCED: u32 = 4 * RATE;
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
    let producer = spawn_producer(TxSource::new(&prefix, seed), PRODUCED, RATE);
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
    assert_consistent(&db, &samples, &prefix, PRODUCED).await;
    drop(instances);
    common::cleanup_streams(&prefix).await;
}

/// The consumer whose committer lease is live on `prefix`'s transaction stream,
/// waiting up to `timeout` for one other than `not`.
async fn wait_committer(db: &TestDb, prefix: &str, not: Option<&str>, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let leader: Option<String> = sqlx::query_scalar(
            "SELECT consumer FROM redsink.tx_leader WHERE consumer_group = 'redsink' \
             AND stream = $1 AND lease_until > clock_timestamp()",
        )
        .bind(format!("{prefix}.transaction"))
        .fetch_optional(&db.pool)
        .await
        .unwrap_or(None);
        match leader {
            Some(l) if not != Some(l.as_str()) => return l,
            _ => {}
        }
        assert!(
            start.elapsed() < timeout,
            "no committer other than {not:?} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two processes share the group and the committer is paused (SIGSTOP) while the
/// source produces: its session lives on, but its lease runs out and the other takes
/// over, claims the events the paused one held and applies everything while it is
/// still paused. Resumed, the paused one commits nothing (its commits are fenced, its
/// lease is gone) and the replica stays consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_committer_is_taken_over() {
    const PRODUCED: u32 = 3 * RATE;
    let db = TestDb::new().await;
    db.exec(&tables(false)).await;
    let prefix = common::unique("tx");
    let names = ["p0", "p1"];
    let mut instances: Vec<Spawned> = names
        .iter()
        .map(|name| Spawned::start(&instance_config(&db, name, &prefix), &["run"], "info"))
        .collect();
    let first = wait_committer(&db, &prefix, None, Duration::from_secs(30)).await;
    let paused = names
        .iter()
        .position(|n| *n == first)
        .expect("a known name");
    let sampler = Sampler::start(&db).await;
    let seed = txsource::seed("a_paused_committer_is_taken_over");
    let producer = spawn_producer(TxSource::new(&prefix, seed), PRODUCED, RATE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    instances[paused].signal("STOP");
    let second = wait_committer(&db, &prefix, Some(&first), Duration::from_secs(15)).await;
    let source = producer.await.expect("producer");
    let applied = wait_replica(&db, &source, Duration::from_secs(40)).await;
    if let Err(diff) = applied {
        let other = &mut instances[1 - paused];
        other.wait_line(Duration::from_millis(100), |_| false);
        panic!(
            "{diff} while {first} is paused; log of {second}:\n{}",
            other.log()
        );
    }
    instances[paused].signal("CONT");
    let resumed = &mut instances[paused];
    let line = resumed.wait_line(Duration::from_secs(10), |l| {
        l.contains("another instance took over committing")
    });
    assert!(
        line.is_some(),
        "the resumed committer did not step down:\n{}",
        resumed.log()
    );
    let samples = sampler.stop().await;
    assert_consistent(&db, &samples, &prefix, PRODUCED).await;
    assert_eq!(
        wait_committer(&db, &prefix, None, Duration::from_secs(5)).await,
        second,
        "the resumed instance took the lease back"
    );
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
    let committer = wait_committed(&db, &prefix, Duration::from_secs(30)).await;
    assert_eq!(
        (committer.applied, committer.late),
        (4, vec![t2.id.clone()])
    );
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

/// Debezium Server is at-least-once, and an operator may rewind the group: events of
/// transactions applied long ago are read again. They change nothing (their versions
/// are old), and must not stay staged: nothing would ever apply or remove them, and the
/// open-transaction metrics would count them for ever. (A claimed entry that was staged
/// but not acknowledged before its instance died is the same case, seen in
/// `three_instances_with_kills_stay_consistent`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_read_again_after_their_transaction_was_applied_are_not_left_staged() {
    let db = TestDb::new().await;
    db.exec(&tables(false)).await;
    let prefix = common::unique("tx");
    let extra = format!("{}{}", mappings(&prefix), transactions(&prefix, ""));
    let running = Running::start(common::config(&db, "c1", &extra));
    let mut source = TxSource::new(&prefix, txsource::seed("read_again"));
    let mut r = common::redis().await;
    for _ in 0..5 {
        let tx = source.next_transaction();
        emit(&mut r, tx.entries(0)).await;
    }
    wait_replica(&db, &source, Duration::from_secs(30))
        .await
        .unwrap_or_else(|diff| panic!("{diff}"));
    let before = wait_committed(&db, &prefix, Duration::from_secs(30)).await;
    assert_eq!(before.applied, 5);

    let streams = data_streams(&prefix);
    for s in &streams {
        let _: () = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(s)
            .arg("redsink")
            .arg("0")
            .query_async(&mut r)
            .await
            .expect("SETID");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !common::drained(&mut r, &streams, "redsink").await {
        assert!(Instant::now() < deadline, "the replay was not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = wait_committed(&db, &prefix, Duration::from_secs(10)).await;
    assert_eq!(
        after, before,
        "the replay changed the committer's bookkeeping"
    );
    wait_replica(&db, &source, Duration::ZERO)
        .await
        .unwrap_or_else(|diff| panic!("the replay changed the replica: {diff}"));
    running.stop().await.expect("the pipeline stops cleanly");
    common::cleanup_streams(&prefix).await;
}

/// The committer's bookkeeping in `redsink.*` for group `redsink`.
#[derive(Debug, PartialEq, Eq)]
struct Committer {
    /// Staged events not applied yet.
    pub staged: i64,
    /// The END last applied.
    pub end_id: Option<String>,
    /// Transactions applied.
    pub applied: i64,
    /// Transactions applied without all their events, by id.
    pub late: Vec<String>,
}

async fn committer(db: &TestDb) -> Committer {
    let staged = "SELECT count(*) FROM redsink.tx_events WHERE consumer_group = 'redsink'";
    let progress =
        "SELECT end_id, applied FROM redsink.tx_progress WHERE consumer_group = 'redsink'";
    let late = "SELECT tx_id FROM redsink.tx_late WHERE consumer_group = 'redsink' ORDER BY tx_id";
    let (end_id, applied) = sqlx::query_as(progress)
        .fetch_optional(&db.pool)
        .await
        .expect("tx_progress")
        .map_or((None, 0), |(e, a): (String, i64)| (Some(e), a));
    Committer {
        staged: sqlx::query_scalar(staged)
            .fetch_one(&db.pool)
            .await
            .expect("tx_events"),
        end_id,
        applied,
        late: sqlx::query_scalar(late)
            .fetch_all(&db.pool)
            .await
            .expect("tx_late"),
    }
}

/// Waits until the committer has applied the last END of the source's transaction
/// stream and nothing is staged; returns its bookkeeping then, or panics after `timeout`
/// with the events still staged.
async fn wait_committed(db: &TestDb, prefix: &str, timeout: Duration) -> Committer {
    let mut r = common::redis().await;
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(format!("{prefix}.transaction"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut r)
        .await
        .expect("XREVRANGE");
    let last = last.first().map(|(id, _)| id.clone());
    let start = Instant::now();
    loop {
        let now = committer(db).await;
        if now.staged == 0 && now.end_id == last {
            return now;
        }
        if start.elapsed() > timeout {
            let staged: Vec<(String, String, String, i64, String)> = sqlx::query_as(
                "SELECT stream, entry_id, tx_id, total_order, staged_at::text FROM redsink.tx_events \
                 WHERE consumer_group = 'redsink' ORDER BY staged_at, tx_id, total_order LIMIT 12",
            )
            .fetch_all(&db.pool)
            .await
            .expect("staged events");
            panic!(
                "the committer did not reach the last END {last:?}: {now:?}; staged: {staged:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the sampler saw.
#[derive(Debug, Default)]
struct Samples {
    /// Snapshots checked.
    pub taken: u64,
    /// Snapshots with at least one order.
    pub with_rows: u64,
    /// Snapshots where some order disagreed with its lines, or a line had no order.
    pub partial: u64,
    /// The first partial snapshot: when, and up to 3 offending rows.
    pub first_partial: Option<String>,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Orders whose total or line count disagrees with their lines, and lines without their order.
const CHECK: &str = "SELECT (SELECT count(*) FROM public.orders),
  (SELECT count(*) FROM public.orders o LEFT JOIN (SELECT order_id, sum(amount)::bigint AS s,
     count(*) AS c FROM public.order_lines GROUP BY order_id) l ON l.order_id = o.id
   WHERE o.total <> coalesce(l.s, 0) OR o.n_lines <> coalesce(l.c, 0)),
  (SELECT count(*) FROM public.order_lines l
   WHERE NOT EXISTS (SELECT 1 FROM public.orders o WHERE o.id = l.order_id))";

/// The offending rows of [`CHECK`], in the same snapshot.
const DETAILS: &str = "(SELECT format('order %s: total %s n_lines %s, lines sum %s count %s',
    o.id, o.total, o.n_lines, coalesce(l.s, 0), coalesce(l.c, 0)) FROM public.orders o
  LEFT JOIN (SELECT order_id, sum(amount) AS s, count(*) AS c FROM public.order_lines
    GROUP BY order_id) l ON l.order_id = o.id
  WHERE o.total <> coalesce(l.s, 0) OR o.n_lines <> coalesce(l.c, 0) LIMIT 3)
 UNION ALL (SELECT format('line (%s, %s) without its order', order_id, line_no)
  FROM public.order_lines l WHERE NOT EXISTS (SELECT 1 FROM public.orders o
  WHERE o.id = l.order_id) LIMIT 3)";

/// Checks the replica every ~20 ms in a REPEATABLE READ transaction until stopped.
struct Sampler {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Samples>,
}

impl Sampler {
    async fn start(db: &TestDb) -> Self {
        let mut conn = sqlx::PgConnection::connect(&db.url)
            .await
            .expect("sampler connection");
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let (mut seen, start) = (Samples::default(), Instant::now());
            while !token.is_cancelled() {
                match sample(&mut conn).await {
                    Ok((rows, bad, details)) => {
                        seen.taken += 1;
                        seen.with_rows += u64::from(rows > 0);
                        if bad > 0 {
                            seen.partial += 1;
                            seen.first_partial.get_or_insert_with(|| {
                                format!("at {:?}: {}", start.elapsed(), details.join("; "))
                            });
                        }
                    }
                    Err(e) => {
                        seen.errors += 1;
                        seen.last_error = Some(e.to_string());
                        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        Self { stop, handle }
    }

    async fn stop(self) -> Samples {
        self.stop.cancel();
        self.handle.await.expect("sampler task")
    }
}

/// One snapshot: (orders, offending rows, their description).
async fn sample(conn: &mut sqlx::PgConnection) -> sqlx::Result<(i64, i64, Vec<String>)> {
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *conn)
        .await?;
    let (rows, bad, orphans): (i64, i64, i64) = sqlx::query_as(CHECK).fetch_one(&mut *conn).await?;
    let details = if bad + orphans > 0 {
        sqlx::query_scalar(DETAILS).fetch_all(&mut *conn).await?
    } else {
        Vec::new()
    };
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
    Ok((rows, bad + orphans, details))
}
