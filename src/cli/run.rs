//! `redsink run`: loads the config and runs the sync until the shutdown token fires.

use tokio_util::sync::CancellationToken;

pub async fn run(config: &super::ConfigArg, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = config.load()?;
    tracing::info!(config = ?config, "configuration loaded");
    redsink::pipeline::run(config, shutdown).await?;
    Ok(())
}
