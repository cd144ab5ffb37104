//! The fast path of [`super::decode`]: a Debezium envelope (`op`, `before`, `after`,
//! `source`, `transaction`; bare or in `{"schema":…,"payload":…}`) read by a JSON
//! cursor of its own (`scan`) straight into a [`ChangeEvent`], without serde's
//! machinery or a `serde_json::Value` tree of the whole event (`parts`): the rows'
//! fields go into their `Vec` as they are read, `source` into [`Source`]. Field names
//! and strings without escapes are borrowed from the entry, whole numbers of u64/i64
//! kept as numbers ([`super::FieldValue`]); other values are `Value`s that serde_json
//! parses (numbers keep their text). Pure.
//!
//! It only answers when it is sure: `None` for anything else — not an envelope, a key
//! twice, a value of an unexpected type, a flattened event, a bad op, any event that
//! is an error — and [`super::decode`] then takes the `Value` path, which says what is
//! wrong in its own words. Both give the same result for every event the fast path
//! takes (`tests.rs` checks that on the fixtures and on generated events).

mod parts;
mod scan;

use serde_json::Value;

use super::envelope::{envelope_row_schema, is_envelope_by, tx_block};
use super::event::{ChangeEvent, Declared, Decoded, Op, Row, Skip};
use super::logical_of;
use crate::config::DecodeConfig;
use parts::Parts;

/// Decodes an envelope `value_text` with its key `key_text`; `None` when not sure.
pub(super) fn decode<'a>(
    key_text: &'a str,
    value_text: &'a str,
    config: &DecodeConfig,
) -> Option<Decoded<'a>> {
    let top = parts::envelope(value_text)?;
    let (schema, parts) = unwrap_schema(top)?;
    if !is_envelope_by(
        schema.as_ref(),
        parts.source.is_some(),
        parts.after.is_some(),
        parts.before.is_some(),
    ) {
        return None;
    }
    let op = match parts.op.as_deref()? {
        "c" => Op::Create,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::Read,
        "t" => Op::Truncate,
        "m" => return Some(Decoded::Skip(Skip::Message)),
        _ => return None,
    };
    let key = key(key_text, config)?;
    let row_schema = schema.as_ref().and_then(|s| envelope_row_schema(s));
    let before = parts.before.flatten().map(|r| typed(r, row_schema));
    let after = parts.after.flatten().map(|r| typed(r, row_schema));
    let transaction = tx_block(parts.transaction.as_ref()).ok()?;
    match op {
        Op::Create | Op::Update | Op::Read if after.is_none() => return None,
        Op::Delete if before.is_none() && key.is_none() => return None,
        _ => {}
    }
    Some(Decoded::Change(ChangeEvent {
        op,
        key,
        before,
        after,
        source: parts.source.unwrap_or_default(),
        declared: Declared::of(schema, false),
        bare: false,
        transaction,
    }))
}

/// (schema, payload): the wrapped form is exactly the keys `schema` and `payload`;
/// `None` when the value has one of them among other keys.
fn unwrap_schema(top: Parts<'_>) -> Option<(Option<Value>, Parts<'_>)> {
    if top.schema.is_none() && top.payload.is_none() {
        return Some((None, top));
    }
    let only_two = top.op.is_none()
        && top.before.is_none()
        && top.after.is_none()
        && top.source.is_none()
        && top.transaction.is_none()
        && !top.other;
    match (top.schema, top.payload) {
        (Some(schema), Some(payload)) if only_two => {
            Some((Some(schema).filter(|s| !s.is_null()), *payload))
        }
        _ => None,
    }
}

/// The message key as [`super::parse_key`] reads it; the `Value` path for a key in the
/// wrapped form (its schema types the fields) or anything unexpected.
fn key<'a>(key_text: &'a str, config: &DecodeConfig) -> Option<Option<Row<'a>>> {
    if key_text == config.null_key {
        return Some(None);
    }
    match parts::key(key_text) {
        Some(None) => Some(None),
        Some(Some(row)) if !is_wrapped(&row) => Some(Some(row)),
        _ => super::parse_key(key_text, config).ok(),
    }
}

/// A row whose fields are exactly `payload` and `schema` (sorted) is the wrapped form.
fn is_wrapped(row: &Row<'_>) -> bool {
    matches!(row.0.as_slice(), [p, s] if p.name == "payload" && s.name == "schema")
}

/// The row with each field's logical type from the row struct's schema.
fn typed<'a>(mut row: Row<'a>, schema: Option<&[Value]>) -> Row<'a> {
    if let Some(fields) = schema {
        for field in &mut row.0 {
            field.logical = logical_of(fields, &field.name);
        }
    }
    row
}

#[cfg(test)]
mod tests;
