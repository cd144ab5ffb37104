use std::path::Path;

use anyhow::Context;

use redsink::config::Config;

pub async fn migrate(path: &Path) -> anyhow::Result<()> {
    let config =
        Config::load(path).with_context(|| format!("loading config {}", path.display()))?;
    let pool = redsink::write::connect(&config.postgres.url, 1).await?;
    redsink::write::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
