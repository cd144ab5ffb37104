//! `redsink check`: validates a config against the real Redis and Postgres without
//! changing anything, and derives the least privileges it needs (a Redis ACL rule and
//! Postgres GRANTs).

mod acl;
mod samples;
mod tables;
mod transactions;

use std::time::Duration;

use crate::config::Config;
use crate::map::Mapping;
use crate::redis::connect_control;
use crate::write;

pub use acl::REDIS_COMMANDS;

/// One finding: fine, or a problem with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub text: String,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// `ACL SETUSER <user> …` with `<user>` and `<password>` to fill in.
    pub redis_acl: String,
    /// SQL, `<role>` to fill in.
    pub postgres_grants: Vec<String>,
}

impl Report {
    fn ok(&mut self, text: impl Into<String>) {
        self.findings.push(Finding {
            ok: true,
            text: text.into(),
        });
    }
    fn problem(&mut self, text: impl Into<String>) {
        self.findings.push(Finding {
            ok: false,
            text: text.into(),
        });
    }
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| !f.ok).count()
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every check; never fails as a whole (each failure is a finding).
pub async fn check(config: &Config) -> Report {
    let mut report = Report::default();
    let mut mappings = Vec::new();
    for (i, m) in config.mappings.iter().enumerate() {
        match Mapping::compile(i, m) {
            Ok(m) => mappings.push(m),
            Err(e) => report.problem(format!("mapping[{i}]: {e}")),
        }
    }
    report.redis_acl = acl::acl_rule(config, &mappings);
    report.postgres_grants = tables::grants(config);
    let redis = match tokio::time::timeout(TIMEOUT, connect_control(&config.redis)).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            report.problem(format!("{e}: {}", crate::pipeline::source_chain(&e)));
            None
        }
        Err(_) => {
            report.problem("redis: no answer within 10 s: check redis.url");
            None
        }
    };
    let pool =
        match tokio::time::timeout(TIMEOUT, write::connect(&config.postgres.with_pool_size(1)))
            .await
        {
            Ok(Ok(pool)) => Some(pool),
            Ok(Err(e)) => {
                report.problem(format!(
                    "postgres: {e}: {}",
                    crate::pipeline::source_chain(&e)
                ));
                None
            }
            Err(_) => {
                report.problem("postgres: no answer within 10 s: check postgres.url");
                None
            }
        };
    if let Some(conn) = &redis {
        acl::check_redis(config, &mappings, conn.clone(), &mut report).await;
        transactions::check_transactions(config, conn.clone(), &mut report).await;
    }
    if let Some(pool) = &pool {
        tables::check_postgres(config, &mappings, pool, &mut report).await;
        if let Some(conn) = &redis {
            samples::check_samples(config, &mappings, conn.clone(), pool, &mut report).await;
        }
        pool.close().await;
    }
    report
}
