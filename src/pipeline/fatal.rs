//! A fatal stop: the pipeline ends with an error that needs an operator (a table or a
//! config to fix). The entries it read and did not acknowledge stay pending, to be read
//! again after the restart. Two things keep that restart loop from costing data:
//! - the error is noted on each of them ([`Acker::note_error`]), so that if one is ever
//!   dead-lettered for `max_deliveries` its dead letter says why;
//! - all but the entry that failed are released (their delivery count set back), so a
//!   stop is not counted as a delivery failure of the entries read with it. The failing
//!   entry keeps its count: if the error really comes from it, `max_deliveries` still
//!   moves it out of the way.
//!
//! The batch in flight, if any, is left to finish (it may commit and acknowledge) or
//! to fail, in which case the writer noted its own error.
//!
//! [`Acker::note_error`]: crate::ack::Acker::note_error

use super::retry::source_chain;
use super::{Pipeline, PipelineError};
use crate::entry::EntryRef;

impl PipelineError {
    /// The stream and entry ID this error came with, if one entry caused it.
    fn entry(&self) -> Option<(&str, &str)> {
        match self {
            Self::Entry { stream, entry, .. } => Some((stream, entry)),
            _ => None,
        }
    }
}

impl Pipeline {
    /// Notes `error` on every entry read and not acknowledged (the batch filling, the
    /// entries not processed, the read ahead) and releases all but the failing one.
    pub(super) async fn abandon(&mut self, error: &PipelineError) {
        let mut entries: Vec<EntryRef> = self.core.batcher.take().acks;
        entries.append(&mut self.core.unfinished);
        entries.extend(self.prefetched.drain(..).map(|e| (e.stream, e.id)));
        if entries.is_empty() {
            return;
        }
        let (text, chain) = (error.to_string(), source_chain(error));
        // An entry's error shows its cause in its own message already.
        let noted = if chain.is_empty() || text.ends_with(&chain) {
            format!("redsink stopped: {text}")
        } else {
            format!("redsink stopped: {text}: {chain}")
        };
        self.core.acker.note_error(&entries, &noted).await;
        let unacknowledged = entries.len();
        let failing = error.entry();
        entries.retain(|(stream, id)| {
            failing.is_none_or(|(s, e)| s != stream.as_ref() || *e != id.to_string())
        });
        let consumer = self.core.config.consumer();
        let released = self.core.acker.release(consumer, &entries).await;
        tracing::warn!(
            unacknowledged,
            released,
            "fatal error: noted on the unacknowledged entries; released those that did not fail"
        );
    }
}
