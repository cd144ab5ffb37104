//! Commands of the `redsink` binary, one file each.

mod check;
mod consumers;
mod dlq;
mod group;
mod migrate;
mod produce;
mod replay;
mod run;
mod status;
mod term;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use redsink::config::Config;
use redsink::ops;

#[derive(Parser, Debug)]
#[command(
    name = "redsink",
    version,
    about = "Sync Debezium change events from Redis Streams into PostgreSQL"
)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "REDSINK_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--config`: the TOML config of every command that talks to Redis or Postgres.
#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// Path to the TOML config.
    #[arg(
        long,
        short,
        env = "REDSINK_CONFIG",
        default_value = "config/redsink.toml"
    )]
    config: PathBuf,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<Config> {
        Config::load(&self.config)
            .with_context(|| format!("loading config {}", self.config.display()))
    }
}

/// `--config` and `--stream`: what every group, consumer and dead-letter command needs.
#[derive(clap::Args, Debug)]
pub struct Target {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this stream (a name or a pattern as in a mapping); repeatable. Default:
    /// every stream of every mapping.
    #[arg(long = "stream")]
    streams: Vec<String>,
}

impl Target {
    /// The config, the connection and the streams to act on.
    async fn open(&self) -> anyhow::Result<(Config, ops::Target)> {
        let config = self.config.load()?;
        let target = ops::Target::open(&config, &self.streams).await?;
        Ok((config, target))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sync until SIGINT/SIGTERM.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Apply redsink's own migrations (the `redsink` schema) and exit.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// XADD Debezium events to Redis the way Debezium Server's Redis sink does.
    Produce(produce::ProduceArgs),
    /// Re-apply a range of stream history (XRANGE, outside the group) for a backfill
    /// or a repair; safe while the sync runs.
    Replay(replay::ReplayArgs),
    /// Validate the config against Redis and Postgres and print the least privileges it
    /// needs (a Redis ACL rule, Postgres GRANTs).
    Check(check::CheckArgs),
    /// Show streams, groups, lag, pending entries, consumers, checkpoints and
    /// dead-letter streams (`--json` for machines).
    Status(status::StatusArgs),
    /// Consumer-group administration.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Consumer administration.
    #[command(subcommand)]
    Consumers(consumers::ConsumersCommand),
    /// Dead letters: list, show, retry (back through the normal path), purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
}

pub async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => run::run(&config, shutdown_on_signal()).await,
        Command::Migrate { config } => migrate::migrate(&config).await,
        Command::Produce(args) => produce::produce(args).await,
        Command::Replay(args) => replay::replay(args, shutdown_on_signal()).await,
        Command::Status(args) => status::status(args).await,
        Command::Check(args) => check::check(args).await,
        Command::Group(command) => group::group(command).await,
        Command::Consumers(command) => consumers::consumers(command).await,
        Command::Dlq(command) => dlq::dlq(command).await,
    }
}

/// The log filter when `REDSINK_LOG` is unset: redsink's own lines from `info`, the Redis
/// client library's from `error` only. redis-rs logs each reconnection attempt of a
/// cluster connection as a WARN (dozens per failover); redsink says once per outage
/// what failed and when it recovered. `REDSINK_LOG=info` or `debug` shows them again.
const DEFAULT_LOG: &str = "info,redis=error";

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REDSINK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(term::LogWriter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A token cancelled by the first SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        trigger.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested: finishing the current batch");
        trigger.cancel();
    });
    token
}

/// `n` and the noun for it: "1 problem", "2 problems".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    /// Every option and argument of every command says what it is in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "redsink", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// Every `redsink …` command the README and the docs show (in code blocks and inline
    /// code) parses as written: subcommands and flags exist, with placeholders filled.
    #[test]
    fn every_documented_command_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("README.md"), root.join("deploy/README.md")];
        for e in std::fs::read_dir(root.join("docs"))
            .expect("docs/")
            .flatten()
        {
            files.push(e.path());
        }
        let mut checked = 0;
        let mut bad = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for command in documented_commands(&text) {
                for args in expand(&command) {
                    checked += 1;
                    // Naming a command without its required arguments is prose, not
                    // a wrong command; an unknown command, flag or value is.
                    if let Err(e) = super::Cli::try_parse_from(&args)
                        && e.kind() != clap::error::ErrorKind::MissingRequiredArgument
                    {
                        bad.push(format!("{}: `{command}`: {}", file.display(), e.kind()));
                    }
                }
            }
        }
        assert!(checked > 20, "found only {checked} documented commands");
        assert!(
            bad.is_empty(),
            "documented commands that do not parse:\n{}",
            bad.join("\n")
        );
    }

    /// `redsink …` in inline code, and lines of code blocks that run the binary.
    fn documented_commands(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_block = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
                continue;
            }
            if in_block {
                let line = line.split(" #").next().unwrap_or(line).trim();
                for prefix in [
                    "target/release/redsink ",
                    "target/debug/redsink ",
                    "redsink ",
                ] {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        out.push(format!("redsink {rest}"));
                    }
                }
                continue;
            }
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 1 && span.starts_with("redsink ") {
                    out.push(span.to_string());
                }
            }
        }
        out
    }

    /// The argument lists a documented command stands for: `[optional]` parts taken,
    /// `a|b` subcommands expanded, placeholders (`<ID>`, `N`, `PATH`, `…`) filled.
    fn expand(command: &str) -> Vec<Vec<String>> {
        let mut lists = vec![Vec::new()];
        for word in command.split_whitespace() {
            if word == "…" {
                lists.iter_mut().for_each(|l| l.push("x".into()));
                continue;
            }
            let word = word.trim_end_matches('…').trim_matches(['[', ']']);
            let word = match word {
                "" => continue,
                w if w.starts_with('<') || w == "…" => "0-0",
                "N" => "1",
                "PATH" => "redsink.toml",
                "S" => "s",
                w => w,
            };
            let alternatives: Vec<&str> = if word.contains('|') && !word.starts_with('-') {
                word.split('|').collect()
            } else {
                vec![word]
            };
            lists = lists
                .into_iter()
                .flat_map(|l| {
                    alternatives.iter().map(move |a| {
                        let mut l = l.clone();
                        l.push((*a).to_string());
                        l
                    })
                })
                .collect();
        }
        lists
    }

    #[test]
    fn counts_read_well() {
        assert_eq!(super::count(1, "problem", "problems"), "1 problem");
        assert_eq!(super::count(0, "problem", "problems"), "0 problems");
        assert_eq!(
            super::count(2, "dead letter", "dead letters"),
            "2 dead letters"
        );
    }
}
