//! The terminal's status line: a progress bar redrawn in place on stderr, which log
//! records (also on stderr) go around instead of printing over it. The log writer and
//! the bar share one process-wide line, as the tracing subscriber is process-wide.

use std::io::Write;
use std::sync::{Mutex, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// Moves to the start of the line and erases it.
const ERASE: &str = "\r\x1b[2K";

/// The status line drawn now, if any.
static LINE: Mutex<Option<String>> = Mutex::new(None);

fn line() -> std::sync::MutexGuard<'static, Option<String>> {
    // A panic while drawing leaves a line of text behind, nothing inconsistent.
    LINE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Draws `text` as the status line (replacing the one drawn before).
pub fn draw(text: &str) {
    let mut line = line();
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{ERASE}{text}");
    let _ = err.flush();
    *line = Some(text.to_owned());
}

/// Leaves the status line as it is and moves below it: what follows starts on a new line.
pub fn finish() {
    let mut line = line();
    if line.take().is_some() {
        let _ = writeln!(std::io::stderr().lock());
    }
}

/// Writes one log record to `out`: with a status line drawn, the record replaces it and
/// the status line is drawn again below the record.
fn emit(out: &mut impl Write, status: Option<&str>, record: &[u8]) -> std::io::Result<()> {
    match status {
        Some(text) => {
            write!(out, "{ERASE}")?;
            out.write_all(record)?;
            write!(out, "{text}")?;
        }
        None => out.write_all(record)?,
    }
    out.flush()
}

/// The log writer: stderr, around the status line.
pub struct LogWriter;

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Record;

    fn make_writer(&'a self) -> Record {
        Record(Vec::new())
    }
}

/// One log record, buffered and written whole when dropped (the subscriber formats a
/// record, writes it and drops the writer).
pub struct Record(Vec<u8>);

impl Write for Record {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let line = line();
        // A closed stderr is no reason to fail (or panic in a log call).
        let _ = emit(&mut std::io::stderr().lock(), line.as_deref(), &self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_record_replaces_the_status_line_which_is_drawn_again_below() {
        let mut out = Vec::new();
        emit(&mut out, Some("[##..] 50.0%"), b"WARN dead-lettered\n").ok();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "\r\x1b[2KWARN dead-lettered\n[##..] 50.0%"
        );
        let mut out = Vec::new();
        emit(&mut out, None, b"INFO started\n").ok();
        assert_eq!(String::from_utf8_lossy(&out), "INFO started\n");
    }
}
