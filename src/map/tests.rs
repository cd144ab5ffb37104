use std::sync::Arc;

use serde_json::json;

use super::version::position_parts;
use super::*;
use crate::config::{MappingConfig, VersionSource};
use crate::decode::{ChangeEvent, Field, FieldValue, Op, Row, Source};
use crate::entry::EntryId;

pub(super) fn table() -> Arc<TableSchema> {
    let col = |n: &str, ty: &str| Column {
        name: n.into(),
        sql_type: ty.into(),
        ty: ColumnType {
            name: ty.into(),
            scale: Some(2),
            precision: None,
        },
        is_array: false,
    };
    Arc::new(TableSchema {
        name: TableName::parse("public.items").expect("valid"),
        columns: vec![
            col("id", "int4"),
            col("name", "text"),
            col("price", "numeric"),
        ],
        unique_keys: vec![vec![0]],
    })
}

pub(super) fn mapping(extra: &str) -> Mapping {
    let config: MappingConfig = toml::from_str(&format!(
        "streams = [\"s:{{0..1}}\", \"db.*\"]\ntable = \"public.items\"\n{extra}"
    ))
    .expect("mapping toml");
    Mapping::compile(0, &config).expect("compiles")
}

fn row(fields: serde_json::Value) -> Row<'static> {
    Row(fields
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| Field {
            name: k.clone().into(),
            value: FieldValue::Json(v.clone()),
            logical: None,
        })
        .collect())
}

pub(super) fn event(
    op: Op,
    key: Option<serde_json::Value>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> ChangeEvent<'static> {
    ChangeEvent {
        op,
        key: key.map(row),
        before: before.map(row),
        after: after.map(row),
        source: Source {
            connector: Some("postgresql".into()),
            lsn: Some(42),
            ..Source::default()
        },
        declared: Default::default(),
        bare: false,
        transaction: None,
    }
}

pub(super) const ID: EntryId = EntryId { ms: 5, seq: 1 };

#[test]
fn maps_an_upsert_to_text_values_and_a_key() {
    let ev = event(
        Op::Create,
        Some(json!({"id": 1})),
        None,
        Some(json!({"id": 1, "name": "x", "price": "B88="})),
    );
    let change = map_event(&mapping(""), &ev, ID, &table()).expect("maps");
    assert_eq!(change.key_columns, vec![0]);
    assert_eq!(change.key_text, "[\"1\"]");
    assert_eq!(change.version, Version::from_lsn(42, Version::OP_UPSERT));
    assert_eq!(
        change.op,
        RowOp::Upsert {
            columns: vec![0, 1, 2],
            values: [Some("1"), Some("x"), Some("19.99")].into_iter().collect()
        }
    );
}

#[test]
fn unchanged_toasted_columns_are_left_out() {
    let ev = event(
        Op::Update,
        Some(json!({"id": 1})),
        None,
        Some(json!({"id": 1, "name": UNAVAILABLE_VALUE})),
    );
    let change = map_event(&mapping(""), &ev, ID, &table()).expect("maps");
    let RowOp::Upsert { columns, .. } = change.op else {
        panic!("upsert")
    };
    assert_eq!(columns, vec![0]);
}

#[test]
fn a_delete_takes_its_key_from_the_message_key_or_before() {
    let from_key = event(Op::Delete, Some(json!({"id": 7})), None, None);
    let change = map_event(&mapping(""), &from_key, ID, &table()).expect("maps");
    assert_eq!(
        change.op,
        RowOp::Delete {
            key_values: vec!["7".into()]
        }
    );
    assert_eq!(change.key_text, "[\"7\"]");
    let from_before = event(Op::Delete, None, Some(json!({"id": 8, "name": null})), None);
    let change = map_event(&mapping("key = [\"id\"]"), &from_before, ID, &table()).expect("maps");
    assert_eq!(
        change.op,
        RowOp::Delete {
            key_values: vec!["8".into()]
        }
    );
}

/// A bare value (no envelope, no `__` fields) whose fields are no columns may be no
/// Debezium event at all: the reason says so.
#[test]
fn an_unknown_column_of_a_bare_value_says_it_may_be_no_debezium_event() {
    let bare = ChangeEvent {
        bare: true,
        transaction: None,
        ..event(
            Op::Create,
            Some(json!({"id": 1})),
            None,
            Some(json!({"foo": 1, "bar": [1, 2]})),
        )
    };
    let err = map_event(&mapping(""), &bare, ID, &table()).expect_err("unknown column");
    assert!(
        matches!(err, MapError::UnknownColumn(_)),
        "the catalog is read again first"
    );
    let err = err.to_string();
    assert!(
        err.contains("neither a Debezium envelope") && err.contains("column bar"),
        "{err}"
    );
}

#[test]
fn errors_name_the_table_and_column() {
    let unknown = event(
        Op::Create,
        Some(json!({"id": 1})),
        None,
        Some(json!({"id": 1, "colour": "red"})),
    );
    let err = map_event(&mapping(""), &unknown, ID, &table())
        .expect_err("unknown column")
        .to_string();
    assert!(err.contains("table public.items column colour"), "{err}");
    let ignored = map_event(
        &mapping("ignore_unknown_columns = true"),
        &unknown,
        ID,
        &table(),
    );
    assert!(ignored.is_ok());
    let mismatch = event(
        Op::Create,
        Some(json!({"id": 1})),
        None,
        Some(json!({"id": "one"})),
    );
    let err = map_event(&mapping(""), &mismatch, ID, &table())
        .expect_err("type")
        .to_string();
    assert!(
        err.contains("column id") && err.contains("not a whole number"),
        "{err}"
    );

    let no_key = event(Op::Create, None, None, Some(json!({"id": 1})));
    let err = map_event(&mapping(""), &no_key, ID, &table())
        .expect_err("no key")
        .to_string();
    assert!(err.contains("mapping.key"), "{err}");

    let wrong_key =
        map_event(&mapping("key = [\"name\"]"), &no_key, ID, &table()).expect_err("not unique");
    assert!(matches!(wrong_key, MapError::Table { .. }), "{wrong_key}");

    let mut no_lsn = event(
        Op::Create,
        Some(json!({"id": 1})),
        None,
        Some(json!({"id": 1})),
    );
    no_lsn.source.lsn = None;
    let err = map_event(&mapping(""), &no_lsn, ID, &table())
        .expect_err("no lsn")
        .to_string();
    assert!(err.contains("entry_id"), "{err}");
    let by_id =
        map_event(&mapping("version = \"entry_id\""), &no_lsn, ID, &table()).expect("entry id");
    assert_eq!(
        by_id.version,
        Version::from_entry_id(ID, Version::OP_UPSERT)
    );
}

#[test]
fn versions_order_numerically_as_bytes_then_delete_before_upsert() {
    let (d, u) = (Version::OP_DELETE, Version::OP_UPSERT);
    assert!(Version::from_lsn(255, u) < Version::from_lsn(256, d));
    assert!(Version::from_lsn(7, d) < Version::from_lsn(7, u));
    assert!(
        Version::from_entry_id(EntryId { ms: 9, seq: 9 }, u)
            < Version::from_entry_id(EntryId { ms: 10, seq: 0 }, d)
    );
}

fn wide_table() -> Arc<TableSchema> {
    let col = |n: &str, ty: &str| Column {
        name: n.into(),
        sql_type: ty.into(),
        ty: ColumnType {
            name: ty.into(),
            scale: None,
            precision: None,
        },
        is_array: false,
    };
    Arc::new(TableSchema {
        name: TableName::parse("public.items").expect("valid"),
        columns: vec![
            col("item_id", "int4"),
            col("title", "text"),
            col("region", "text"),
            col("synced_at", "timestamptz"),
            col("deleted_at", "timestamptz"),
        ],
        unique_keys: vec![vec![0]],
    })
}

fn upsert(change: &RowChange) -> Vec<(String, Option<String>)> {
    let RowOp::Upsert { columns, values } = &change.op else {
        panic!("expected an upsert: {change:?}");
    };
    columns
        .iter()
        .zip(values.iter())
        .map(|(c, v)| (change.table.columns[*c].name.clone(), v.map(str::to_string)))
        .collect()
}

#[test]
fn columns_are_renamed_filtered_and_filled_from_the_event() {
    let m = mapping(
        "[columns]\nexclude = [\"secret\"]\nrename = { id = \"item_id\", name = \"title\" }\n\
         fixed = { region = \"eu\" }\nfrom_event = { synced_at = \"source.ts_ms\" }\n",
    );
    let mut e = event(
        Op::Create,
        Some(json!({"id": 1})),
        None,
        Some(json!({"id": 1, "name": "a", "secret": "x"})),
    );
    e.source.ts_ms = Some(1_700_000_000_123);
    e.source.connector = Some("postgresql".into());
    e.source.lsn = Some(5);
    let change = map_event(&m, &e, EntryId { ms: 1, seq: 0 }, &wide_table()).expect("maps");
    assert_eq!(
        upsert(&change),
        vec![
            ("item_id".into(), Some("1".into())),
            ("title".into(), Some("a".into())),
            ("region".into(), Some("eu".into())),
            ("synced_at".into(), Some("2023-11-14T22:13:20.123Z".into())),
        ]
    );
    assert_eq!(
        change.key_text, r#"["1"]"#,
        "the key is found under its new name"
    );
    // include: only these fields.
    let m = mapping("[columns]\ninclude = [\"id\"]\nrename = { id = \"item_id\" }\n");
    let change = map_event(&m, &e, EntryId { ms: 1, seq: 0 }, &wide_table()).expect("maps");
    assert_eq!(upsert(&change), vec![("item_id".into(), Some("1".into()))]);
    // An unknown attribute is a config error.
    let config: MappingConfig = toml::from_str(
        "streams = [\"s\"]\ntable = \"t\"\n[columns]\nfrom_event = { x = \"source.nope\" }\n",
    )
    .expect("toml");
    assert!(Mapping::compile(0, &config).is_err_and(|e| e.contains("source.nope")));
}

#[test]
fn soft_deletes_set_the_column_and_creates_clear_it() {
    let m = mapping(
        "delete = \"soft\"\nsoft_delete_column = \"deleted_at\"\n[columns]\nrename = { id = \"item_id\", name = \"title\" }\n",
    );
    let mut d = event(
        Op::Delete,
        Some(json!({"id": 1})),
        Some(json!({"id": 1, "name": "a"})),
        None,
    );
    d.source.ts_ms = Some(1_700_000_000_000);
    d.source.connector = Some("postgresql".into());
    d.source.lsn = Some(9);
    let change = map_event(&m, &d, EntryId { ms: 1, seq: 0 }, &wide_table()).expect("maps");
    assert_eq!(
        upsert(&change),
        vec![
            ("item_id".into(), Some("1".into())),
            ("title".into(), Some("a".into())),
            ("deleted_at".into(), Some("2023-11-14T22:13:20.000Z".into())),
        ],
        "a full `before` image (REPLICA IDENTITY FULL) is the row as deleted"
    );
    // The default identity: `before` has the key only; the other columns are left alone.
    let mut key_only = d.clone();
    key_only.before = Some(row(json!({"id": 1, "name": null})));
    let change = map_event(&m, &key_only, EntryId { ms: 1, seq: 0 }, &wide_table()).expect("maps");
    assert_eq!(
        upsert(&change),
        vec![
            ("item_id".into(), Some("1".into())),
            ("deleted_at".into(), Some("2023-11-14T22:13:20.000Z".into())),
        ]
    );
    assert_eq!(change.version, Version::from_lsn(9, Version::OP_DELETE));
    let mut c = event(
        Op::Create,
        Some(json!({"id": 1})),
        None,
        Some(json!({"id": 1, "name": "b"})),
    );
    c.source.connector = Some("postgresql".into());
    c.source.lsn = Some(10);
    let change = map_event(&m, &c, EntryId { ms: 1, seq: 0 }, &wide_table()).expect("maps");
    assert!(upsert(&change).contains(&("deleted_at".into(), None)));
    // soft needs its column; ignore refuses to map a delete.
    let config: MappingConfig =
        toml::from_str("streams = [\"s\"]\ntable = \"t\"\ndelete = \"soft\"\n").expect("toml");
    assert!(Mapping::compile(0, &config).is_err_and(|e| e.contains("soft_delete_column")));
    let m = mapping("delete = \"ignore\"\n");
    assert!(map_event(&m, &d, EntryId { ms: 1, seq: 0 }, &table()).is_err());
}

fn source_with(connector: &str, fields: &[(&'static str, &str)], ts_ms: Option<i64>) -> Source {
    Source {
        connector: Some(connector.into()),
        ts_ms,
        position: fields.iter().map(|(n, v)| (*n, (*v).to_string())).collect(),
        ..Source::default()
    }
}

/// The version of an update from `s`, with the position scheme of its connector.
fn position_version(s: &Source) -> Result<Version, &'static str> {
    let version = match s.connector.as_deref() {
        Some("mysql") => "mysql.binlog",
        Some("sqlserver") => "sqlserver.lsn",
        Some("oracle") => "oracle.scn",
        _ => "mongodb.ord",
    };
    let m = mapping(&format!("version = \"{version}\"\n"));
    position_parts(m.scheme(&event_with(s.clone())), s)
        .map(|p| Version::from_parts(&p, Version::OP_UPSERT))
}

fn mysql(file: &str, pos: &str, row: &str) -> Result<Version, &'static str> {
    position_version(&source_with(
        "mysql",
        &[("file", file), ("pos", pos), ("row", row)],
        None,
    ))
}

fn sqlserver(commit: &str, change: &str, serial: &str) -> Result<Version, &'static str> {
    position_version(&source_with(
        "sqlserver",
        &[
            ("commit_lsn", commit),
            ("change_lsn", change),
            ("event_serial_no", serial),
        ],
        None,
    ))
}

#[test]
fn connector_positions_order_like_the_source_log() {
    let (my, ms) = (mysql, sqlserver);
    // MySQL: file number first, then pos, then row.
    assert!(my("mysql-bin.000003", "154", "0") < my("mysql-bin.000003", "154", "1"));
    assert!(my("mysql-bin.000003", "999", "9") < my("mysql-bin.000004", "4", "0"));
    // SQL Server: commit LSN, change LSN, event serial number (hex LSN parts).
    let a = ms("0000003a:00002f50:0005", "0000003a:00002f50:0002", "1");
    assert!(a < ms("0000003a:00002f50:0005", "0000003a:00002f50:0002", "2"));
    assert!(a < ms("0000003a:0000ff00:0001", "0000003a:00002f50:0001", "1"));
    assert!(a < ms("0000003b:00000000:0000", "00000001:00000000:0000", "1"));
    // Oracle: commit SCN, then SCN; MongoDB: ts_ms, then ord.
    let ora = |commit: &str, scn: &str| {
        position_version(&source_with(
            "oracle",
            &[("commit_scn", commit), ("scn", scn)],
            None,
        ))
    };
    assert!(ora("100", "90") < ora("100", "95") && ora("100", "95") < ora("101", "10"));
    let mongo =
        |ts: i64, ord: &str| position_version(&source_with("mongodb", &[("ord", ord)], Some(ts)));
    assert!(mongo(1000, "2") < mongo(1000, "3") && mongo(1000, "9") < mongo(2000, "1"));
}

#[test]
fn snapshot_rows_sequences_and_malformed_positions() {
    let (my, ms) = (mysql, sqlserver);
    let a = ms("0000003a:00002f50:0005", "0000003a:00002f50:0002", "1");
    // A snapshot row has no change_lsn: it sorts before the streamed changes.
    let snapshot = position_version(&source_with(
        "sqlserver",
        &[("commit_lsn", "0000003a:00002f50:0005")],
        None,
    ));
    assert!(snapshot < a);
    assert_eq!(
        ms("3a:2f50:5", "0000003a:00002f50:0002", "1"),
        Err("commit_lsn"),
        "LSN parts must have 8:8:4 hex digits"
    );
    // A missing field is named.
    assert_eq!(my("mysql-bin.000003", "x", "0"), Err("pos"));
    // PostgreSQL sequence: (last commit LSN, LSN), null lowest.
    let seq = |text: &str| {
        let m = mapping("version = \"source.sequence\"\n");
        let s = source_with("postgresql", &[("sequence", text)], None);
        position_parts(m.scheme(&event_with(s.clone())), &s)
    };
    assert!(seq(r#"[null,"24023128"]"#) < seq(r#"["24023119","24023128"]"#));
    assert!(seq(r#"["24023119","24023128"]"#) < seq(r#"["24023200","24023150"]"#));
}

fn event_with(source: Source) -> ChangeEvent<'static> {
    ChangeEvent {
        op: Op::Update,
        key: None,
        before: None,
        after: None,
        source,
        declared: Default::default(),
        bare: false,
        transaction: None,
    }
}

#[test]
fn real_mysql_and_sqlserver_events_get_their_positions() {
    let decode = |name: &str| {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/debezium/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture");
        let entry = crate::entry::StreamEntry {
            deliveries: 0,
            stream: Arc::from("s"),
            id: ID,
            fields: Some(vec![(b"{\"id\":1}".to_vec(), text.into_bytes())]),
        };
        match crate::decode::decode(&entry, &crate::config::DecodeConfig::default()) {
            Ok(crate::decode::Decoded::Change(e)) => e.into_owned(),
            other => panic!("{name}: {other:?}"),
        }
    };
    let my = decode("mysql_create_with_schema.json");
    assert_eq!(
        mapping("").scheme(&my),
        VersionSource::EntryId,
        "opt-in only"
    );
    let m = mapping("version = \"mysql.binlog\"\n");
    assert_eq!(m.scheme(&my), VersionSource::MysqlBinlog);
    assert_eq!(
        position_parts(m.scheme(&my), &my.source),
        Ok(vec![3, 154, 0])
    );
    let ms = decode("sqlserver_delete_decimal_with_schema.json");
    let m = mapping("version = \"sqlserver.lsn\"\n");
    assert_eq!(m.scheme(&ms), VersionSource::SqlServerLsn);
    assert_eq!(
        position_parts(m.scheme(&ms), &ms.source),
        Ok(vec![(0x3a << 32) | 0x2f50, 5, (0x3a << 32) | 0x2f50, 2, 1])
    );
}
