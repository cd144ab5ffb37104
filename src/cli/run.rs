use std::path::Path;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use redsink::config::Config;

pub async fn run(path: &Path, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config =
        Config::load(path).with_context(|| format!("loading config {}", path.display()))?;
    tracing::info!(config = ?config, "configuration loaded");
    redsink::pipeline::run(config, shutdown).await?;
    Ok(())
}
