//! `redsink migrate`: applies redsink's own migrations (the `redsink` schema) and exits.

pub async fn migrate(config: &super::ConfigArg) -> anyhow::Result<()> {
    let config = config.load()?;
    let pool = redsink::write::connect(&config.postgres.with_pool_size(1)).await?;
    redsink::write::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
