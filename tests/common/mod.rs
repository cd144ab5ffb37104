//! Test servers and helpers. Servers come from REDSINK_TEST_REDIS_URL and
//! REDSINK_TEST_POSTGRES_URL (set by scripts/services.sh), else the local defaults.
//! Each test gets its own database (`t_<uuid>`) and its own stream prefix.
//!
//! Every helper is re-exported here (`common::xadd`, `common::TestDb`, …):
//! - `db`: the test's database, waiting for rows;
//! - `streams`: XADD, and what a group and a dead-letter stream hold in the shared Redis;
//! - `run`: a test config, the pipeline until drained, the binary with a command;
//! - `servers`: free ports and private redis-server / PostgreSQL processes;
//! - `cluster`, `sentinel`: private Redis Cluster and Sentinel deployments;
//! - `tls`: test certificates and TLS arguments;
//! - `txsource`: a transactional source (orders and their lines) for transaction mode,
//!   and a sampler of the replica's consistency.
#![allow(dead_code)]
// The scenarios in tests/it may be long (main.rs allows it); these helpers are library
// code and keep to the limit.
#![warn(clippy::too_many_lines)]

mod cluster;
mod db;
mod run;
mod sentinel;
mod servers;
mod streams;
mod tls;
pub mod txsource;

use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

pub use cluster::RedisCluster;
pub use db::{TestDb, drop_role, wait_rows};
pub use run::{
    Running, Spawned, config, config_text, redsink_cli, redsink_cli_on_terminal, sync, sync_at,
};
pub use sentinel::{RedisSentinel, SENTINEL_MASTER};
pub use servers::{PgServer, RedisServer, free_port, free_port_below, wait_port};
#[allow(
    unused_imports,
    reason = "`lag` is used through `drained`; kept with its siblings"
)]
pub use streams::{cleanup_streams, consumers, dead_letters, drained, lag, pending, xadd, xlen};
#[allow(
    unused_imports,
    reason = "`CertDir` calls `certificates` and `openssl` itself, and no test calls `client_for`"
)]
pub use tls::{CertDir, certificates, client_for, openssl, tls_args};

pub fn redis_url() -> String {
    std::env::var("REDSINK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn pg_admin_url() -> String {
    std::env::var("REDSINK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A unique name: `t_<32 hex>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A connection to the shared Redis.
pub async fn redis() -> MultiplexedConnection {
    connect(&redis_url()).await
}

/// A connection to the Redis at `url`.
async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Polls `cond` until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
