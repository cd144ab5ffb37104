//! The vocabulary every step shares (a leaf: imports no step): entry IDs, the raw
//! stream entry as read, the pair an acknowledgement needs, and dead letters.

use std::fmt;
use std::sync::Arc;

/// A Redis stream entry ID `<ms>-<seq>`; ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// Parses `ms-seq` or a bare `ms` (sequence 0).
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (text, "0"),
        };
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry of one stream. `fields` is `None` when the entry was deleted from the
/// stream while it was pending (only its ID is left in the PEL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub stream: Arc<str>,
    pub id: EntryId,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// How often the group delivered it (XPENDING), when read again from a PEL or
    /// claimed; 0 for a first delivery, where it is 1 and not asked for.
    pub deliveries: u64,
}

/// How many of `entries` each stream has, streams in order of first appearance. Linear
/// in the entries whatever the number of streams (a read over 1,600 streams returns
/// hundreds of them): a reply lists each stream's entries together, so the stream of
/// the entry before is tried first, then a map.
pub fn count_by_stream(entries: &[StreamEntry]) -> Vec<(&Arc<str>, usize)> {
    let mut counts: Vec<(&Arc<str>, usize)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for e in entries {
        if let Some((s, n)) = counts.last_mut()
            && Arc::ptr_eq(s, &e.stream)
        {
            *n += 1;
            continue;
        }
        match index.get(&*e.stream) {
            Some(&i) => counts[i].1 += 1,
            None => {
                index.insert(&e.stream, counts.len());
                counts.push((&e.stream, 1));
            }
        }
    }
    counts
}

/// What an acknowledgement needs: the stream and the entry's ID.
pub type EntryRef = (Arc<str>, EntryId);

/// The fields redsink adds to a dead letter (after the entry's own): the reason, the
/// stream and entry ID it came from, and the group that gave up on it. `ack` writes
/// them, the `dlq` commands read them.
pub mod dead_letter_field {
    pub const ERROR: &str = "redsink.error";
    pub const STREAM: &str = "redsink.stream";
    pub const ENTRY_ID: &str = "redsink.entry_id";
    pub const GROUP: &str = "redsink.group";
    /// All of them, in the order they are written.
    pub const ALL: [&str; 4] = [ERROR, STREAM, ENTRY_ID, GROUP];
}

/// An entry that cannot be applied, and why. Goes to the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub entry: StreamEntry,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_order_numerically() {
        let a = EntryId::parse("9-5").expect("valid");
        let b = EntryId::parse("10-0").expect("valid");
        assert!(a < b, "numeric, not text, order");
        assert_eq!(EntryId::parse("7"), Some(EntryId { ms: 7, seq: 0 }));
        assert_eq!(b.to_string(), "10-0");
        for bad in ["", "-", "a-1", "1-b", "1-2-3", "$", ">"] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn entries_are_counted_per_stream_in_order_of_appearance() {
        let entry = |stream: &Arc<str>| StreamEntry {
            stream: stream.clone(),
            id: EntryId::ZERO,
            fields: None,
            deliveries: 0,
        };
        let (a, b) = (Arc::<str>::from("a"), Arc::<str>::from("b"));
        // The same name behind another Arc counts as the same stream.
        let a2 = Arc::<str>::from("a");
        let entries = [entry(&a), entry(&a), entry(&b), entry(&a2), entry(&b)];
        let counts: Vec<(&str, usize)> = count_by_stream(&entries)
            .into_iter()
            .map(|(s, n)| (&**s, n))
            .collect();
        assert_eq!(counts, vec![("a", 3), ("b", 2)]);
        assert!(count_by_stream(&[]).is_empty());
    }
}
