//! Which change of a row wins: the [`Version`] of an event, bytes that compare like the
//! source's order, from the mapping's scheme (`mapping.version`): the stream entry ID
//! or a connector's log position in `source`. Pure. A missing or malformed position is
//! a [`MapError::Event`] (the entry is dead-lettered) that names the `source` field.

use crate::config::VersionSource;
use crate::decode::{ChangeEvent, Source};
use crate::entry::EntryId;

use super::{MapError, Mapping};

/// A per-row version: bytes that compare (as Postgres compares `bytea`) in the order
/// the source applied the changes. Fixed-width big-endian integers, so byte order is
/// numeric order, then one byte for the operation.
///
/// | source | bytes |
/// |---|---|
/// | PostgreSQL `source.lsn` | lsn as u64, op |
/// | stream entry ID | ms as u64, seq as u64, op |
///
/// The op byte (delete or truncate 0, upsert 1) orders a delete and an upsert of one
/// row at one position (a primary-key change mapped onto another unique key) the way
/// the source emits them: the delete first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub Vec<u8>);

impl Version {
    pub const OP_DELETE: u8 = 0;
    pub const OP_UPSERT: u8 = 1;

    pub fn from_lsn(lsn: u64, op: u8) -> Self {
        Self::from_parts(&[lsn], op)
    }
    /// Big-endian numbers, then the op byte: byte order is the numbers' order.
    pub fn from_parts(parts: &[u64], op: u8) -> Self {
        let mut v = Vec::with_capacity(parts.len() * 8 + 1);
        for p in parts {
            v.extend_from_slice(&p.to_be_bytes());
        }
        v.push(op);
        Self(v)
    }
    pub fn from_entry_id(id: EntryId, op: u8) -> Self {
        let mut v = id.ms.to_be_bytes().to_vec();
        v.extend_from_slice(&id.seq.to_be_bytes());
        v.push(op);
        Self(v)
    }
}

impl Mapping {
    /// The version scheme of this event: the configured one; with `"auto"`, `source.lsn`
    /// for PostgreSQL and the entry ID for anything else. Other connectors' positions
    /// are opt-in: versions of different schemes do not compare, so changing the scheme
    /// of a table that has rows needs its versions cleared (docs/TYPES.md).
    pub(super) fn scheme(&self, event: &ChangeEvent) -> VersionSource {
        match self.version {
            VersionSource::Auto => match event.source.connector.as_deref() {
                Some("postgresql") => VersionSource::SourceLsn,
                Some(_) => VersionSource::EntryId,
                // A flattened event (ExtractNewRecordState) names no connector: its
                // __lsn, when present, is the PostgreSQL connector's.
                None if event.source.lsn.is_some() => VersionSource::SourceLsn,
                None => VersionSource::EntryId,
            },
            other => other,
        }
    }

    /// Whether this event's version is the stream entry ID (not a source position).
    pub(super) fn versions_by_entry_id(&self, event: &ChangeEvent) -> bool {
        self.scheme(event) == VersionSource::EntryId
    }

    /// The lowest version this event's position can give (its delete's): a bound below
    /// which no later event of its stream can fall (docs/OPERATIONS.md, tombstones).
    /// An event without a usable position is a [`MapError::Event`].
    pub fn horizon(&self, event: &ChangeEvent, id: EntryId) -> Result<Version, MapError> {
        self.version(event, id, Version::OP_DELETE)
    }

    pub(super) fn version(
        &self,
        event: &ChangeEvent,
        id: EntryId,
        op: u8,
    ) -> Result<Version, MapError> {
        let scheme = self.scheme(event);
        if scheme == VersionSource::EntryId {
            return Ok(Version::from_entry_id(id, op));
        }
        position_parts(scheme, &event.source)
            .map(|parts| Version::from_parts(&parts, op))
            .map_err(|missing| {
                MapError::event(format!(
                    "the event has no usable source.{missing} for mapping.version {scheme:?}: \
                     set mapping.version to the connector's position (see docs/TYPES.md) or \
                     \"entry_id\" if this source has none"
                ))
            })
    }
}

/// The numbers whose order is the order of changes, for each position scheme; `Err`
/// names the missing or malformed `source` field.
pub(super) fn position_parts(scheme: VersionSource, s: &Source) -> Result<Vec<u64>, &'static str> {
    let num = |name: &'static str| -> Result<u64, &'static str> {
        s.position(name).and_then(|v| v.parse().ok()).ok_or(name)
    };
    Ok(match scheme {
        VersionSource::SourceLsn | VersionSource::Auto | VersionSource::EntryId => {
            vec![s.lsn.ok_or("lsn")?]
        }
        VersionSource::SourceSequence => sequence_parts(s)?,
        VersionSource::MysqlBinlog => {
            let file = s.position("file").ok_or("file")?;
            let number = file
                .rsplit('.')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or("file")?;
            vec![number, num("pos")?, num("row").unwrap_or(0)]
        }
        VersionSource::SqlServerLsn => {
            let commit = sqlserver_lsn(s, "commit_lsn", true)?;
            let change = sqlserver_lsn(s, "change_lsn", false)?;
            vec![
                commit[0],
                commit[1],
                change[0],
                change[1],
                num("event_serial_no").unwrap_or(0),
            ]
        }
        VersionSource::OracleScn => {
            let scn = num("scn")?;
            vec![num("commit_scn").unwrap_or(scn), scn]
        }
        VersionSource::MongodbOrd => {
            let ts = s.ts_ms.and_then(|t| u64::try_from(t).ok()).ok_or("ts_ms")?;
            vec![ts, num("ord")?]
        }
    })
}

/// The PostgreSQL connector's `source.sequence`: `["<last commit lsn>","<lsn>"]`, either
/// may be null (lowest).
fn sequence_parts(s: &Source) -> Result<Vec<u64>, &'static str> {
    let text = s.position("sequence").ok_or("sequence")?;
    let (first, second) = match plain_sequence(text) {
        Some(parts) => parts,
        None => serde_sequence(text).ok_or("sequence")?,
    };
    Ok(vec![first.unwrap_or(0), second.or(s.lsn).unwrap_or(0)])
}

/// `sequence`'s first two items as numbers, read by serde_json (any JSON array of
/// strings and nulls); `None` when it is not one.
fn serde_sequence(text: &str) -> Option<(Option<u64>, Option<u64>)> {
    let parsed: Vec<Option<String>> = serde_json::from_str(text).ok()?;
    let n = |i: usize| {
        parsed
            .get(i)
            .cloned()
            .flatten()
            .and_then(|v| v.parse().ok())
    };
    Some((n(0), n(1)))
}

/// `sequence` as Debezium writes it, `["…","…"]` (each item a string without escapes,
/// or `null`; no whitespace), read without serde_json: its first two items as numbers
/// (`None`: null, absent, or not a number). `None` for any other text, which serde_json
/// then reads (and rejects as it always did).
fn plain_sequence(text: &str) -> Option<(Option<u64>, Option<u64>)> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let mut items = [None, None];
    if inner.is_empty() {
        return Some((None, None));
    }
    for (i, item) in inner.split(',').enumerate() {
        let value = if item == "null" {
            None
        } else {
            let s = item.strip_prefix('"')?.strip_suffix('"')?;
            if s.contains(['"', '\\']) || s.chars().any(char::is_control) {
                return None;
            }
            s.parse().ok()
        };
        if let Some(slot) = items.get_mut(i) {
            *slot = value;
        }
    }
    Some((items[0], items[1]))
}

/// A SQL Server LSN, "0000003a:00002f50:0002" (8:8:4 hex digits) → two numbers that
/// order like it. A snapshot row has no change_lsn: lowest.
fn sqlserver_lsn(s: &Source, name: &'static str, required: bool) -> Result<[u64; 2], &'static str> {
    let Some(text) = s.position(name) else {
        return if required { Err(name) } else { Ok([0, 0]) };
    };
    let parts: Vec<&str> = text.split(':').collect();
    let widths_ok =
        parts.len() == 3 && parts[0].len() == 8 && parts[1].len() == 8 && parts[2].len() == 4;
    let nums: Vec<u64> = parts
        .iter()
        .map(|p| u64::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| name)?;
    match nums.as_slice() {
        [a, b, c] if widths_ok => Ok([(a << 32) | b, *c]),
        _ => Err(name),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{plain_sequence, serde_sequence as by_serde};

    proptest! {
        #[test]
        fn sequences_read_as_serde_json_reads_them(
            items in proptest::collection::vec(proptest::option::of("[0-9]{0,21}|[-+0-9a-z,\"\\\\ ]{0,6}"), 0..4),
        ) {
            let text = serde_json::to_string(&items).expect("serializes");
            if let Some(fast) = plain_sequence(&text) {
                prop_assert_eq!(Some(fast), by_serde(&text));
            }
        }

        #[test]
        fn any_text_it_reads_serde_json_reads_alike(text in "[\\[\\]\",0-9nul \\\\a]{0,16}") {
            if let Some(fast) = plain_sequence(&text) {
                prop_assert_eq!(Some(fast), by_serde(&text), "{}", text);
            }
        }
    }

    #[test]
    fn debezium_s_sequences_take_the_plain_path() {
        assert_eq!(
            plain_sequence(r#"["24023128","24023480"]"#),
            Some((Some(24_023_128), Some(24_023_480)))
        );
        assert_eq!(plain_sequence(r#"[null,"7"]"#), Some((None, Some(7))));
        assert_eq!(
            plain_sequence(r#"[ "1", "2" ]"#),
            None,
            "whitespace: serde_json's"
        );
    }
}
