//! `redsink dlq list|show|retry|purge`: the dead letters of the selected streams.
//!
//! A dead letter is an entry of `<stream><dlq_suffix>` (written by `ack`): the original
//! entry's fields plus [`DLQ_FIELDS`]. Retry puts the original fields back on the
//! source stream as a new entry, read by the group like any other, and deletes the dead
//! letter in the same MULTI/EXEC; purge deletes dead letters for good.
//! Errors: [`DlqError`], naming the dead letter and its dead-letter stream.

use serde::Serialize;

use crate::config::RedisConfig;
use crate::entry::dead_letter_field;
use crate::redis::admin::{self, Pair};
use crate::redis::{Control, RedisError};

/// Fields redsink adds to a dead letter; everything else is the original entry.
pub const DLQ_FIELDS: [&str; 4] = dead_letter_field::ALL;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("no dead letter {id} in the dead-letter streams of the mapped streams")]
    NotFound { id: String },
    #[error(
        "dead letter {id} is in {} dead-letter streams ({}): say which with --stream",
        dlqs.len(),
        dlqs.join(", ")
    )]
    Ambiguous { id: String, dlqs: Vec<String> },
    #[error("give dead-letter IDs or --all, not both")]
    IdsAndAll,
    #[error("which dead letters? give their IDs or --all")]
    NoneChosen,
    /// A dead letter goes back only onto the stream its dead-letter stream belongs to.
    #[error("it names stream {stream:?}, not {owner}: left in place")]
    OtherStream { stream: String, owner: String },
    #[error(
        "dead letter {id} of {dlq} has no source stream or no original fields: nothing to retry"
    )]
    NothingToRetry { id: String, dlq: String },
}

/// One entry of a dead-letter stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetterEntry {
    /// Its ID in the dead-letter stream.
    pub id: String,
    pub error: String,
    /// Where it came from.
    pub stream: String,
    pub entry_id: String,
    pub group: String,
    /// The original fields (shown as text, lossily for binary values).
    pub fields: Vec<(String, String)>,
    /// The original fields as they were, for a retry.
    #[serde(skip)]
    raw: Vec<Pair>,
}

impl DeadLetterEntry {
    /// Splits an entry of a dead-letter stream into redsink's fields and the original ones.
    fn from_entry(id: String, pairs: &[Pair]) -> Self {
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(f, _)| f == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let raw: Vec<Pair> = pairs
            .iter()
            .filter(|(f, _)| !DLQ_FIELDS.iter().any(|d| f == d.as_bytes()))
            .cloned()
            .collect();
        Self {
            error: get(dead_letter_field::ERROR),
            stream: get(dead_letter_field::STREAM),
            entry_id: get(dead_letter_field::ENTRY_ID),
            group: get(dead_letter_field::GROUP),
            fields: raw
                .iter()
                .map(|(f, v)| {
                    (
                        String::from_utf8_lossy(f).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
            raw,
            id,
        }
    }
}

/// Up to `count` dead letters of `dlq` from `start` to `end` (XRANGE bounds).
pub async fn dead_letters(
    conn: &mut Control,
    dlq: &str,
    bounds: (&str, &str),
    count: usize,
) -> Result<Vec<DeadLetterEntry>, DlqError> {
    Ok(admin::range_fields(conn, dlq, bounds, count)
        .await?
        .into_iter()
        .map(|(id, pairs)| DeadLetterEntry::from_entry(id, &pairs))
        .collect())
}

/// The dead letters of `streams` from `start` to `end` (XRANGE bounds), up to `count`
/// per stream, each with its dead-letter stream's name.
pub async fn letters(
    redis: &RedisConfig,
    control: &mut Control,
    streams: &[String],
    bounds: (&str, &str),
    count: usize,
) -> Result<Vec<(String, DeadLetterEntry)>, DlqError> {
    let mut out = Vec::new();
    for stream in streams {
        let dlq = redis.dlq_stream(stream);
        for letter in dead_letters(control, &dlq, bounds, count).await? {
            out.push((dlq.clone(), letter));
        }
    }
    Ok(out)
}

/// Up to `count` dead letters of each of `streams`, oldest first.
pub async fn list(
    redis: &RedisConfig,
    control: &mut Control,
    streams: &[String],
    count: usize,
) -> Result<Vec<(String, DeadLetterEntry)>, DlqError> {
    letters(redis, control, streams, ("-", "+"), count).await
}

/// The dead letters with ID `id` (one per dead-letter stream at most).
async fn find(
    redis: &RedisConfig,
    control: &mut Control,
    streams: &[String],
    id: &str,
) -> Result<Vec<(String, DeadLetterEntry)>, DlqError> {
    letters(redis, control, streams, (id, id), 1).await
}

/// The dead letter `id`; an ID found in several dead-letter streams (shards' streams
/// can share IDs) is refused, asking for `--stream`, rather than one picked.
pub async fn show(
    redis: &RedisConfig,
    control: &mut Control,
    streams: &[String],
    id: &str,
) -> Result<(String, DeadLetterEntry), DlqError> {
    the_one(find(redis, control, streams, id).await?, id)
}

/// The one dead letter `found` with ID `id`: an error when there is none, or several.
fn the_one(
    mut found: Vec<(String, DeadLetterEntry)>,
    id: &str,
) -> Result<(String, DeadLetterEntry), DlqError> {
    match found.len() {
        0 => Err(DlqError::NotFound { id: id.into() }),
        1 => Ok(found.remove(0)),
        _ => Err(DlqError::Ambiguous {
            id: id.into(),
            dlqs: found.into_iter().map(|(d, _)| d).collect(),
        }),
    }
}

/// `ids` (each must exist, in one dead-letter stream only) or, with `all`, every dead
/// letter of `streams`.
pub async fn chosen(
    redis: &RedisConfig,
    control: &mut Control,
    streams: &[String],
    ids: &[String],
    all: bool,
) -> Result<Vec<(String, DeadLetterEntry)>, DlqError> {
    match (all, ids.is_empty()) {
        (true, true) => letters(redis, control, streams, ("-", "+"), usize::MAX).await,
        (false, false) => {
            let mut out = Vec::new();
            for id in ids {
                out.push(the_one(find(redis, control, streams, id).await?, id)?);
            }
            Ok(out)
        }
        (true, false) => Err(DlqError::IdsAndAll),
        (false, true) => Err(DlqError::NoneChosen),
    }
}

/// Puts `letter` of `dlq` back on its source stream (a new entry, applied through the
/// normal path) and deletes it from `dlq`; returns the new entry's ID. Only onto the
/// stream `dlq` belongs to.
pub async fn retry(
    redis: &RedisConfig,
    control: &mut Control,
    dlq: &str,
    letter: &DeadLetterEntry,
) -> Result<String, DlqError> {
    let owner = dlq.strip_suffix(&redis.dlq_suffix).unwrap_or(dlq);
    if letter.stream != owner {
        return Err(DlqError::OtherStream {
            stream: letter.stream.clone(),
            owner: owner.into(),
        });
    }
    if letter.stream.is_empty() || letter.raw.is_empty() {
        return Err(DlqError::NothingToRetry {
            id: letter.id.clone(),
            dlq: dlq.into(),
        });
    }
    let context = format!(
        "moving dead letter {} of {dlq} back to {}",
        letter.id, letter.stream
    );
    let moved = admin::move_entry(
        control,
        (dlq, &letter.id),
        &letter.stream,
        &letter.raw,
        &context,
    )
    .await?;
    Ok(moved)
}

/// Deletes `letter` of `dlq` for good; returns whether it still existed.
pub async fn purge(
    control: &mut Control,
    dlq: &str,
    letter: &DeadLetterEntry,
) -> Result<bool, DlqError> {
    let deleted = admin::delete_entries(control, dlq, std::slice::from_ref(&letter.id)).await?;
    Ok(deleted > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(f: &str, v: &[u8]) -> Pair {
        (f.as_bytes().to_vec(), v.to_vec())
    }

    #[test]
    fn a_dead_letter_is_split_into_redsink_fields_and_the_original_ones() {
        let pairs = [
            pair("key", b"{\"id\":1}"),
            pair("redsink.error", b"bad"),
            pair("value", &[0xff, b'x']),
            pair("redsink.stream", b"s"),
            pair("redsink.entry_id", b"1-0"),
            pair("redsink.group", b"g"),
        ];
        let l = DeadLetterEntry::from_entry("9-0".into(), &pairs);
        assert_eq!(
            (&*l.id, &*l.error, &*l.stream, &*l.entry_id, &*l.group),
            ("9-0", "bad", "s", "1-0", "g")
        );
        assert_eq!(l.raw, vec![pairs[0].clone(), pairs[2].clone()]);
        assert_eq!(l.fields[1], ("value".into(), "\u{fffd}x".into()));
    }

    #[test]
    fn an_ambiguous_id_names_its_dead_letter_streams() {
        let e = DlqError::Ambiguous {
            id: "1-0".into(),
            dlqs: vec!["a:dlq".into(), "b:dlq".into()],
        };
        assert_eq!(
            e.to_string(),
            "dead letter 1-0 is in 2 dead-letter streams (a:dlq, b:dlq): say which with --stream"
        );
    }
}
