//! A column's values as one array in Postgres' binary format, for the column types whose
//! text Postgres spends most time parsing (integers, `numeric`, `date`, `timestamp`,
//! `timestamptz`, `boolean`): an `UNNEST` of text arrays cast to those types spent about
//! a third of the statement's time in the casts (4,096 rows of the benchmark's
//! `orders`: 50–60 ms with text arrays, 33–41 ms with typed ones, pgbench on this
//! machine). A column goes in binary only when every value of the group reads exactly as
//! Postgres would read its text ([`parse`]); otherwise it goes as text, as before, and
//! Postgres parses (or rejects) it itself. Pure: no I/O.

mod parse;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, Postgres};

use crate::map::Column;

/// A column type sent in binary: its element's and its array's OIDs, the array's name
/// in a cast, and how a text becomes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    Bool,
    Int2,
    Int4,
    Int8,
    Numeric,
    Date,
    Timestamp,
    TimestampTz,
}

impl Element {
    /// By the column's SQL type as `format_type` spells it (never a domain or a type of
    /// the same name in another schema, which it would qualify or quote); not arrays.
    fn of(column: &Column) -> Option<Self> {
        if column.is_array {
            return None;
        }
        Some(match column.sql_type.as_str() {
            "boolean" => Self::Bool,
            "smallint" => Self::Int2,
            "integer" => Self::Int4,
            "bigint" => Self::Int8,
            "numeric" => Self::Numeric,
            "date" => Self::Date,
            "timestamp without time zone" => Self::Timestamp,
            "timestamp with time zone" => Self::TimestampTz,
            _ => return None,
        })
    }

    /// (element OID, array OID, the array type in a cast).
    fn types(self) -> (u32, u32, &'static str) {
        match self {
            Self::Bool => (16, 1000, "bool[]"),
            Self::Int2 => (21, 1005, "int2[]"),
            Self::Int4 => (23, 1007, "int4[]"),
            Self::Int8 => (20, 1016, "int8[]"),
            Self::Numeric => (1700, 1231, "numeric[]"),
            Self::Date => (1082, 1182, "date[]"),
            Self::Timestamp => (1114, 1115, "timestamp[]"),
            Self::TimestampTz => (1184, 1185, "timestamptz[]"),
        }
    }

    fn push(self, text: &str, out: &mut Vec<u8>) -> bool {
        match self {
            Self::Bool => parse::bool(text, out),
            Self::Int2 => parse::int(text, 2, out),
            Self::Int4 => parse::int(text, 4, out),
            Self::Int8 => parse::int(text, 8, out),
            Self::Numeric => parse::numeric(text, out),
            Self::Date => parse::date(text, out),
            Self::Timestamp => parse::timestamp(text, false, out),
            Self::TimestampTz => parse::timestamp(text, true, out),
        }
    }
}

/// A one-dimensional array in Postgres' binary format, bound as a parameter of its
/// array type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryArray {
    array_oid: u32,
    /// The array type in a cast (`int8[]`), for the statement's `$n::int8[]`.
    pub cast: &'static str,
    bytes: Vec<u8>,
}

/// `values` as one binary array of `column`'s type, or `None` when the column's type is
/// not sent in binary or a value is not read with certainty (then the column goes as
/// text). `None` values are SQL NULLs.
pub fn column_array<'a>(
    column: &Column,
    values: impl ExactSizeIterator<Item = Option<&'a str>>,
) -> Option<BinaryArray> {
    let element = Element::of(column)?;
    let (element_oid, array_oid, cast) = element.types();
    let len = i32::try_from(values.len()).ok()?;
    // Header: dimensions (none when empty), has-nulls flag (patched below), element
    // type, then the dimension's length and lower bound.
    let mut bytes = Vec::with_capacity(20 + values.len() * 12);
    let header: &[i32] = if len == 0 {
        &[0, 0, 0]
    } else {
        &[1, 0, 0, len, 1]
    };
    for word in header {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    bytes[8..12].copy_from_slice(&element_oid.to_be_bytes());
    let mut has_null = false;
    for value in values {
        let Some(text) = value else {
            has_null = true;
            bytes.extend_from_slice(&(-1_i32).to_be_bytes());
            continue;
        };
        let at = bytes.len();
        bytes.extend_from_slice(&[0; 4]);
        if !element.push(text, &mut bytes) {
            return None;
        }
        let size = i32::try_from(bytes.len() - at - 4).ok()?;
        bytes[at..at + 4].copy_from_slice(&size.to_be_bytes());
    }
    bytes[4..8].copy_from_slice(&i32::from(has_null).to_be_bytes());
    Some(BinaryArray {
        array_oid,
        cast,
        bytes,
    })
}

impl sqlx::Type<Postgres> for BinaryArray {
    /// Never asked: each value reports its own array type ([`sqlx::Encode::produces`]).
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(1009))
    }
}

impl sqlx::Encode<'_, Postgres> for BinaryArray {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.bytes);
        Ok(IsNull::No)
    }

    fn produces(&self) -> Option<PgTypeInfo> {
        Some(PgTypeInfo::with_oid(Oid(self.array_oid)))
    }

    fn size_hint(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::ColumnType;

    fn column(sql_type: &str, is_array: bool) -> Column {
        Column {
            name: "c".into(),
            sql_type: sql_type.into(),
            ty: ColumnType {
                name: String::new(),
                scale: None,
                precision: None,
            },
            is_array,
        }
    }

    #[test]
    fn an_array_has_postgres_header_and_length_prefixed_elements() {
        let values = [Some("1"), None, Some("-2")];
        let array = column_array(&column("integer", false), values.into_iter())
            .expect("integers are taken");
        let words: Vec<i32> = array
            .bytes
            .chunks(4)
            .map(|w| i32::from_be_bytes(w.try_into().expect("4 bytes")))
            .collect();
        assert_eq!(words, [1, 1, 23, 3, 1, 4, 1, -1, 4, -2]);
        assert_eq!((array.array_oid, array.cast), (1007, "int4[]"));
    }

    #[test]
    fn a_column_goes_as_text_unless_every_value_is_certain() {
        let int8 = column("bigint", false);
        assert!(column_array(&int8, [Some("1"), Some("2")].into_iter()).is_some());
        assert!(column_array(&int8, [Some("1"), Some(" 2")].into_iter()).is_none());
        for other in [
            column("text", false),
            column("bigint", true),
            column("money", false),
        ] {
            assert!(column_array(&other, [Some("1")].into_iter()).is_none());
        }
    }
}
