//! `redsink dlq list|show|retry|purge`: arguments and output; the work is in `ops::dlq`.

use anyhow::bail;
use clap::Subcommand;

use redsink::ops;

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters: ID, source stream and entry, and the error.
    List {
        #[command(flatten)]
        target: super::Target,
        /// At most this many per dead-letter stream.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter whole: its error and its original fields. An ID that
    /// several dead-letter streams hold needs `--stream`.
    Show {
        #[command(flatten)]
        target: super::Target,
        /// Its ID in the dead-letter stream.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on their source stream (new entries, applied through the
    /// normal path) and remove them from the dead-letter stream.
    Retry {
        #[command(flatten)]
        target: super::Target,
        /// Dead-letter IDs; or `--all`.
        ids: Vec<String>,
        /// Every dead letter of the selected streams.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        target: super::Target,
        /// Dead-letter IDs; or `--all`.
        ids: Vec<String>,
        /// Every dead letter of the selected streams.
        #[arg(long)]
        all: bool,
        /// Do it (without, only says what it would delete).
        #[arg(long)]
        yes: bool,
    },
}

pub async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            target,
            count,
            json,
        } => list(&target, count, json).await,
        DlqCommand::Show { target, id, json } => show(&target, &id, json).await,
        DlqCommand::Retry { target, ids, all } => retry(&target, &ids, all).await,
        DlqCommand::Purge {
            target,
            ids,
            all,
            yes,
        } => purge(&target, &ids, all, yes).await,
    }
}

async fn list(target: &super::Target, count: usize, json: bool) -> anyhow::Result<()> {
    let (config, mut target) = target.open().await?;
    let all = ops::dlq::list(&config.redis, &mut target.control, &target.streams, count).await?;
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
        println!("{}", super::count(all.len(), "dead letter", "dead letters"));
    }
    Ok(())
}

async fn show(target: &super::Target, id: &str, json: bool) -> anyhow::Result<()> {
    let (config, mut target) = target.open().await?;
    let (dlq, l) = ops::dlq::show(&config.redis, &mut target.control, &target.streams, id).await?;
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
    Ok(())
}

async fn retry(target: &super::Target, ids: &[String], all: bool) -> anyhow::Result<()> {
    let (config, mut target) = target.open().await?;
    let chosen = ops::dlq::chosen(
        &config.redis,
        &mut target.control,
        &target.streams,
        ids,
        all,
    )
    .await?;
    let mut failed = 0;
    for (dlq, l) in chosen {
        match ops::dlq::retry(&config.redis, &mut target.control, &dlq, &l).await {
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
    Ok(())
}

async fn purge(target: &super::Target, ids: &[String], all: bool, yes: bool) -> anyhow::Result<()> {
    let (config, mut target) = target.open().await?;
    let chosen = ops::dlq::chosen(
        &config.redis,
        &mut target.control,
        &target.streams,
        ids,
        all,
    )
    .await?;
    for (dlq, l) in &chosen {
        if yes {
            ops::dlq::purge(&mut target.control, dlq, l).await?;
            println!("{dlq} {}: deleted", l.id);
        } else {
            println!("{dlq} {}: would delete ({})", l.id, l.error);
        }
    }
    if !yes && !chosen.is_empty() {
        bail!("nothing deleted: add --yes to delete these dead letters");
    }
    Ok(())
}
