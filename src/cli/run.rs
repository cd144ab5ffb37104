//! `redsink run`: loads the config and runs the sync until the shutdown token fires.

use tokio_util::sync::CancellationToken;

use redsink::config::{Config, redact_url};
use redsink::pipeline::PipelineError;

pub async fn run(config: &super::ConfigArg, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = config.load()?;
    log_summary(&config);
    let redis = redsink::redis::endpoint(&config.redis);
    let postgres = redsink::write::endpoint(&config.postgres);
    redsink::pipeline::run(config, shutdown)
        .await
        .map_err(|e| {
            // Which server the error came from, for an error that does not say it itself.
            let at = match &e {
                PipelineError::Read(_) | PipelineError::Ack(_) => Some(format!("redis at {redis}")),
                PipelineError::Write(_) => Some(format!("postgres at {postgres}")),
                _ => None,
            };
            match at {
                Some(at) if !e.to_string().contains(&at) => anyhow::Error::new(e).context(at),
                _ => anyhow::Error::new(e),
            }
        })?;
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
