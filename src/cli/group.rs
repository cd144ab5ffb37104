//! `redsink group reset`: arguments and output; the work is in `ops::group`.

use anyhow::bail;
use clap::Subcommand;

use redsink::ops;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Move the consumer group's position (XGROUP SETID) on each stream: entries after
    /// `--to` are delivered again (already-applied versions are no-ops). Entries pending
    /// now stay pending. Without `--yes`, only says what it would do.
    Reset {
        #[command(flatten)]
        target: super::Target,
        /// The entry ID to move to: `0` re-delivers everything, `$` skips to the end.
        #[arg(long)]
        to: String,
        /// The group (default: the config's `redis.group`).
        #[arg(long)]
        group: Option<String>,
        /// Do it.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn group(command: GroupCommand) -> anyhow::Result<()> {
    let GroupCommand::Reset {
        target,
        to,
        group,
        yes,
    } = command;
    let (config, mut target) = target.open().await?;
    let group = ops::group::group_or_default(&config, group);
    for stream in &target.streams {
        if yes {
            ops::group::reset(&mut target.control, stream, &group, &to).await?;
            println!("{stream}: group {group} now at {to}");
        } else {
            println!("{stream}: would move group {group} to {to}");
        }
    }
    if !yes {
        bail!("nothing changed: add --yes to move the group on these streams");
    }
    Ok(())
}
