//! Secrets stay out of logs: URLs with their password replaced, and `Debug` impls that
//! show them so.

use std::fmt;

use super::{Config, PostgresConfig, RedisConfig};

/// Replaces the password of a URL with `***` for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None if scheme.starts_with("redis") && !userinfo.is_empty() => {
            // redis://:password@host and redis://password@host both carry a secret.
            format!("{scheme}://***@{host}")
        }
        None => url.to_string(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
            )
            .field("master_name", &self.master_name)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("start", &self.start)
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .field("prune_idle", &self.prune_idle)
            .field("max_deliveries", &self.max_deliveries)
            .field("dlq_suffix", &self.dlq_suffix)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .finish()
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("lock_timeout", &self.lock_timeout)
            .field(
                "idle_in_transaction_session_timeout",
                &self.idle_in_transaction_session_timeout,
            )
            .field("statement_timeout", &self.statement_timeout)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("redis", &self.redis)
            .field("postgres", &self.postgres)
            .field("batch", &self.batch)
            .field("decode", &self.decode)
            .field("http", &self.http)
            .field("mappings", &self.mappings)
            .finish()
    }
}
