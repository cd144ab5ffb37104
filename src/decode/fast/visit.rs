//! The serde visitors of the fast path: the envelope's keys into [`Parts`], a row
//! image into [`Row`] (its fields pushed as they come, then ordered and deduplicated as
//! a `serde_json::Map` would have them), `source` into [`Source`]. Any surprise is an
//! error, which sends the event to the `Value` path.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::decode::event::{Field, FieldValue, POSITION_FIELDS, Row, Source};

/// Keys serde_json gives its own meaning (arbitrary-precision numbers, raw values):
/// the `Value` path decides what such an object is.
const PRIVATE: &str = "$serde_json::private::";

/// The error that sends an event to the `Value` path.
fn unsure<E: de::Error>() -> E {
    E::custom("not for the fast path")
}

/// Sets a slot once: a key twice is for the `Value` path (the last one wins there).
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(unsure());
    }
    *slot = Some(value);
    Ok(())
}

/// The keys of an envelope (or of its schema wrapper) that decode reads.
#[derive(Debug, Default)]
pub(super) struct Parts<'a> {
    pub op: Option<String>,
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

enum PartsKey {
    Op,
    Before,
    After,
    Source,
    Transaction,
    Schema,
    Payload,
    Private,
    Other,
}

/// Reads an object's key without allocating it, by its class.
struct Classify<F>(F);

impl<'de, K, F: FnOnce(&str) -> K> DeserializeSeed<'de> for Classify<F> {
    type Value = K;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, K, F: FnOnce(&str) -> K> Visitor<'de> for Classify<F> {
    type Value = K;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<K, E> {
        Ok((self.0)(v))
    }
}

fn parts_key(k: &str) -> PartsKey {
    match k {
        "op" => PartsKey::Op,
        "before" => PartsKey::Before,
        "after" => PartsKey::After,
        "source" => PartsKey::Source,
        "transaction" => PartsKey::Transaction,
        "schema" => PartsKey::Schema,
        "payload" => PartsKey::Payload,
        k if k.starts_with(PRIVATE) => PartsKey::Private,
        _ => PartsKey::Other,
    }
}

/// An envelope object; `nested`: the payload of a schema wrapper (where `schema` and
/// `payload` are not expected).
pub(super) struct PartsSeed {
    pub nested: bool,
}

impl<'de> DeserializeSeed<'de> for PartsSeed {
    type Value = Parts<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parts<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PartsSeed {
    type Value = Parts<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Debezium envelope")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts<'de>, A::Error> {
        let mut p = Parts::default();
        while let Some(key) = map.next_key_seed(Classify(parts_key))? {
            match key {
                PartsKey::Op => once(&mut p.op, map.next_value()?)?,
                PartsKey::Before => once(&mut p.before, image(&mut map)?)?,
                PartsKey::After => once(&mut p.after, image(&mut map)?)?,
                PartsKey::Source => once(&mut p.source, map.next_value::<SourceBlock>()?.0)?,
                PartsKey::Transaction => once(&mut p.transaction, map.next_value()?)?,
                PartsKey::Schema if !self.nested => once(&mut p.schema, map.next_value()?)?,
                PartsKey::Payload if !self.nested => {
                    let inner = map.next_value_seed(PartsSeed { nested: true })?;
                    once(&mut p.payload, Box::new(inner))?;
                }
                PartsKey::Schema | PartsKey::Payload | PartsKey::Private => {
                    return Err(unsure());
                }
                PartsKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                    p.other = true;
                }
            }
        }
        Ok(p)
    }
}

/// A row image: null or an object.
fn image<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<Row<'de>>, A::Error> {
    Ok(map.next_value::<Option<KeyRow<'de>>>()?.map(|r| r.0))
}

/// A row image or key object: its fields in the order a `serde_json::Map` keeps them
/// (by name; of a name given twice, the last), names and scalars borrowed from the
/// entry's text.
pub(super) struct KeyRow<'a>(pub Row<'a>);

impl<'de> Deserialize<'de> for KeyRow<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RowVisitor)
    }
}

struct RowVisitor;

impl<'de> Visitor<'de> for RowVisitor {
    type Value = KeyRow<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyRow<'de>, A::Error> {
        let mut fields: Vec<Field<'de>> = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(name) = map.next_key_seed(Name)? {
            if name.starts_with(PRIVATE) {
                return Err(unsure());
            }
            let value = map.next_value_seed(ValueSeed)?;
            fields.push(Field {
                name,
                value,
                logical: None,
            });
        }
        Ok(KeyRow(Row(map_order(fields))))
    }
}

/// A field's value: a string without escapes stays borrowed, a whole number serde_json
/// reads as u64 or i64 stays that number; anything else is the `Value` serde_json
/// would make of it.
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = FieldValue<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<FieldValue<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = FieldValue<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<FieldValue<'de>, E> {
        Ok(FieldValue::Str(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue<'de>, E> {
        Ok(FieldValue::Json(Value::String(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<FieldValue<'de>, E> {
        Ok(FieldValue::Json(Value::String(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldValue<'de>, E> {
        Ok(FieldValue::U64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldValue<'de>, E> {
        Ok(FieldValue::I64(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldValue<'de>, E> {
        Ok(FieldValue::Json(Value::Bool(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<FieldValue<'de>, E> {
        Ok(FieldValue::Json(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<FieldValue<'de>, E> {
        Ok(FieldValue::Json(Value::Null))
    }
    // Objects, and numbers past i64/u64 (serde_json's arbitrary precision gives them
    // as a map): `Value` decides, as on the `Value` path.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldValue<'de>, A::Error> {
        Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(FieldValue::Json)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<FieldValue<'de>, A::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(FieldValue::Json)
    }
}

/// An object key, borrowed from the entry unless it has escapes.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
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

/// The `source` block, read as `envelope::source_from` reads it.
struct SourceBlock(Source);

enum SourceKey {
    Connector,
    Db,
    Schema,
    Table,
    Lsn,
    TsMs,
    Position(usize),
    Private,
    Other,
}

fn source_key(k: &str) -> SourceKey {
    match k {
        "connector" => SourceKey::Connector,
        "db" => SourceKey::Db,
        "schema" => SourceKey::Schema,
        "table" => SourceKey::Table,
        "lsn" => SourceKey::Lsn,
        "ts_ms" => SourceKey::TsMs,
        k if k.starts_with(PRIVATE) => SourceKey::Private,
        k => match POSITION_FIELDS.iter().position(|(name, _)| *name == k) {
            Some(i) => SourceKey::Position(i),
            None => SourceKey::Other,
        },
    }
}

impl<'de> Deserialize<'de> for SourceBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SourceVisitor)
    }
}

struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = SourceBlock;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a source object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SourceBlock, A::Error> {
        let mut s = Source::default();
        let mut position: [Option<String>; POSITION_FIELDS.len()] = Default::default();
        // Each occurrence of a key sets its slot: the last one wins, as in a Map.
        while let Some(key) = map.next_key_seed(Classify(source_key))? {
            match key {
                SourceKey::Connector => s.connector = map.next_value::<Scalar>()?.text(),
                SourceKey::Db => s.db = map.next_value::<Scalar>()?.text(),
                SourceKey::Schema => s.schema = map.next_value::<Scalar>()?.text(),
                SourceKey::Table => s.table = map.next_value::<Scalar>()?.text(),
                SourceKey::Lsn => s.lsn = map.next_value::<Scalar>()?.unsigned(),
                SourceKey::TsMs => s.ts_ms = map.next_value::<Scalar>()?.signed(),
                SourceKey::Position(i) => position[i] = map.next_value::<Scalar>()?.scalar_text(),
                SourceKey::Private => return Err(unsure()),
                SourceKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        s.position = POSITION_FIELDS
            .iter()
            .zip(position)
            .filter_map(|((name, _), v)| Some((*name, v?)))
            .collect();
        Ok(SourceBlock(s))
    }
}

/// A `source` value as the `Value` accessors see it, without building the `Value`: a
/// string, a whole number serde_json reads as u64 or i64, or something else that is
/// none of them. Other numbers, objects and arrays are for the `Value` path.
enum Scalar {
    Text(String),
    U64(u64),
    I64(i64),
    Other,
}

impl Scalar {
    /// `Value::as_str`, owned.
    fn text(self) -> Option<String> {
        match self {
            Scalar::Text(t) => Some(t),
            _ => None,
        }
    }
    /// `Value::as_u64`.
    fn unsigned(self) -> Option<u64> {
        match self {
            Scalar::U64(n) => Some(n),
            _ => None,
        }
    }
    /// `Value::as_i64`.
    fn signed(self) -> Option<i64> {
        match self {
            Scalar::U64(n) => i64::try_from(n).ok(),
            Scalar::I64(n) => Some(n),
            _ => None,
        }
    }
    /// `event::scalar_text`.
    fn scalar_text(self) -> Option<String> {
        match self {
            Scalar::Text(t) => Some(t),
            Scalar::U64(n) => Some(n.to_string()),
            Scalar::I64(n) => Some(n.to_string()),
            Scalar::Other => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, a whole number, a boolean or null")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
}
