//! Hostile input: the decoder and the event-to-row path never panic and never
//! allocate without bound, on any bytes; odd but legal input is stored
//! faithfully, and input that cannot be stored is refused with a reason.

use dolake::config::DoLakeConfig;
use dolake::flush::into_change_event;
use dolake::lake::{check_change_event, plan_commit, CommitIds, WriteOptions};
use dolake::protocol::{decode_client_message, ClientMessage};
use proptest::prelude::*;
use serde_json::{json, Value};

fn ids() -> CommitIds {
    CommitIds {
        snapshot_id: 1,
        commit_uuid: uuid::Uuid::from_u128(1),
        table_uuid: uuid::Uuid::from_u128(2),
        now_ms: 1_700_000_000_000,
    }
}

/// Decodes, and if it is a batch, writes it as a commit; any outcome but a
/// panic is fine, except that the events the lake's rule accepts (the ones
/// intake acknowledges) must be written.
fn through_everything(text: &str) {
    if let Ok(ClientMessage::CdcBatch(batch)) = decode_client_message(text) {
        let config = DoLakeConfig::default();
        let mut by_table: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for event in batch.events.into_vec().expect("accepted events decode") {
            by_table
                .entry(event.table.clone())
                .or_default()
                .push(into_change_event(
                    &batch.source_do_id,
                    batch.sequence_number,
                    event,
                ));
        }
        for (table, events) in by_table {
            let options = WriteOptions::from_config(&config, &table);
            let _ = plan_commit(&events, None, &options, &ids());
            let accepted: Vec<_> = events
                .into_iter()
                .filter(|e| check_change_event(&table, e).is_ok())
                .collect();
            if !accepted.is_empty() {
                if let Err(e) = plan_commit(&accepted, None, &options, &ids()) {
                    panic!("accepted events of {table:?} failed to plan: {e}");
                }
            }
        }
    }
}

fn batch_with(events: Value) -> String {
    json!({"type": "cdc_batch", "sourceDoId": "s", "sequenceNumber": 1, "events": events})
        .to_string()
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        through_everything(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn any_json_decodes_without_panic(value in arb_json()) {
        through_everything(&value.to_string());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_row_shape_becomes_rows_or_a_clear_error(
        rows in prop::collection::vec(prop::collection::btree_map(".{0,10}", arb_json(), 0..5), 1..8),
        table in ".{0,20}",
    ) {
        let events: Vec<Value> = rows.into_iter().enumerate().map(|(i, row)| json!({
            "sequence": i, "timestamp": 1_700_000_000_000i64 + i as i64,
            "operation": "INSERT", "table": table, "rowId": format!("r{i}"),
            "after": Value::Object(row.into_iter().collect()),
        })).collect();
        let text = batch_with(Value::Array(events));
        match decode_client_message(&text) {
            Ok(_) => through_everything(&text),
            Err(e) => prop_assert!(!e.message.is_empty() && e.sequence_number == Some(1)),
        }
    }
}

#[test]
fn named_hostile_cases() {
    let event = |table: &str, after: Value| {
        batch_with(
            json!([{"sequence": 1, "timestamp": 1, "operation": "INSERT", "table": table, "rowId": "r", "after": after}]),
        )
    };
    // Deep nesting: refused by the parser's depth limit, not a stack overflow.
    let deep = format!("{}1{}", "[".repeat(200_000), "]".repeat(200_000));
    assert!(decode_client_message(&event("t", json!({})).replace("{}", &deep)).is_err());
    // Huge numbers: kept (a double), never a panic.
    through_everything(
        &event("t", json!({}))
            .replace("{}", r#"{"n": 1e308, "m": 123456789012345678901234567890}"#),
    );
    // Table names that could escape the bucket prefix, or that readers would
    // have to escape or split, are refused with a reason; so are DoLake's own.
    for bad in [
        "../etc",
        "a/b",
        "..",
        "a\\b",
        "",
        "tab\u{1}",
        "ns.table",
        ".hidden",
        "sp ace",
        "ünïcødé_表",
        "_dolake_rejected",
    ] {
        let e = decode_client_message(&event(bad, json!({}))).unwrap_err();
        assert!(e.message.contains("`table`"), "{bad:?}: {}", e.message);
    }
    let long = "t".repeat(10 * 1024);
    assert!(decode_client_message(&event(&long, json!({})))
        .unwrap_err()
        .message
        .contains("128"));
    // Unicode column names are stored faithfully as columns; a 10 KB name
    // keeps its value in `_cdc_overflow` (names become columns up to 255
    // bytes).
    let text = event(
        "unicode-cols",
        json!({"名前": "値", "k".repeat(10 * 1024): 1, "emoji😀": true}),
    );
    let ClientMessage::CdcBatch(batch) = decode_client_message(&text).unwrap() else {
        panic!()
    };
    let events: Vec<_> = batch
        .events
        .into_vec()
        .unwrap()
        .into_iter()
        .map(|e| into_change_event("s", 1, e))
        .collect();
    for e in &events {
        check_change_event("unicode-cols", e).unwrap();
    }
    let commit = plan_commit(
        &events,
        None,
        &WriteOptions::from_config(&DoLakeConfig::default(), "unicode-cols"),
        &ids(),
    )
    .unwrap();
    let schema = commit.state.metadata.current_schema().unwrap();
    for name in ["名前", "emoji😀"] {
        assert!(schema.field_by_name(name).is_some(), "{name}");
    }
    assert!(schema.field_by_name(&"k".repeat(10 * 1024)).is_none());
    assert_eq!(commit.overflow.get(&"k".repeat(10 * 1024)), Some(&1));
    // Non-UTF-8 bytes arrive as binary frames or are replaced by the runtime;
    // lossy text never panics the decoder.
    through_everything(&String::from_utf8_lossy(&[0xff, 0xfe, b'{', 0x80]));
}

/// Events the wire format accepts but the lake cannot write (issue 9): the
/// lake's rule, which intake applies before acknowledging, refuses each with
/// the field and the limit; everything just inside the limits is written.
#[test]
fn poison_events_are_refused_by_the_lakes_rule() {
    let decode = |event: Value| {
        let text = batch_with(json!([event]));
        let ClientMessage::CdcBatch(batch) = decode_client_message(&text).unwrap() else {
            panic!()
        };
        let e = batch.events.into_vec().unwrap().into_iter().next().unwrap();
        (e.table.clone(), into_change_event("s", 1, e))
    };
    let base = json!({"sequence": 1, "timestamp": 1_700_000_000_000_i64, "operation": "INSERT",
        "table": "t", "rowId": "r", "after": {}});
    let with = |k: &str, v: Value| {
        let mut e = base.clone();
        e[k] = v;
        e
    };
    let many: serde_json::Map<String, Value> =
        (0..5000).map(|i| (format!("k{i}"), json!(i))).collect();
    for (event, field) in [
        (
            with("timestamp", json!(9_300_000_000_000_000_i64)),
            "timestamp",
        ),
        (with("timestamp", json!(i64::MIN)), "timestamp"),
        (with("sequence", json!(u64::MAX)), "sequence"),
        (
            with("after", Value::Object(many.clone())),
            "after has 5000 keys",
        ),
    ] {
        let (table, e) = decode(event);
        let why = check_change_event(&table, &e).unwrap_err();
        assert!(why.message().starts_with(field), "{}", why.message());
    }
    let edges = [
        with("timestamp", json!(dolake::lake::limits::MAX_TIMESTAMP_MS)),
        with("timestamp", json!(dolake::lake::limits::MIN_TIMESTAMP_MS)),
        with("sequence", json!(i64::MAX)),
        with(
            "after",
            Value::Object(
                many.into_iter()
                    .take(dolake::lake::limits::MAX_EVENT_KEYS)
                    .collect(),
            ),
        ),
    ];
    let events: Vec<_> = edges
        .into_iter()
        .map(|e| {
            let (table, e) = decode(e);
            check_change_event(&table, &e).unwrap();
            e
        })
        .collect();
    let mut config = DoLakeConfig::default();
    config.partition_by = dolake::config::PartitionBy::Hour;
    let commit = plan_commit(
        &events,
        None,
        &WriteOptions::from_config(&config, "t"),
        &ids(),
    )
    .unwrap();
    assert_eq!(commit.rows, 4);
}
