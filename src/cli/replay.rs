//! `redsink replay`: arguments, progress and summary; the work is in `pipeline::replay`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use redsink::pipeline::{self, ReplayOptions, ReplayProgress};

/// Re-apply stream history with XRANGE (outside the consumer group) for a backfill or a
/// repair. Safe while the live sync runs: every write is version-guarded, so entries
/// already applied are no-ops. Nothing is acknowledged; dead letters go to the usual
/// dead-letter streams, marked with the group `<group>:replay`, except those already
/// there (same source entry ID, or the same fields put back by `dlq retry`).
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    config: super::ConfigArg,
    /// First entry ID to re-apply (inclusive): `1700000000000-0`, a millisecond time,
    /// or `-` for the start of each stream.
    #[arg(long)]
    from: String,
    /// Last entry ID (inclusive); default: each stream's newest entry at the start.
    #[arg(long)]
    to: Option<String>,
    /// Only this stream (a name or a pattern as in a mapping); repeatable.
    #[arg(long = "stream")]
    streams: Vec<String>,
    /// Only this mapping (its position in the config, from 0); repeatable.
    #[arg(long = "mapping")]
    mappings: Vec<usize>,
}

pub async fn replay(args: ReplayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let options = ReplayOptions {
        from: args.from,
        to: args.to,
        streams: args.streams,
        mappings: args.mappings,
    };
    let started = Instant::now();
    let mut out = Progress::new(std::io::stderr().is_terminal(), started);
    let stats = pipeline::replay(config, &options, &shutdown, &mut |p| out.show(p)).await?;
    out.finish();
    let seconds = started.elapsed().as_secs_f64();
    let interrupted = if shutdown.is_cancelled() {
        " (interrupted: run again with --from the last ID shown to go on)"
    } else {
        ""
    };
    let already = match stats.already_dead_lettered {
        0 => String::new(),
        n => format!(" ({n} already dead-lettered: left as they were)"),
    };
    println!(
        "replayed {} entries in {seconds:.1}s: {} rows written, {} skipped, {} dead-lettered{already}{interrupted}",
        stats.read, stats.rows_written, stats.skipped, stats.dead_lettered
    );
    Ok(())
}

/// A progress bar redrawn in place on a terminal; a plain line every few seconds otherwise.
struct Progress {
    terminal: bool,
    started: Instant,
    last_shown: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new(terminal: bool, started: Instant) -> Self {
        Self {
            terminal,
            started,
            last_shown: None,
            drawn: false,
        }
    }

    fn show(&mut self, p: &ReplayProgress) {
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        let now = Instant::now();
        if self
            .last_shown
            .is_some_and(|t| now.duration_since(t) < every)
        {
            return;
        }
        self.last_shown = Some(now);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = p.entries as f64 / elapsed.max(0.001);
        let eta = if p.fraction > 0.0 {
            format!("{:.0}s", elapsed * (1.0 - p.fraction) / p.fraction)
        } else {
            "?".into()
        };
        let last = p.last.to_string();
        let text = format!(
            "{:>5.1}% {} entries, {:.0}/s, ETA {eta}, at {} {last}",
            p.fraction * 100.0,
            p.entries,
            rate,
            p.stream
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let width = 30;
            // Rounded share of the bar's width; fraction is within 0..=1.
            let filled = ((p.fraction * f64::from(width)).round() as usize).min(30);
            let _ = write!(
                err,
                "\r\x1b[2K[{}{}] {text}",
                "#".repeat(filled),
                ".".repeat(30 - filled)
            );
            self.drawn = true;
        } else {
            let _ = writeln!(err, "replay: {text}");
        }
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}
