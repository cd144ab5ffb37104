//! `redsink check`: prints the findings and the least privileges; the work is in `ops::check`.

use anyhow::bail;

use redsink::ops::check;

/// Validate the config against the real Redis and Postgres without changing anything:
/// connections, permissions, every mapped table (exists, key, version column,
/// privileges), and the newest entry of every mapped stream (decodes, maps, every value
/// fits its column). Prints one line per finding, then the minimal Redis ACL rule and
/// Postgres GRANTs the config needs. Exits 1 when there is a problem.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    config: super::ConfigArg,
}

pub async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let report = check::check(&config).await;
    println!("# checks");
    for f in &report.findings {
        println!("{}: {}", if f.ok { "ok" } else { "problem" }, f.text);
    }
    println!();
    println!("# redis acl");
    println!("{}", report.redis_acl);
    println!();
    println!("# postgres grants");
    for g in &report.postgres_grants {
        println!("{g}");
    }
    let problems = report.problems();
    if problems > 0 {
        bail!(
            "{} (see above)",
            super::count(problems, "problem", "problems")
        );
    }
    Ok(())
}
