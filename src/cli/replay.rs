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
    let mut out = Progress::new(std::io::stderr().is_terminal());
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

/// A progress bar redrawn in place on a terminal (log records go around it, see
/// [`term`](super::term)); off a terminal, a plain line every few seconds and a last one
/// at the end.
struct Progress {
    terminal: bool,
    last_shown: Option<Instant>,
    rate: Option<Rate>,
    /// The latest report, and whether it was shown: the end shows it if not.
    latest: Option<(ReplayProgress, bool)>,
}

impl Progress {
    fn new(terminal: bool) -> Self {
        Self {
            terminal,
            last_shown: None,
            rate: None,
            latest: None,
        }
    }

    fn show(&mut self, p: &ReplayProgress) {
        let now = Instant::now();
        match &mut self.rate {
            Some(rate) => rate.update(now, p.entries),
            // The clock starts at the first report: connecting is no part of the rate.
            None => self.rate = Some(Rate::new(now, p.entries)),
        }
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        let due = self
            .last_shown
            .is_none_or(|t| now.duration_since(t) >= every);
        self.latest = Some((p.clone(), due));
        if due {
            self.last_shown = Some(now);
            self.draw(p, now);
        }
    }

    fn draw(&self, p: &ReplayProgress, now: Instant) {
        let mut text = format!(
            "{:>5.1}% {}/{} entries",
            p.fraction * 100.0,
            p.entries,
            p.total
        );
        if let Some(rate) = self.rate.as_ref().and_then(|r| r.per_sec(now)) {
            text += &format!(", {rate:.0}/s");
            if rate > 0.0 {
                let eta = p.total.saturating_sub(p.entries) as f64 / rate;
                text += &format!(", ETA {eta:.0}s");
            }
        }
        text += &format!(", at {} {}", p.stream, p.last);
        if self.terminal {
            const WIDTH: usize = 30;
            // Rounded share of the bar's width; fraction is within 0..=1.
            let filled = ((p.fraction * WIDTH as f64).round() as usize).min(WIDTH);
            let bar = format!("[{}{}] ", "#".repeat(filled), ".".repeat(WIDTH - filled));
            super::term::draw(&(bar + &text));
        } else {
            let _ = writeln!(std::io::stderr().lock(), "replay: {text}");
        }
    }

    /// Shows the last report if it was not, and ends the bar's line.
    fn finish(&mut self) {
        if let Some((p, false)) = self.latest.take() {
            self.draw(&p, Instant::now());
        }
        super::term::finish();
    }
}

impl Drop for Progress {
    /// An error ends the replay early: its message goes below the bar, not over it.
    fn drop(&mut self) {
        super::term::finish();
    }
}

/// Entries per second, smoothed exponentially over about [`Rate::SMOOTHING`]: chunks
/// of different sizes and pauses (a slow batch) do not make the rate and ETA jump.
struct Rate {
    since: Instant,
    at: Instant,
    entries: u64,
    per_sec: Option<f64>,
}

impl Rate {
    const SMOOTHING: f64 = 5.0;
    /// A rate measured over less than this is noise: no rate, no ETA before.
    const KNOWN_AFTER: Duration = Duration::from_secs(1);

    fn new(now: Instant, entries: u64) -> Self {
        Self {
            since: now,
            at: now,
            entries,
            per_sec: None,
        }
    }

    fn update(&mut self, now: Instant, entries: u64) {
        let dt = now.duration_since(self.at).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let sample = entries.saturating_sub(self.entries) as f64 / dt;
        // The weight of a sample grows with the time it covers (irregular intervals).
        let weight = 1.0 - (-dt / Self::SMOOTHING).exp();
        self.per_sec = Some(self.per_sec.map_or(sample, |r| r + weight * (sample - r)));
        self.at = now;
        self.entries = entries;
    }

    fn per_sec(&self, now: Instant) -> Option<f64> {
        self.per_sec
            .filter(|_| now.duration_since(self.since) >= Self::KNOWN_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_unknown_for_a_second_then_smoothed() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut rate = Rate::new(t0, 0);
        rate.update(at(500), 500);
        assert_eq!(rate.per_sec(at(500)), None, "half a second is too short");
        rate.update(at(1000), 1000);
        let steady = rate.per_sec(at(1000)).unwrap_or_default();
        assert!((steady - 1000.0).abs() < 1.0, "{steady}");
        // A stall of 100 ms with nothing read moves the rate a little, not to 0.
        rate.update(at(1100), 1000);
        let after = rate.per_sec(at(1100)).unwrap_or_default();
        assert!(after > 950.0 && after < 1000.0, "{after}");
    }
}
