//! The envelope read by the [`Cursor`]: its keys into [`Parts`], a row image into
//! [`Row`] (its fields pushed as they come, then ordered and deduplicated as a
//! `serde_json::Map` would have them), `source` into [`Source`]. Any surprise is
//! `None`, which sends the event to the `Value` path.

use std::borrow::Cow;

use serde_json::Value;

use super::scan::{Cursor, Number};
use crate::decode::event::{Field, FieldValue, POSITION_FIELDS, Row, Source};

/// Keys serde_json gives its own meaning (arbitrary-precision numbers, raw values):
/// the `Value` path decides what such an object is.
const PRIVATE: &str = "$serde_json::private::";

/// Sets a slot once: a key twice is for the `Value` path (the last one wins there).
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// The keys of an envelope (or of its schema wrapper) that decode reads.
#[derive(Debug, Default)]
pub(super) struct Parts<'a> {
    pub op: Option<Cow<'a, str>>,
    /// `None`: absent; `Some(None)`: null.
    pub before: Option<Option<Row<'a>>>,
    pub after: Option<Option<Row<'a>>>,
    /// Present only as an object (anything else is for the `Value` path).
    pub source: Option<Source>,
    pub transaction: Option<Value>,
    pub schema: Option<Value>,
    pub payload: Option<Box<Parts<'a>>>,
    /// Any other key.
    pub other: bool,
}

/// A whole entry value: an envelope object and nothing after it.
pub(super) fn envelope(text: &str) -> Option<Parts<'_>> {
    let mut c = Cursor::new(text);
    let parts = parts(&mut c, false)?;
    c.at_end().then_some(parts)
}

/// An envelope object; `nested`: the payload of a schema wrapper (where `schema` and
/// `payload` are not expected).
fn parts<'a>(c: &mut Cursor<'a>, nested: bool) -> Option<Parts<'a>> {
    let depth = 1 + usize::from(nested);
    let mut p = Parts::default();
    c.object(|c, key| match key {
        "op" => once(&mut p.op, c.string()?),
        "before" => once(&mut p.before, image(c, depth)?),
        "after" => once(&mut p.after, image(c, depth)?),
        "source" => once(&mut p.source, source(c)?),
        "transaction" => once(&mut p.transaction, c.value(depth)?),
        "schema" if !nested => once(&mut p.schema, c.value(depth)?),
        "payload" if !nested => {
            let inner = parts(c, true)?;
            once(&mut p.payload, Box::new(inner))
        }
        "schema" | "payload" => None,
        k if k.starts_with(PRIVATE) => None,
        _ => {
            p.other = true;
            c.skip(depth)
        }
    })?;
    Some(p)
}

/// A row image: null or an object.
fn image<'a>(c: &mut Cursor<'a>, depth: usize) -> Option<Option<Row<'a>>> {
    if c.peek()? == b'n' {
        return (c.literal()? == Value::Null).then_some(None);
    }
    row(c, depth).map(Some)
}

/// A message key: null or an object, and nothing after it.
pub(super) fn key(text: &str) -> Option<Option<Row<'_>>> {
    let mut c = Cursor::new(text);
    let row = image(&mut c, 0)?;
    c.at_end().then_some(row)
}

/// A row image or key object (at nesting `depth` of its container): its fields in the
/// order a `serde_json::Map` keeps them (by name; of a name given twice, the last).
fn row<'a>(c: &mut Cursor<'a>, depth: usize) -> Option<Row<'a>> {
    let mut fields: Vec<Field<'a>> = Vec::with_capacity(16);
    c.object(|c, name| {
        if name.starts_with(PRIVATE) {
            return None;
        }
        fields.push(Field {
            name: Cow::Borrowed(name),
            value: field_value(c, depth + 1)?,
            logical: None,
        });
        Some(())
    })?;
    Some(Row(map_order(fields)))
}

/// A field's value: a string without escapes stays borrowed, a whole number serde_json
/// reads as u64 or i64 stays that number; anything else is the `Value` serde_json
/// makes of it.
fn field_value<'a>(c: &mut Cursor<'a>, depth: usize) -> Option<FieldValue<'a>> {
    Some(match c.peek()? {
        b'"' => match c.string()? {
            Cow::Borrowed(s) => FieldValue::Str(s),
            Cow::Owned(s) => FieldValue::Json(Value::String(s)),
        },
        b'{' | b'[' => FieldValue::Json(c.value(depth)?),
        b't' | b'f' | b'n' => FieldValue::Json(c.literal()?),
        _ => match c.number()? {
            Number::U64(n) => FieldValue::U64(n),
            Number::I64(n) => FieldValue::I64(n),
            Number::Text(t) => FieldValue::Json(serde_json::from_str(t).ok()?),
        },
    })
}

/// Fields in `serde_json::Map` order: sorted by name, the last of a name given twice.
fn map_order(mut fields: Vec<Field<'_>>) -> Vec<Field<'_>> {
    if fields.windows(2).all(|w| w[0].name < w[1].name) {
        return fields;
    }
    // Stable: of equal names the last comes last; dedup keeps the first slot of a run,
    // so the later field moves into it.
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    fields.dedup_by(|later, kept| {
        let same = later.name == kept.name;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    fields
}

/// The `source` block, read as `envelope::source_from` reads it (with the `Value`
/// accessors, on each field's value as [`field_value`] reads it): an object (anything
/// else is for the `Value` path); of a key given twice, the last.
fn source(c: &mut Cursor<'_>) -> Option<Source> {
    // The source object is at nesting 2 or 3.
    const DEPTH: usize = 3;
    let mut s = Source::default();
    let mut position: [Option<String>; POSITION_FIELDS.len()] = Default::default();
    let text = |v: FieldValue<'_>| v.as_str().map(str::to_string);
    c.object(|c, key| {
        match key {
            "connector" => s.connector = text(field_value(c, DEPTH)?),
            "db" => s.db = text(field_value(c, DEPTH)?),
            "schema" => s.schema = text(field_value(c, DEPTH)?),
            "table" => s.table = text(field_value(c, DEPTH)?),
            "lsn" => s.lsn = field_value(c, DEPTH)?.as_u64(),
            "ts_ms" => s.ts_ms = field_value(c, DEPTH)?.as_i64(),
            k if k.starts_with(PRIVATE) => return None,
            k => match POSITION_FIELDS.iter().position(|(name, _)| *name == k) {
                Some(i) => position[i] = field_value(c, DEPTH)?.scalar_text(),
                None => c.skip(DEPTH)?,
            },
        }
        Some(())
    })?;
    s.position = POSITION_FIELDS
        .iter()
        .zip(position)
        .filter_map(|((name, _), v)| Some((*name, v?)))
        .collect();
    Some(s)
}
