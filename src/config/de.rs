//! Serde helpers for values that come from TOML or, as strings, from the environment:
//! durations (`"50ms"`), whole numbers and comma-separated lists.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write for example \"50ms\" or \"2s\""
        ))
    })
}

/// A list of strings from TOML, or one comma-separated string from the environment.
/// A list's items as strings; a wrong one is named by its index (serde alone would
/// name only the list).
fn strings<E: serde::de::Error>(items: Vec<toml::Value>) -> Result<Vec<String>, E> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            toml::Value::String(s) => Ok(s),
            other => Err(E::custom(format!(
                "item [{i}] is {} `{other}`, not a string",
                other.type_str()
            ))),
        })
        .collect()
}

/// A list of strings (see [`strings`]).
pub(super) fn de_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    strings(Vec::<toml::Value>::deserialize(d)?)
}

pub(super) fn de_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<toml::Value>),
        Text(String),
    }
    Ok(match ListOrText::deserialize(d)? {
        ListOrText::List(items) => strings(items)?,
        ListOrText::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Numbers may come from TOML (an integer) or from the environment (a string).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

pub(super) fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(n),
        NumOrText::Text(t) => t
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{t}` is not a whole number"))),
    }
}
pub(super) fn de_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    usize::try_from(de_u64(d)?).map_err(serde::de::Error::custom)
}
pub(super) fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    u32::try_from(de_u64(d)?).map_err(serde::de::Error::custom)
}
