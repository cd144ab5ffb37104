//! `redsink run`: loads the config and runs the sync until the shutdown token fires.

use tokio_util::sync::CancellationToken;

use redsink::config::{Config, redact_url};

pub async fn run(config: &super::ConfigArg, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = config.load()?;
    log_summary(&config);
    redsink::pipeline::run(config, shutdown).await?;
    Ok(())
}

/// One short line at INFO (where, who, how many mappings), the whole config at DEBUG;
/// URLs redacted in both.
fn log_summary(config: &Config) {
    tracing::info!(
        redis = %redact_url(&config.redis.url),
        mode = ?config.redis.mode,
        group = %config.redis.group,
        consumer = config.consumer(),
        postgres = %redact_url(&config.postgres.url),
        pool_size = config.postgres.pool_size,
        mappings = config.mappings.len(),
        "configuration loaded"
    );
    tracing::debug!(config = ?config, "configuration");
}
