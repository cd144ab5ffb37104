//! `redsink status`: the report as text or JSON; the work is in `ops::status`.

use std::fmt::Write as _;

use redsink::config::REPLAY_SUFFIX;
use redsink::ops::status::{self, Status, StreamReport, TransactionsReport};

/// Show each mapped stream: length, newest entry, dead-letter stream length, and per
/// consumer group its lag, pending entries (and how long the oldest has waited),
/// consumers with their idle time, and the newest entry it applied (checkpoint).
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    config: super::ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let report = status::status(&config).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// The text form: a line per stream, indented lines per group and consumer.
pub fn render(report: &Status) -> String {
    let mut out = String::new();
    for s in &report.streams {
        render_stream(s, &mut out);
    }
    for m in &report.missing {
        let _ = writeln!(out, "{m}  (does not exist yet)");
    }
    if let Some(t) = &report.transactions {
        render_transactions(t, &mut out);
    }
    if report.streams.is_empty() && report.missing.is_empty() {
        out.push_str("no stream matches the mappings yet\n");
    }
    out
}

/// Transaction mode's lines.
fn render_transactions(t: &TransactionsReport, out: &mut String) {
    let _ = writeln!(
        out,
        "transactions {}  length {}, newest {}, applied through {} ({} records behind), {} transactions applied",
        t.stream,
        t.length,
        t.last_entry.as_deref().unwrap_or("-"),
        t.applied_through.as_deref().unwrap_or("nothing yet"),
        t.behind,
        t.applied
    );
    let _ = writeln!(
        out,
        "  open: {} transactions, {} events staged, oldest waiting {:.1}s",
        t.open, t.open_events, t.oldest_open_s
    );
    match &t.committer {
        Some((consumer, left)) if *left >= 0.0 => {
            let _ = writeln!(
                out,
                "  committer: {consumer} (lease renewed, {left:.1}s left)"
            );
        }
        Some((consumer, left)) => {
            let _ = writeln!(
                out,
                "  committer: none ({consumer}'s lease ran out {:.1}s ago: paused, cut off or stopped)",
                -left
            );
        }
        None => {
            let _ = writeln!(out, "  committer: none (no instance holds the lease)");
        }
    }
    if let Some((tx, done)) = &t.in_pieces {
        let _ = writeln!(out, "  in pieces: transaction {tx}, {done} events applied");
    }
}

/// One stream's lines: the stream, each group and its consumers, checkpoints of groups gone.
fn render_stream(s: &StreamReport, out: &mut String) {
    let r = &s.redis;
    let _ = writeln!(
        out,
        "{}  (mapping {} → {})  length {}, newest {}, dead letters {}",
        r.stream,
        s.mapping,
        s.table,
        r.length,
        r.last_entry.as_deref().unwrap_or("-"),
        r.dlq_length
    );
    for g in &r.groups {
        let lag = g.lag.map_or_else(|| "?".into(), |l| l.to_string());
        let oldest = g
            .oldest_pending_idle_ms
            .map(|ms| format!(" (oldest waiting {})", seconds(ms)))
            .unwrap_or_default();
        let applied = s
            .checkpoints
            .iter()
            .find(|c| c.consumer_group == g.group)
            .map(|c| format!("{} at {}", c.last_id, c.updated_at))
            .unwrap_or_else(|| "nothing yet".into());
        let _ = writeln!(
            out,
            "  group {}: lag {lag}, pending {}{oldest}, last delivered {}, applied {applied}",
            g.group, g.pending, g.last_delivered
        );
        for c in &g.consumers {
            let _ = writeln!(
                out,
                "    consumer {}: pending {}, idle {}",
                c.name,
                c.pending,
                seconds(c.idle_ms)
            );
        }
    }
    for c in s
        .checkpoints
        .iter()
        .filter(|c| !r.groups.iter().any(|g| g.group == c.consumer_group))
    {
        // A replay reads outside any group: its checkpoint is not a lost group's.
        let what = if c.consumer_group.ends_with(REPLAY_SUFFIX) {
            format!("replayed ({})", c.consumer_group)
        } else {
            format!("applied by {} (no such group now)", c.consumer_group)
        };
        let _ = writeln!(out, "  {what}: {} at {}", c.last_id, c.updated_at);
    }
}
