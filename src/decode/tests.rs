use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/debezium/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn compact(stream: &str, key: &str, value: &str) -> StreamEntry {
    StreamEntry {
        deliveries: 0,
        stream: Arc::from(stream),
        id: EntryId { ms: 1, seq: 0 },
        fields: Some(vec![(key.as_bytes().to_vec(), value.as_bytes().to_vec())]),
    }
}

/// The capture's lines as entries: `{"stream": …, "fields": {key: value}}`.
fn capture(name: &str) -> Vec<StreamEntry> {
    fixture(name)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line).expect("fixture line is JSON");
            let fields = v["fields"]
                .as_object()
                .expect("fields")
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_bytes().to_vec(),
                        v.as_str().expect("string").as_bytes().to_vec(),
                    )
                })
                .collect();
            StreamEntry {
                deliveries: 0,
                stream: Arc::from(v["stream"].as_str().expect("stream")),
                id: EntryId {
                    ms: i as u64 + 1,
                    seq: 0,
                },
                fields: Some(fields),
            }
        })
        .collect()
}

fn ops(entries: &[StreamEntry]) -> Vec<String> {
    let config = DecodeConfig::default();
    entries
        .iter()
        .map(
            |e| match decode(e, &config).expect("real Debezium events decode") {
                Decoded::Change(c) => format!("{:?}", c.op),
                Decoded::Skip(s) => s.as_str().to_string(),
            },
        )
        .collect()
}

#[test]
fn the_real_capture_decodes_with_and_without_schemas() {
    let without = capture("inventory_schemaless.jsonl");
    let with = capture("inventory_with_schemas.jsonl");
    let expected = [
        "Read",
        "Read",
        "Create",
        "Update",
        "Update",
        "Create",
        "Create",
        "Delete",
        "tombstone",
        "Create",
        "Delete",
        "tombstone",
        "Truncate",
    ];
    assert_eq!(ops(&without), expected);
    assert_eq!(ops(&with), expected);
}

#[test]
fn schemas_give_logical_types_and_both_modes_give_the_same_values() {
    let config = DecodeConfig::default();
    let with = capture("inventory_with_schemas.jsonl");
    let without = capture("inventory_schemaless.jsonl");
    let products = |entries: &[StreamEntry]| -> ChangeEvent<'static> {
        let e = entries
            .iter()
            .find(|e| e.stream.ends_with("products"))
            .expect("a products event");
        match decode(e, &config).expect("decodes") {
            Decoded::Change(c) => c.into_owned(),
            other => panic!("{other:?}"),
        }
    };
    let (a, b) = (products(&with), products(&without));
    let after = a.after.as_ref().expect("after");
    assert_eq!(
        after.get("price").and_then(|f| f.logical.clone()),
        Some(Logical::Decimal { scale: 2 })
    );
    assert_eq!(
        after.get("restock_at").and_then(|f| f.logical.clone()),
        Some(Logical::TimestampMicros)
    );
    assert_eq!(
        after.get("created_on").and_then(|f| f.logical.clone()),
        Some(Logical::Date)
    );
    assert_eq!(
        after.get("name").and_then(|f| f.logical.clone()),
        Some(Logical::Plain)
    );
    let plain = b.after.as_ref().expect("after");
    // `manual` is random text, different in each capture.
    for field in after.0.iter().filter(|f| f.name != "manual") {
        assert_eq!(
            Some(&field.value),
            plain.get(&field.name).map(|f| &f.value),
            "{}",
            field.name
        );
        assert_eq!(plain.get(&field.name).and_then(|f| f.logical.clone()), None);
    }
    assert!(
        a.source.lsn.is_some() && b.source.lsn.is_some(),
        "two captures, two LSNs"
    );
    assert_eq!(a.source.connector.as_deref(), Some("postgresql"));
    assert_eq!(
        a.key
            .as_ref()
            .and_then(|k| k.get("id"))
            .map(|f| f.value.json().into_owned()),
        Some(serde_json::json!(1))
    );
}

#[test]
fn single_event_fixtures_decode() {
    let config = DecodeConfig::default();
    let cases = [
        ("postgres_create_with_schema.json", "{\"id\":1}", Op::Create),
        (
            "postgres_snapshot_read_decimal_with_schema.json",
            "{\"id\":1}",
            Op::Read,
        ),
        (
            "postgres_create_uuid_zonedtimestamp_with_schema.json",
            "{\"id\":1}",
            Op::Create,
        ),
        ("postgres_delete_with_schema.json", "{\"id\":1}", Op::Delete),
        (
            "postgres_update_before_null_without_schema.json",
            "{\"id\":106}",
            Op::Update,
        ),
        (
            "postgres_delete_before_null_without_schema.json",
            "{\"id\":106}",
            Op::Delete,
        ),
        ("mysql_create_with_schema.json", "{\"id\":1}", Op::Create),
        ("mysql_update_without_schema.json", "{\"id\":1}", Op::Update),
        (
            "mysql_snapshot_read_timestamp_with_schema.json",
            "{\"id\":1}",
            Op::Read,
        ),
        (
            "sqlserver_delete_decimal_with_schema.json",
            "{\"id\":1}",
            Op::Delete,
        ),
    ];
    for (name, key, op) in cases {
        let value = fixture(name);
        match decode(&compact("s", key, value.trim()), &config) {
            Ok(Decoded::Change(c)) => assert_eq!(c.op, op, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // `before` and `after` both null: only the message key says which row.
    let value = fixture("postgres_delete_before_null_without_schema.json");
    let err = decode(&compact("s", "default", value.trim()), &config).expect_err("no key");
    assert!(
        err.reason
            .contains("neither a `before` image nor a message key"),
        "{err}"
    );
}

#[test]
fn bad_entries_are_errors_that_say_what_and_where() {
    let config = DecodeConfig::default();
    let cases: [(StreamEntry, &str); 7] = [
        (
            compact("s", "{\"id\":1}", "{not json"),
            "the value is not JSON",
        ),
        (compact("s", "{\"id\":1}", "[1,2]"), "not a JSON object"),
        (
            compact("s", "{\"id\":1}", "{\"after\":{}}"),
            "no `op` field",
        ),
        (
            compact("s", "{\"id\":1}", "{\"op\":\"x\",\"after\":{}}"),
            "unknown op `x`",
        ),
        (
            compact("s", "{\"id\":1}", "{\"op\":\"c\",\"after\":null}"),
            "no `after`",
        ),
        (
            compact("s", "{oops", "{\"op\":\"c\",\"after\":{\"id\":1}}"),
            "the key is not JSON",
        ),
        (
            StreamEntry {
                deliveries: 0,
                stream: Arc::from("s"),
                id: EntryId { ms: 7, seq: 1 },
                fields: Some(vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"b".to_vec(), b"2".to_vec()),
                ]),
            },
            "compact format",
        ),
    ];
    for (entry, want) in cases {
        let err = decode(&entry, &config).expect_err(want);
        assert!(err.reason.contains(want), "{want}: {err}");
        assert!(err.to_string().starts_with("stream s entry "), "{err}");
    }
    let bad_utf8 = StreamEntry {
        deliveries: 0,
        stream: Arc::from("s"),
        id: EntryId { ms: 1, seq: 0 },
        fields: Some(vec![(b"{}".to_vec(), vec![0xff, 0xfe])]),
    };
    assert!(
        decode(&bad_utf8, &config)
            .expect_err("utf8")
            .reason
            .contains("UTF-8")
    );
}

#[test]
fn recognises_what_is_not_a_row_change() {
    let config = DecodeConfig::default();
    let skip = |e: StreamEntry| match decode(&e, &config) {
        Ok(Decoded::Skip(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(skip(compact("s", "{\"id\":1}", "default")), Skip::Tombstone);
    assert_eq!(
        skip(compact("__debezium-heartbeat.db", "{}", "{\"ts_ms\":1}")),
        Skip::Heartbeat
    );
    assert_eq!(skip(compact("db", "{}", "{\"ts_ms\":1}")), Skip::Heartbeat);
    assert_eq!(
        skip(compact(
            "db",
            "{}",
            "{\"source\":{},\"databaseName\":\"db\",\"ddl\":\"create table\",\"tableChanges\":[]}"
        )),
        Skip::SchemaChange
    );
    assert_eq!(
        skip(compact(
            "db.transaction",
            "{}",
            "{\"status\":\"BEGIN\",\"id\":\"1\",\"event_count\":null,\"data_collections\":null}"
        )),
        Skip::TransactionMetadata
    );
    assert_eq!(
        skip(compact("s", "default", "{\"op\":\"m\",\"source\":{}}")),
        Skip::Message
    );
    // Flattened rows whose columns look like those messages are rows.
    for row in [
        r#"{"id":5,"status":"BEGIN"}"#,
        r#"{"id":5,"status":"END","data":1}"#,
        r#"{"id":5,"ddl":"x"}"#,
        r#"{"id":5,"op":"d"}"#,
    ] {
        let e = change(decode(&compact("s", r#"{"id":5}"#, row), &config));
        assert_eq!(e.op, Op::Create, "{row}");
        assert!(e.after.is_some_and(|a| a.get("id").is_some()), "{row}");
    }
    let deleted = StreamEntry {
        deliveries: 0,
        stream: Arc::from("s"),
        id: EntryId::ZERO,
        fields: None,
    };
    let err = decode(&deleted, &config).expect_err("deleted entries are reported");
    assert!(err.reason.contains("deleted from the stream"), "{err}");
    // A configured placeholder replaces "default".
    let custom = DecodeConfig {
        null_key: "__null__".into(),
        null_value: "__tomb__".into(),
    };
    assert_eq!(
        decode(&compact("s", "{\"id\":1}", "__tomb__"), &custom).expect("ok"),
        Decoded::Skip(Skip::Tombstone)
    );
}

#[test]
fn extended_format_is_read_by_field_name() {
    let config = DecodeConfig::default();
    let entry = StreamEntry {
        deliveries: 0,
        stream: Arc::from("s"),
        id: EntryId { ms: 1, seq: 0 },
        fields: Some(vec![
            (b"key".to_vec(), b"{\"id\":5}".to_vec()),
            (
                b"value".to_vec(),
                b"{\"op\":\"c\",\"after\":{\"id\":5},\"source\":{\"lsn\":9}}".to_vec(),
            ),
            (b"__DEBEZIUM.CONTEXT.TASKID".to_vec(), b"\"0\"".to_vec()),
        ]),
    };
    match decode(&entry, &config).expect("decodes") {
        Decoded::Change(c) => {
            assert_eq!(c.source.lsn, Some(9));
            assert_eq!(c.key.expect("key").0[0].name, "id");
        }
        other => panic!("{other:?}"),
    }
}

proptest! {
    /// Arbitrary bytes never panic the decoder: every failure is a typed error.
    #[test]
    fn never_panics_on_arbitrary_fields(fields in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..80)), 0..4)) {
        let entry = StreamEntry { stream: Arc::from("s"), id: EntryId::ZERO, fields: Some(fields), deliveries: 0 };
        let _ = decode(&entry, &DecodeConfig::default());
    }

    /// Arbitrary JSON shaped like an envelope never panics either.
    #[test]
    fn never_panics_on_envelope_like_json(op in "[cudrtmx]", before in "(null|1|\\{\\}|\\{\"id\":1\\}|\"x\")", after in "(null|1|\\{\\}|\\{\"id\":[0-9]\\}|\\[\\])", key in "(default|\\{\\}|\\{\"id\":1\\}|1|null|\\{\"schema\":null,\"payload\":null\\})") {
        let value = format!("{{\"op\":\"{op}\",\"before\":{before},\"after\":{after},\"source\":{{\"lsn\":\"x\"}}}}");
        let _ = decode(&compact("s", &key, &value), &DecodeConfig::default());
    }
}

fn change(decoded: Result<Decoded<'_>, DecodeError>) -> ChangeEvent<'static> {
    match decoded {
        Ok(Decoded::Change(e)) => e.into_owned(),
        other => panic!("expected a change, got {other:?}"),
    }
}

#[test]
fn flattened_events_from_extract_new_record_state() {
    let config = DecodeConfig::default();
    // add.fields=op,lsn,table,source.ts_ms
    let e = change(decode(
        &compact(
            "s",
            r#"{"id":1}"#,
            r#"{"id":1,"name":"a","__op":"u","__lsn":42,"__table":"items","__source_ts_ms":1700000000000}"#,
        ),
        &config,
    ));
    assert_eq!(e.op, Op::Update);
    assert_eq!(e.source.lsn, Some(42));
    assert_eq!(e.source.table.as_deref(), Some("items"));
    assert_eq!(e.source.ts_ms, Some(1_700_000_000_000));
    let after = e.after.expect("after");
    assert_eq!(
        after.0.iter().map(|f| &*f.name).collect::<Vec<_>>(),
        ["id", "name"]
    );
    // delete.handling.mode=rewrite: the before image with __deleted "true" (or true).
    for deleted in [r#""true""#, "true"] {
        let e = change(decode(
            &compact(
                "s",
                r#"{"id":1}"#,
                &format!(r#"{{"id":1,"name":"a","__deleted":{deleted}}}"#),
            ),
            &config,
        ));
        assert_eq!(e.op, Op::Delete);
        assert!(e.after.is_none());
        assert!(
            e.before
                .is_some_and(|b| b.get("id").is_some() && b.get("__deleted").is_none())
        );
    }
    let e = change(decode(
        &compact(
            "s",
            r#"{"id":2}"#,
            r#"{"id":2,"name":"b","__deleted":"false"}"#,
        ),
        &config,
    ));
    assert_eq!(e.op, Op::Create, "no __op: an upsert");
}

#[test]
fn flattened_events_with_schemas_and_malformed_ones() {
    let config = DecodeConfig::default();
    // With the JSON converter's schemas: the schema is the row struct itself.
    let e = change(decode(
        &compact(
            "s",
            r#"{"id":3}"#,
            r#"{"schema":{"type":"struct","fields":[{"field":"id","type":"int32"},{"field":"d","type":"int32","name":"io.debezium.time.Date"}]},"payload":{"id":3,"d":19000}}"#,
        ),
        &config,
    ));
    let after = e.after.expect("after");
    assert!(
        after.get("d").is_some_and(|f| f.logical.is_some()),
        "{after:?}"
    );
    // A null __lsn (incremental snapshot) cannot be versioned like the others.
    let entry = compact("s", r#"{"id":1}"#, r#"{"id":1,"__lsn":null}"#);
    let err = decode(&entry, &config);
    assert!(err.is_err_and(|e| e.reason.contains("null __lsn")));
    // With a schema that is not an envelope, `source` is just a column.
    let e = change(decode(
        &compact(
            "s",
            r#"{"id":4}"#,
            r#"{"schema":{"type":"struct","name":"t.Value","fields":[{"field":"id","type":"int32"},{"field":"source","type":"string"}]},"payload":{"id":4,"source":"web"}}"#,
        ),
        &config,
    ));
    assert!(e.after.is_some_and(|a| a.get("source").is_some()));
    // Only metadata: not a row.
    assert!(decode(&compact("s", r#"{"id":1}"#, r#"{"__op":"c"}"#), &config).is_err());
    assert!(
        decode(
            &compact("s", r#"{"id":1}"#, r#"{"id":1,"__op":"x"}"#),
            &config
        )
        .is_err()
    );
}

/// A value with no envelope fields, no `__` metadata and no schema is taken for a row
/// flattened with ExtractNewRecordState's defaults, marked bare: map says it may be no
/// Debezium event when it does not fit the table.
#[test]
fn a_value_without_envelope_or_flattening_markers_is_bare() {
    let config = DecodeConfig::default();
    let bare = |value: &str| change(decode(&compact("s", r#"{"id":1}"#, value), &config)).bare;
    assert!(bare(r#"{"foo":1,"bar":[1,2]}"#));
    assert!(!bare(r#"{"id":1,"__op":"c"}"#), "a metadata field");
    assert!(!bare(r#"{"id":1,"__deleted":"false"}"#), "a metadata field");
    assert!(
        !bare(
            r#"{"schema":{"type":"struct","name":"t.Value","fields":[{"field":"id","type":"int32"}]},"payload":{"id":1}}"#
        ),
        "a row schema"
    );
    assert!(
        !bare(&fixture("postgres_update_before_null_without_schema.json")),
        "an envelope"
    );
}

/// Schema evolution: a wanted field whose type has no PostgreSQL type is an error
/// naming it and its type, not a column left out.
#[test]
fn a_declared_type_that_is_no_type_is_an_error_naming_the_column() {
    let value = r#"{"schema":{"type":"struct","name":"t.Value","fields":[{"field":"id","type":"int32"},{"field":"bar","type":"strin"}]},"payload":{"id":1,"bar":"x"}}"#;
    let e = change(decode(
        &compact("s", r#"{"id":1}"#, value),
        &DecodeConfig::default(),
    ));
    let err = e.declared.columns(|_| true).expect_err("no such type");
    assert!(
        err.contains("column bar") && err.contains("`strin`"),
        "{err}"
    );
    let columns = e
        .declared
        .columns(|f| f != "bar")
        .expect("bar is not wanted");
    assert_eq!(columns.len(), 1);
    assert_eq!(columns[0].sql_type, "integer");
}
