//! `group reset`, `consumers prune` and `dlq list|show|retry|purge`.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};

use redsink::config::Config;
use redsink::ops::status;
use redsink::redis::{self, Control, admin};

/// What every admin command needs: the config and which mapped streams to act on.
#[derive(Args, Debug)]
pub struct Target {
    #[command(flatten)]
    config: super::ConfigArg,
    /// Only this stream (a name or a pattern as in a mapping); repeatable. Default:
    /// every stream of every mapping.
    #[arg(long = "stream")]
    streams: Vec<String>,
}

impl Target {
    async fn open(&self) -> anyhow::Result<(Config, Control, Vec<String>)> {
        let config = self.config.load()?;
        let control = redis::connect_control(&config.redis).await?;
        let streams = status::mapped_streams(&config, &control, &self.streams)
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        Ok((config, control, streams))
    }
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Move the consumer group's position (XGROUP SETID) on each stream: entries after
    /// `--to` are delivered again (already-applied versions are no-ops). Entries pending
    /// now stay pending. Without `--yes`, only says what it would do.
    Reset {
        #[command(flatten)]
        target: Target,
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

#[derive(Subcommand, Debug)]
pub enum ConsumersCommand {
    /// Remove consumers with nothing pending that have been idle for at least `--idle`
    /// (a live instance reads every `redis.block`, so it is never that idle).
    Prune {
        #[command(flatten)]
        target: Target,
        /// Default: the config's `redis.prune_idle`.
        #[arg(long, value_parser = humantime::parse_duration)]
        idle: Option<Duration>,
        /// The group (default: the config's `redis.group`).
        #[arg(long)]
        group: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters: ID, source stream and entry, and the error.
    List {
        #[command(flatten)]
        target: Target,
        /// At most this many per dead-letter stream.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter whole: its error and its original fields.
    Show {
        #[command(flatten)]
        target: Target,
        /// Its ID in the dead-letter stream.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on their source stream (new entries, applied through the
    /// normal path) and remove them from the dead-letter stream.
    Retry {
        #[command(flatten)]
        target: Target,
        /// Dead-letter IDs; or `--all`.
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        target: Target,
        /// Dead-letter IDs; or `--all`.
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        /// Do it (without, only says what it would delete).
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
    let (config, mut control, streams) = target.open().await?;
    let group = group.unwrap_or_else(|| config.redis.group.clone());
    for stream in &streams {
        if yes {
            admin::set_group_id(&mut control, stream, &group, &to).await?;
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

pub async fn consumers(command: ConsumersCommand) -> anyhow::Result<()> {
    let ConsumersCommand::Prune {
        target,
        idle,
        group,
    } = command;
    let (config, mut control, streams) = target.open().await?;
    let group = group.unwrap_or_else(|| config.redis.group.clone());
    let idle = idle.unwrap_or(config.redis.prune_idle);
    let mut total = 0;
    for stream in &streams {
        for name in admin::prune_consumers(&mut control, stream, &group, None, idle).await? {
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

/// The dead letters of the selected streams from `start` to `end` (XRANGE bounds), up
/// to `count` per stream, each with its dead-letter stream's name.
async fn letters(
    config: &Config,
    control: &mut Control,
    streams: &[String],
    (start, end): (&str, &str),
    count: usize,
) -> anyhow::Result<Vec<(String, admin::DeadLetterEntry)>> {
    let mut out = Vec::new();
    for stream in streams {
        let dlq = config.redis.dlq_stream(stream);
        for letter in admin::dead_letters(control, &dlq, start, end, count).await? {
            out.push((dlq.clone(), letter));
        }
    }
    Ok(out)
}

/// The dead letters with ID `id` (one per dead-letter stream at most).
async fn find(
    config: &Config,
    control: &mut Control,
    streams: &[String],
    id: &str,
) -> anyhow::Result<Vec<(String, admin::DeadLetterEntry)>> {
    letters(config, control, streams, (id, id), 1).await
}

pub async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            target,
            count,
            json,
        } => {
            let (config, mut control, streams) = target.open().await?;
            let all = letters(&config, &mut control, &streams, ("-", "+"), count).await?;
            if json {
                let list: Vec<_> = all.iter().map(|(_, l)| l).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (dlq, l) in &all {
                    println!(
                        "{dlq} {}  from {} {}: {}",
                        l.id, l.stream, l.entry_id, l.error
                    );
                }
                println!("{} dead letters", all.len());
            }
        }
        DlqCommand::Show { target, id, json } => {
            let (config, mut control, streams) = target.open().await?;
            let found = find(&config, &mut control, &streams, &id).await?;
            let Some((dlq, l)) = found.into_iter().next() else {
                bail!("no dead letter {id} in the dead-letter streams of the mapped streams");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                println!("dead letter {} of {dlq}", l.id);
                println!(
                    "from:  {} entry {} (group {})",
                    l.stream, l.entry_id, l.group
                );
                println!("error: {}", l.error);
                for (f, v) in &l.fields {
                    println!("{f}: {v}");
                }
            }
        }
        DlqCommand::Retry { target, ids, all } => {
            let (config, mut control, streams) = target.open().await?;
            let mut failed = 0;
            for (dlq, l) in chosen(&config, &mut control, &streams, &ids, all).await? {
                // Only back onto the stream this dead-letter stream belongs to.
                let owner = dlq.strip_suffix(&config.redis.dlq_suffix).unwrap_or(&dlq);
                let outcome = if l.stream == owner {
                    admin::retry_dead_letter(&mut control, &dlq, &l)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    Err(format!(
                        "it names stream {:?}, not {owner}: left in place",
                        l.stream
                    ))
                };
                match outcome {
                    Ok(new_id) => println!("{dlq} {} → {} {new_id}", l.id, l.stream),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{dlq} {}: not retried: {e}", l.id);
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} dead letters could not be retried (see above)");
            }
        }
        DlqCommand::Purge {
            target,
            ids,
            all,
            yes,
        } => {
            let (config, mut control, streams) = target.open().await?;
            let chosen = chosen(&config, &mut control, &streams, &ids, all).await?;
            for (dlq, l) in &chosen {
                if yes {
                    admin::purge_dead_letters(&mut control, dlq, std::slice::from_ref(&l.id))
                        .await?;
                    println!("{dlq} {}: deleted", l.id);
                } else {
                    println!("{dlq} {}: would delete ({})", l.id, l.error);
                }
            }
            if !yes && !chosen.is_empty() {
                bail!("nothing deleted: add --yes to delete these dead letters");
            }
        }
    }
    Ok(())
}

/// `ids` (each must exist) or, with `all`, every dead letter of the selected streams.
async fn chosen(
    config: &Config,
    control: &mut Control,
    streams: &[String],
    ids: &[String],
    all: bool,
) -> anyhow::Result<Vec<(String, admin::DeadLetterEntry)>> {
    match (all, ids.is_empty()) {
        (true, true) => letters(config, control, streams, ("-", "+"), usize::MAX).await,
        (false, false) => {
            let mut out = Vec::new();
            for id in ids {
                let found = find(config, control, streams, id).await?;
                match found.len() {
                    0 => bail!(
                        "no dead letter {id} in the dead-letter streams of the mapped streams"
                    ),
                    1 => out.extend(found),
                    _ => bail!(
                        "dead letter {id} is in {} dead-letter streams ({}): say which with --stream",
                        found.len(),
                        found
                            .iter()
                            .map(|(d, _)| d.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
            Ok(out)
        }
        (true, false) => bail!("give dead-letter IDs or --all, not both"),
        (false, true) => bail!("which dead letters? give their IDs or --all"),
    }
}
