//! `redsink consumers prune`: arguments and output; the work is in `ops::consumers`.

use std::time::Duration;

use clap::Subcommand;

use redsink::ops;

#[derive(Subcommand, Debug)]
pub enum ConsumersCommand {
    /// Remove consumers with nothing pending that have been idle for at least `--idle`
    /// (a live instance reads every `redis.block`, so it is never that idle); never
    /// below `3 × redis.block + 5 s`, a floor that a lower `--idle` is raised to.
    Prune {
        #[command(flatten)]
        target: super::Target,
        /// A duration such as `90s`, `30m` or `2h` (default: the config's
        /// `redis.prune_idle`).
        #[arg(long, value_parser = humantime::parse_duration)]
        idle: Option<Duration>,
        /// The group (default: the config's `redis.group`).
        #[arg(long)]
        group: Option<String>,
    },
}

pub async fn consumers(command: ConsumersCommand) -> anyhow::Result<()> {
    let ConsumersCommand::Prune {
        target,
        idle,
        group,
    } = command;
    let (config, mut target) = target.open().await?;
    let group = ops::group::group_or_default(&config, group);
    let asked_by = if idle.is_some() {
        "--idle"
    } else {
        "redis.prune_idle"
    };
    let ops::consumers::PruneIdle { idle, raised_from } = ops::consumers::safe_idle(&config, idle);
    if let Some(asked) = raised_from {
        eprintln!(
            "{asked_by} {} is below the safe floor of {} (3 × redis.block + 5 s: a live \
             instance can be idle that long between two reads): using {}",
            humantime::format_duration(asked),
            humantime::format_duration(idle),
            humantime::format_duration(idle),
        );
    }
    let mut total = 0;
    for stream in &target.streams {
        for name in ops::consumers::prune(&mut target.control, stream, &group, idle).await? {
            println!("{stream}: removed consumer {name}");
            total += 1;
        }
    }
    println!(
        "removed {total} consumers idle for at least {} with nothing pending",
        humantime::format_duration(idle)
    );
    Ok(())
}
