//! Hostile input: the decoder and the event-to-row path never panic and never
//! allocate without bound, on any bytes; odd but legal input is stored
//! faithfully, and input that cannot be stored is refused with a reason.

use dolake::config::DoLakeConfig;
use dolake::flush::into_change_event;
use dolake::lake::{plan_commit, CommitIds, WriteOptions};
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
/// panic is fine.
fn through_everything(text: &str) {
    if let Ok(ClientMessage::CdcBatch(batch)) = decode_client_message(text) {
        let config = DoLakeConfig::default();
        let mut by_table: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for event in batch.events {
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
            let _ = plan_commit(
                &events,
                None,
                &WriteOptions::from_config(&config, &table),
                &ids(),
            );
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
    // Table names that could escape the bucket prefix are refused with a reason.
    for bad in ["../etc", "a/b", "..", "a\\b", "", "tab\u{1}"] {
        let e = decode_client_message(&event(bad, json!({}))).unwrap_err();
        assert!(e.message.contains("`table`"), "{bad:?}: {}", e.message);
    }
    let long = "t".repeat(10 * 1024);
    assert!(decode_client_message(&event(&long, json!({})))
        .unwrap_err()
        .message
        .contains("128"));
    // Unicode and 10 KB column names are stored faithfully.
    let text = event(
        "ünïcødé_表",
        json!({"名前": "値", "k".repeat(10 * 1024): 1, "emoji😀": true}),
    );
    let ClientMessage::CdcBatch(batch) = decode_client_message(&text).unwrap() else {
        panic!()
    };
    let events: Vec<_> = batch
        .events
        .into_iter()
        .map(|e| into_change_event("s", 1, e))
        .collect();
    let commit = plan_commit(
        &events,
        None,
        &WriteOptions::from_config(&DoLakeConfig::default(), "ünïcødé_表"),
        &ids(),
    )
    .unwrap();
    let schema = commit.state.metadata.current_schema().unwrap();
    for name in ["名前", "emoji😀"] {
        assert!(schema.field_by_name(name).is_some(), "{name}");
    }
    assert!(schema.field_by_name(&"k".repeat(10 * 1024)).is_some());
    // Non-UTF-8 bytes arrive as binary frames or are replaced by the runtime;
    // lossy text never panics the decoder.
    through_everything(&String::from_utf8_lossy(&[0xff, 0xfe, b'{', 0x80]));
}
