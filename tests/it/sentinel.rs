//! Redis Sentinel: redsink finds the master by name through three sentinels (an ACL user
//! on the data nodes), and a `SENTINEL FAILOVER` in the middle of a sync loses nothing:
//! it follows the new master, re-reads what the old one had not replicated, and the
//! replica ends equal to the expected rows with nothing pending.

use std::time::{Duration, Instant};

use redsink::demo::produce::{Orders, xadd_all};

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
