//! The fast path agrees with the `Value` path: on the real events of the fixtures, and
//! on generated envelopes with every shape that could tell them apart (keys in any
//! order, twice, unknown, of unexpected types; the schema wrapper; big numbers).

use proptest::prelude::*;

use super::decode as fast;
use crate::config::DecodeConfig;
use crate::decode::{Decoded, Op, decode_value};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/debezium/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The fast path's answer, when it gives one, is the `Value` path's; returns whether it
/// gave one.
fn agrees(key: &str, value: &str) -> bool {
    let config = DecodeConfig::default();
    match fast(key, value, &config) {
        Some(decoded) => {
            assert_eq!(
                Ok(decoded),
                decode_value(key, value, &config),
                "{key} {value}"
            );
            true
        }
        None => false,
    }
}

#[test]
fn captured_events_take_the_fast_path_with_the_same_result() {
    for name in ["inventory_schemaless.jsonl", "inventory_with_schemas.jsonl"] {
        let mut taken = 0;
        let text = fixture(name);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("fixture line is JSON");
            for (key, value) in v["fields"].as_object().expect("fields") {
                let value = value.as_str().expect("string");
                let is_change = serde_json::from_str::<serde_json::Value>(value)
                    .ok()
                    .and_then(|v| {
                        let payload = v.get("payload").cloned().unwrap_or(v);
                        payload
                            .get("op")
                            .and_then(|o| o.as_str())
                            .map(str::to_string)
                    })
                    .is_some();
                let took = agrees(key, value);
                assert_eq!(took, is_change, "{name}: {value}");
                taken += usize::from(took);
            }
        }
        assert!(taken >= 5, "{name}: {taken} events took the fast path");
    }
}

#[test]
fn single_event_fixtures_take_the_fast_path_with_the_same_result() {
    for (name, key) in [
        ("postgres_create_with_schema.json", "{\"id\":1}"),
        (
            "postgres_snapshot_read_decimal_with_schema.json",
            "{\"id\":1}",
        ),
        (
            "postgres_create_uuid_zonedtimestamp_with_schema.json",
            "{\"id\":1}",
        ),
        ("postgres_delete_with_schema.json", "{\"id\":1}"),
        (
            "postgres_update_before_null_without_schema.json",
            "{\"id\":106}",
        ),
        (
            "postgres_delete_before_null_without_schema.json",
            "{\"id\":106}",
        ),
        ("mysql_create_with_schema.json", "{\"id\":1}"),
        ("mysql_update_without_schema.json", "{\"id\":1}"),
        (
            "mysql_snapshot_read_timestamp_with_schema.json",
            "{\"id\":1}",
        ),
        ("sqlserver_delete_decimal_with_schema.json", "{\"id\":1}"),
        (
            "postgres_snapshot_read_decimal_enum_array_with_schema.json",
            &fixture("postgres_snapshot_read_decimal_enum_array_with_schema.key.json"),
        ),
        (
            "sqlserver_delete_decimal_with_schema.json",
            &fixture("sqlserver_delete_decimal_with_schema.key.json"),
        ),
    ] {
        assert!(agrees(key.trim(), fixture(name).trim()), "{name}");
    }
}

#[test]
fn what_it_is_not_sure_of_goes_to_the_value_path() {
    let config = DecodeConfig::default();
    for value in [
        r#"{"op":"c","op":"c","after":{"id":1}}"#,
        r#"{"op":1,"after":{"id":1}}"#,
        r#"{"op":"x","after":{"id":1}}"#,
        r#"{"op":"c","after":null}"#,
        r#"{"op":"c","after":{"id":1},"source":1}"#,
        r#"{"op":"c","after":{"id":1},"transaction":{"id":""}}"#,
        r#"{"id":1,"name":"flattened"}"#,
        r#"{"schema":{},"payload":{"op":"c","after":{"id":1}},"op":"c"}"#,
        r#"{"op":"c","after":{"$serde_json::private::Number":"1"}}"#,
        r#"[1]"#,
        r#"{"op":"c","after":{"id":1}} x"#,
    ] {
        assert_eq!(fast("{\"id\":1}", value, &config), None, "{value}");
    }
    // A key twice in a row keeps the last, as a serde_json Map does.
    assert!(agrees(
        "{\"id\":1,\"id\":2}",
        r#"{"op":"u","after":{"b":1,"a":2,"b":3}}"#
    ));
}

/// One JSON member `"name":value`.
fn member(name: &str, value: &str) -> String {
    format!("\"{name}\":{value}")
}

fn object(members: &[String]) -> String {
    format!("{{{}}}", members.join(","))
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        "-?[0-9]{1,25}(\\.[0-9]{1,5})?(e[0-9])?",
        "\"[a-z:0-9]{0,6}\"",
        Just("\"x\\u00e9\\\"y\"".to_string()),
        Just("[1,\"a\",{\"b\":null}]".to_string()),
        Just("{\"z\":1.50,\"a\":[]}".to_string()),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-e]{1,2}",
        Just("id".to_string()),
        Just("schema".to_string()),
        Just("payload".to_string()),
        Just("__op".to_string()),
    ]
}

fn row() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => proptest::collection::vec((name(), scalar()), 0..5)
            .prop_map(|fields| object(&fields.iter().map(|(n, v)| member(n, v)).collect::<Vec<_>>())),
        1 => scalar(),
    ]
}

fn source() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("connector"),
        Just("db"),
        Just("schema"),
        Just("table"),
        Just("lsn"),
        Just("ts_ms"),
        Just("file"),
        Just("pos"),
        Just("change_lsn"),
        Just("version"),
    ];
    prop_oneof![
        4 => proptest::collection::vec((key, scalar()), 0..6)
            .prop_map(|m| object(&m.iter().map(|(n, v)| member(n, v)).collect::<Vec<_>>())),
        1 => scalar(),
    ]
}

fn transaction() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just(r#"{"id":"571:53195829","total_order":1,"data_collection_order":1}"#.to_string()),
        Just(r#"{"id":"tx","total_order":"1"}"#.to_string()),
        scalar(),
    ]
}

/// An envelope-like value: some of the members, in any order, maybe one twice, maybe
/// wrapped with a schema.
fn envelope() -> impl Strategy<Value = String> {
    let op = prop_oneof![
        4 => "\"[cudrtm]\"",
        1 => "\"[a-z]{0,2}\"",
        1 => scalar(),
    ];
    let members = (op, row(), row(), source(), transaction(), scalar()).prop_map(
        |(op, before, after, source, tx, ts)| {
            vec![
                member("op", &op),
                member("before", &before),
                member("after", &after),
                member("source", &source),
                member("transaction", &tx),
                member("ts_ms", &ts),
            ]
        },
    );
    let picked = (
        members,
        proptest::collection::vec(any::<bool>(), 6),
        0..8usize,
    )
        .prop_map(|(all, keep, twice)| {
            let mut m: Vec<String> = all
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(m, _)| m.clone())
                .collect();
            if let Some(extra) = all.get(twice) {
                m.push(extra.clone());
            }
            m
        })
        .prop_shuffle();
    let schema = prop_oneof![
        Just(None),
        Just(Some("null".to_string())),
        Just(Some(r#"{"type":"struct","name":"s.Envelope","fields":[{"field":"after","type":"struct","fields":[{"field":"a","type":"int32","name":"io.debezium.time.Date"}]}]}"#.to_string())),
        Just(Some(r#"{"type":"struct","name":"s.Value"}"#.to_string())),
    ];
    (picked, schema).prop_map(|(members, schema)| {
        let payload = object(&members);
        match schema {
            None => payload,
            Some(s) => object(&[member("schema", &s), member("payload", &payload)]),
        }
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("default".to_string()),
        Just("null".to_string()),
        Just("{\"id\":1}".to_string()),
        Just("{\"id\":1,\"id\":2}".to_string()),
        Just("{\"b\":1,\"a\":\"x\"}".to_string()),
        Just(r#"{"schema":{"fields":[{"field":"id","type":"int32","name":"io.debezium.time.Date"}]},"payload":{"id":3}}"#.to_string()),
        Just("{\"schema\":null,\"payload\":null}".to_string()),
        Just("1".to_string()),
        Just("{".to_string()),
    ]
}

proptest! {
    // About one generated event in 16 takes the fast path: many cases.
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the fast path answers, the `Value` path answers the same.
    #[test]
    fn the_fast_path_agrees_with_the_value_path(key in key(), value in envelope()) {
        agrees(&key, &value);
    }

    /// A typical event with one byte cut, doubled or replaced (often no JSON any more):
    /// the fast path answers only what the `Value` path answers the same.
    #[test]
    fn a_damaged_event_is_never_taken_for_another(
        at in 0..TYPICAL.len(),
        edit in 0..3_u8,
        byte in prop::sample::select(b" \t\n\"\\,:{}[]01-.eE+nul\x01a/".to_vec()),
    ) {
        let mut bytes = TYPICAL.as_bytes().to_vec();
        match edit {
            0 => { bytes.remove(at); }
            1 => bytes.insert(at, byte),
            _ => bytes[at] = byte,
        }
        if let Ok(value) = String::from_utf8(bytes) {
            agrees("{\"id\":7}", &value);
        }
    }
}

/// An event with every kind of member the fast path reads.
const TYPICAL: &str = r#"{"before":{"id":7,"s":"a\"b"},"after":{"id":7,"n":-12.5e3,"t":"x\u00e9","a":[1,{"b":null}],"o":{"k":true},"z":-0,"f":false},"source":{"connector":"postgresql","lsn":42,"ts_ms":-5,"sequence":"[\"1\",\"2\"]","xmin":null,"v":[1]},"op":"u","ts_ms":6,"transaction":{"id":"1:2","total_order":1}}"#;

#[test]
fn the_damage_test_s_event_takes_the_fast_path() {
    assert!(agrees("{\"id\":7}", TYPICAL));
}

#[test]
fn a_typical_envelope_takes_the_fast_path() {
    let value = r#"{"before":null,"after":{"id":7,"n":12345678901234567890.10},"source":{"connector":"postgresql","lsn":42,"ts_ms":5,"sequence":"[\"1\",\"2\"]"},"op":"c","ts_ms":6,"transaction":null}"#;
    assert!(agrees("{\"id\":7}", value));
    let Some(Decoded::Change(c)) = fast("{\"id\":7}", value, &DecodeConfig::default()) else {
        panic!("a change");
    };
    assert_eq!(c.op, Op::Create);
    assert_eq!(c.source.position("sequence"), Some("[\"1\",\"2\"]"));
    let after = c.after.expect("after");
    assert_eq!(
        after.get("n").expect("n").value.json().to_string(),
        "12345678901234567890.10"
    );
}

#[test]
fn scalars_stay_as_read_and_the_rest_becomes_values() {
    use crate::decode::FieldValue;
    let value = r#"{"op":"c","after":{"s":"plain","e":"tab\tbed","u":7,"i":-7,"z":-0,"b":true,"n":null,"f":1.5,"big":123456789012345678901234,"o":{"a":1}},"source":{}}"#;
    let Some(Decoded::Change(c)) = fast("{\"u\":7}", value, &DecodeConfig::default()) else {
        panic!("a change");
    };
    let after = c.after.expect("after");
    let get = |name: &str| after.get(name).expect(name).value.clone();
    assert_eq!(get("s"), FieldValue::Str("plain"));
    assert!(matches!(get("s"), FieldValue::Str("plain")), "borrowed");
    assert!(matches!(get("e"), FieldValue::Json(_)), "unescaped, owned");
    assert!(matches!(get("u"), FieldValue::U64(7)));
    assert!(matches!(get("i"), FieldValue::I64(-7)));
    for name in ["z", "b", "n", "f", "big", "o"] {
        assert!(matches!(get(name), FieldValue::Json(_)), "{name}");
    }
    assert!(agrees("{\"u\":7}", value));
}
