//! What the dead-letter streams already hold, for a replay: a replay re-reads history
//! that the live group has already dead-lettered, and adding those entries again would
//! only grow the dead-letter stream with copies (and mislead whoever counts it).
//!
//! A dead letter counts as already there when its dead-letter stream holds one with the
//! same source entry ID, or with the same original fields (`dlq retry` puts the fields
//! back as a new entry: when that one fails again, its dead letter carries the new ID,
//! and replaying the old entry would add the same change a second time). An entry
//! deleted from its stream has no fields and is matched by ID only.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use crate::entry::{DeadLetter, dead_letter_field};
use crate::redis::admin::{self, Pair};
use crate::redis::{Control, RedisError};

/// Dead letters read per XRANGE while loading a dead-letter stream.
const PAGE: usize = 1000;

/// What one dead-letter stream holds: source entry IDs and fingerprints of the
/// original fields.
#[derive(Debug, Default)]
struct Held {
    ids: HashSet<String>,
    fields: HashSet<u64>,
}

impl Held {
    /// Whether `letter` is already there.
    fn holds(&self, letter: &DeadLetter) -> bool {
        let (id, fields) = key(letter);
        self.ids.contains(&id) || fields.is_some_and(|f| self.fields.contains(&f))
    }

    /// Notes `letter` as written.
    fn note(&mut self, letter: &DeadLetter) {
        let (id, fields) = key(letter);
        self.ids.insert(id);
        self.fields.extend(fields);
    }

    /// Notes a dead letter read from the stream (its fields, redsink's included).
    fn note_stored(&mut self, pairs: &[Pair]) {
        let mut original = pairs
            .iter()
            .filter(|(f, _)| !dead_letter_field::ALL.iter().any(|d| f == d.as_bytes()))
            .peekable();
        if original.peek().is_some() {
            self.fields.insert(fingerprint(original));
        }
        if let Some((_, id)) = pairs
            .iter()
            .find(|(f, _)| f == dead_letter_field::ENTRY_ID.as_bytes())
        {
            self.ids.insert(String::from_utf8_lossy(id).into_owned());
        }
    }
}

/// A dead letter's source entry ID and the fingerprint of its fields (none for an
/// entry deleted from its stream).
fn key(letter: &DeadLetter) -> (String, Option<u64>) {
    let fields = letter
        .entry
        .fields
        .as_deref()
        .filter(|f| !f.is_empty())
        .map(|f| fingerprint(f.iter()));
    (letter.entry.id.to_string(), fields)
}

/// A fingerprint of an entry's fields, in order.
fn fingerprint<'a>(pairs: impl Iterator<Item = &'a Pair>) -> u64 {
    let mut h = DefaultHasher::new();
    for (f, v) in pairs {
        f.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

/// The dead-letter streams' contents seen so far, shared by an acker's clones; each
/// stream is read once, when it first gets a dead letter.
#[derive(Debug, Clone, Default)]
pub(super) struct Known {
    held: Arc<Mutex<HashMap<String, Held>>>,
}

impl Known {
    /// Splits `dead` into the dead letters to write and the ones already in their
    /// dead-letter stream (`dlq_of` names it), reading each such stream the first time.
    /// Call [`Known::note`] once the first ones are written.
    pub(super) async fn split<'a>(
        &self,
        conn: &mut Control,
        dead: &'a [DeadLetter],
        dlq_of: impl Fn(&str) -> String,
    ) -> Result<(Vec<&'a DeadLetter>, Vec<&'a DeadLetter>), RedisError> {
        for d in dead {
            let dlq = dlq_of(&d.entry.stream);
            if !self.lock().contains_key(&dlq) {
                let held = load(conn, &dlq).await?;
                self.lock().entry(dlq).or_insert(held);
            }
        }
        let held = self.lock();
        Ok(dead.iter().partition(|d| {
            held.get(&dlq_of(&d.entry.stream))
                .is_none_or(|stream| !stream.holds(d))
        }))
    }

    /// Notes `written` as being in their dead-letter streams now (only once written: a
    /// failed write is retried, and must not then find them "already there").
    pub(super) fn note(&self, written: &[&DeadLetter], dlq_of: impl Fn(&str) -> String) {
        let mut held = self.lock();
        for d in written {
            held.entry(dlq_of(&d.entry.stream)).or_default().note(d);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads every dead letter of `dlq`, page by page.
async fn load(conn: &mut Control, dlq: &str) -> Result<Held, RedisError> {
    let mut held = Held::default();
    let mut start = "-".to_string();
    loop {
        let page = admin::range_fields(conn, dlq, (&start, "+"), PAGE).await?;
        for (_, pairs) in &page {
            held.note_stored(pairs);
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => start = format!("({last}"),
            _ => return Ok(held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{EntryId, StreamEntry};

    fn letter(id: u64, fields: Option<Vec<Pair>>) -> DeadLetter {
        DeadLetter {
            entry: StreamEntry {
                deliveries: 0,
                stream: Arc::from("s"),
                id: EntryId { ms: id, seq: 0 },
                fields,
            },
            reason: "bad".into(),
        }
    }

    fn pair(f: &str, v: &str) -> Pair {
        (f.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn a_letter_is_known_by_its_entry_id_or_its_original_fields() {
        let mut held = Held::default();
        held.note_stored(&[
            pair("k", "v1"),
            pair(dead_letter_field::ERROR, "bad"),
            pair(dead_letter_field::STREAM, "s"),
            pair(dead_letter_field::ENTRY_ID, "5-0"),
            pair(dead_letter_field::GROUP, "redsink"),
        ]);
        // Same ID, other fields; other ID, same fields (a retried copy).
        assert!(held.holds(&letter(5, Some(vec![pair("k", "v2")]))));
        assert!(held.holds(&letter(9, Some(vec![pair("k", "v1")]))));
        // New, then known once noted as written.
        let new = letter(7, Some(vec![pair("k", "v3")]));
        assert!(!held.holds(&new));
        held.note(&new);
        assert!(held.holds(&new));
        // Deleted entries (no fields) are told apart by ID only.
        held.note(&letter(8, None));
        assert!(!held.holds(&letter(10, None)));
        assert!(held.holds(&letter(8, None)));
    }
}
