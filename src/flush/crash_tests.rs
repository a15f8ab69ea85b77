//! The flush procedure against the in-memory fakes: every table read back
//! row by row, with a crash at every operation of every step.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::json;

use super::memory::{
    block_on, read_table, Crash, FakeEnv, MemoryBuffer, MemoryIndex, MemoryStore, Row,
};
use super::procedure::{mark_in_history, run, Outcome, Settings};
use crate::config::DoLakeConfig;
use crate::lake::{TableMetadata, TablePaths, REJECTED_TABLE};
use crate::protocol::CdcEvent;

pub(super) const NS: &str = "default";

fn config() -> DoLakeConfig {
    DoLakeConfig::parse(Some(r#"{"warehouseLocation":"s3://bucket/lake"}"#)).unwrap()
}

pub(super) fn event(table: &str, seq: u64, ts: i64, after: serde_json::Value) -> CdcEvent {
    serde_json::from_value(json!({
        "sequence": seq, "timestamp": ts, "operation": "INSERT", "table": table,
        "rowId": format!("r{seq}"), "after": after,
    }))
    .unwrap()
}

pub(super) struct World {
    pub(super) crash: Rc<Crash>,
    pub(super) buffer: MemoryBuffer,
    pub(super) store: MemoryStore,
    pub(super) index: MemoryIndex,
    pub(super) env: FakeEnv,
    pub(super) config: DoLakeConfig,
}

impl World {
    pub(super) fn new() -> Self {
        let crash = Rc::new(Crash::default());
        Self {
            buffer: MemoryBuffer::new(crash.clone()),
            store: MemoryStore::new(crash.clone()),
            index: MemoryIndex::new(crash.clone()),
            crash,
            env: FakeEnv::new(1_700_000_000_000, 1),
            config: config(),
        }
    }
    /// Makes this world a copy of `other` (a restarted object).
    pub(super) fn copy_from(&self, other: &World) {
        self.store.copy_from(&other.store);
        self.env.copy_from(&other.env);
        self.buffer.copy_from(&other.buffer);
        self.index.copy_from(&other.index);
    }
    pub(super) fn flush_with(&self, step_budget_bytes: u64, time_budget_ms: i64) -> Outcome {
        let settings = Settings {
            config: &self.config,
            epoch: "e1",
            step_budget_bytes,
            target_file_bytes: 1 << 20,
            time_budget_ms,
        };
        block_on(run(
            &self.buffer,
            &self.store,
            &self.index,
            &self.env,
            &settings,
        ))
    }
    pub(super) fn flush(&self) -> Outcome {
        self.flush_with(4 << 20, 20_000)
    }
    /// Flushes until the buffer is empty; at most `tries` attempts.
    fn drain(&self, tries: usize) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for _ in 0..tries {
            let o = self.flush_with(600, 20_000);
            let done = o.error.is_none() && !o.more && self.buffer.len() == 0;
            outcomes.push(o);
            if done {
                return outcomes;
            }
        }
        panic!("not drained in {tries} attempts: {:?}", outcomes.last());
    }
    pub(super) fn rows(&self, table: &str) -> Vec<Row> {
        read_table(&self.store, NS, table).unwrap_or_default()
    }
    /// (source, sequence) of every row of `table`, sorted.
    pub(super) fn keys(&self, table: &str) -> Vec<(String, u64)> {
        let mut keys: Vec<(String, u64)> = self
            .rows(table)
            .iter()
            .map(|r| (r["_cdc_source"].clone(), r["_cdc_seq"].parse().unwrap()))
            .collect();
        keys.sort();
        keys
    }
}

/// Three sources, three tables, batches that span tables, a type conflict.
fn load_workload(w: &World) -> BTreeMap<String, Vec<(String, u64)>> {
    let mut expected: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut seq = 0;
    for batch in 0..3u64 {
        for source in ["s1", "s2", "s3"] {
            let mut events = Vec::new();
            for i in 0..4 {
                seq += 1;
                let table = ["users", "orders", "items"][(seq % 3) as usize];
                let value = if seq == 7 { json!("text") } else { json!(seq) };
                events.push(event(
                    table,
                    seq,
                    1_700_000_000_000 + i,
                    json!({"id": seq, "v": value}),
                ));
                expected
                    .entry(table.to_string())
                    .or_default()
                    .push((source.to_string(), seq));
            }
            w.buffer.push(source, batch, events);
        }
    }
    for keys in expected.values_mut() {
        keys.sort();
    }
    expected
}

#[test]
fn a_flush_writes_every_event_once_and_empties_the_buffer() {
    let w = World::new();
    let expected = load_workload(&w);
    let outcomes = w.drain(20);
    assert!(outcomes.iter().all(|o| o.error.is_none()));
    for (table, keys) in &expected {
        assert_eq!(&w.keys(table), keys, "{table}");
    }
    let flushed: u64 = outcomes.iter().map(|o| o.events_flushed).sum();
    assert_eq!(flushed, 36);
    assert!(read_table(&w.store, NS, REJECTED_TABLE).is_none());
}

#[test]
fn a_crash_at_any_operation_loses_and_duplicates_nothing() {
    // How many operations a clean flush takes.
    let clean = World::new();
    load_workload(&clean);
    clean.drain(20);
    let total = clean.crash.ops();
    assert!(total > 50, "{total}");
    for at in 0..total {
        let w = World::new();
        let expected = load_workload(&w);
        w.crash.at(at);
        let first = w.flush_with(600, 20_000);
        assert!(
            first.error.is_some() || at >= w.crash.ops(),
            "crash at {at}"
        );
        w.crash.heal();
        w.drain(40);
        for (table, keys) in &expected {
            assert_eq!(
                &w.keys(table),
                keys,
                "{table} after a crash at operation {at}"
            );
        }
    }
}

#[test]
fn poison_events_go_to_the_dead_letter_table_and_block_nothing() {
    let w = World::new();
    let mut events = vec![event("users", 1, 1_700_000_000_000, json!({"id": 1}))];
    events.push(event("users", 2, 9_300_000_000_000_000, json!({"id": 2})));
    let mut big = event("users", 3, 1_700_000_000_000, json!({"id": 3}));
    big.sequence = u64::MAX;
    events.push(big);
    events.push(event("orders", 4, 1_700_000_000_000, json!({"id": 4})));
    w.buffer.push("s1", 0, events);
    let o = w.flush();
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(o.events_rejected, 2);
    assert_eq!(w.buffer.len(), 0);
    assert_eq!(w.keys("users"), vec![("s1".to_string(), 1)]);
    assert_eq!(w.keys("orders"), vec![("s1".to_string(), 4)]);
    let mut dead = w.rows(REJECTED_TABLE);
    dead.sort_by_key(|r| r["sequence"].clone());
    assert_eq!(dead.len(), 2);
    let raw: serde_json::Value = serde_json::from_str(&dead[0]["raw"]).unwrap();
    assert_eq!(raw["sequence"], json!(u64::MAX));
    assert_eq!(dead[0]["table_name"], "users");
    assert_eq!(dead[1]["sequence"], "2");
    let raw: serde_json::Value = serde_json::from_str(&dead[1]["raw"]).unwrap();
    assert_eq!(raw["timestamp"], json!(9_300_000_000_000_000i64));
    assert_eq!(raw["after"], json!({"id": 2}));
    assert!(
        dead[1]["reason"].contains("timestamp"),
        "{}",
        dead[1]["reason"]
    );
}

#[test]
fn a_table_dolake_cannot_extend_is_dead_lettered_while_others_flush() {
    let w = World::new();
    let paths = TablePaths::new(NS, "legacy").unwrap();
    let v1 = include_bytes!("../lake/testdata/v1.metadata.json").to_vec();
    let mut v1: serde_json::Value = serde_json::from_slice(&v1).unwrap();
    v1["format-version"] = json!(1);
    w.store
        .insert(&paths.metadata_key(1), serde_json::to_vec(&v1).unwrap());
    w.store.insert(&paths.version_hint_key(), b"1".to_vec());
    w.buffer.push(
        "s1",
        0,
        vec![
            event("legacy", 1, 1_700_000_000_000, json!({"id": 1})),
            event("users", 2, 1_700_000_000_000, json!({"id": 2})),
        ],
    );
    let o = w.flush();
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(o.events_rejected, 1);
    assert!(o.unwritable_tables.contains_key("legacy"));
    assert_eq!(w.keys("users"), vec![("s1".to_string(), 2)]);
    let dead = w.rows(REJECTED_TABLE);
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]["reason"].contains("format-version"),
        "{:?}",
        dead[0]
    );
    assert_eq!(w.store.object(&paths.version_hint_key()).unwrap(), b"1");
}

#[test]
fn crashes_around_dead_letter_commits_never_duplicate_them() {
    let build = || {
        let w = World::new();
        for b in 0..5u64 {
            let mut events = vec![event("users", b * 2, 1_700_000_000_000, json!({"id": b}))];
            events.push(event("orders", b * 2 + 1, i64::MAX / 10, json!({"id": b})));
            w.buffer.push("s1", b, events);
        }
        w
    };
    let clean = build();
    clean.drain(20);
    let total = clean.crash.ops();
    for at in 0..total {
        let w = build();
        w.crash.at(at);
        w.flush_with(300, 20_000);
        w.crash.heal();
        w.drain(40);
        assert_eq!(w.keys("users").len(), 5, "crash at {at}");
        let mut dead: Vec<String> = w
            .rows(REJECTED_TABLE)
            .iter()
            .map(|r| r["sequence"].clone())
            .collect();
        dead.sort();
        assert_eq!(dead, ["1", "3", "5", "7", "9"], "crash at {at}");
    }
}

#[test]
fn a_lagging_version_hint_is_repaired_on_the_next_flush() {
    let w = World::new();
    w.buffer.push(
        "s1",
        0,
        vec![event("users", 1, 1_700_000_000_000, json!({"id": 1}))],
    );
    w.flush();
    w.buffer.push(
        "s1",
        1,
        vec![event("users", 2, 1_700_000_000_000, json!({"id": 2}))],
    );
    // Crash right after the metadata put, before the hint put.
    let paths = TablePaths::new(NS, "users").unwrap();
    let mut at = 0;
    loop {
        let probe = World::new();
        probe.buffer.push(
            "s1",
            0,
            vec![event("users", 1, 1_700_000_000_000, json!({"id": 1}))],
        );
        probe.flush();
        probe.buffer.push(
            "s1",
            1,
            vec![event("users", 2, 1_700_000_000_000, json!({"id": 2}))],
        );
        probe.crash.at(at);
        probe.flush();
        if probe.store.object(&paths.metadata_key(2)).is_some() {
            break;
        }
        at += 1;
    }
    w.crash.at(at);
    w.flush();
    w.crash.heal();
    assert_eq!(w.store.object(&paths.version_hint_key()).unwrap(), b"1");
    // The next flush (even one with nothing for this table) repairs it.
    w.buffer.push(
        "s1",
        2,
        vec![event("users", 3, 1_700_000_000_000, json!({"id": 3}))],
    );
    let o = w.flush();
    assert!(o.error.is_none());
    assert_eq!(o.hints_repaired, 1);
    assert_eq!(w.keys("users").len(), 3);
    assert_eq!(w.store.object(&paths.version_hint_key()).unwrap(), b"3");
}

#[test]
fn marks_are_found_behind_another_engines_commit() {
    let w = World::new();
    w.buffer.push(
        "s1",
        0,
        vec![event("users", 1, 1_700_000_000_000, json!({"id": 1}))],
    );
    // Commit everything but crash before the buffer is trimmed.
    let clean = World::new();
    clean.buffer.push(
        "s1",
        0,
        vec![event("users", 1, 1_700_000_000_000, json!({"id": 1}))],
    );
    clean.flush();
    let before_delete = clean.crash.ops() - 2;
    w.crash.at(before_delete);
    assert!(w.flush().error.is_some());
    w.crash.heal();
    assert_eq!(w.buffer.len(), 1);
    // Another engine commits on top with no DoLake mark in its summary.
    let paths = TablePaths::new(NS, "users").unwrap();
    let bytes = w.store.object(&paths.metadata_key(1)).unwrap();
    let mut m = TableMetadata::from_json(&bytes).unwrap();
    let mut s = m.current_snapshot().unwrap().clone();
    s.parent_snapshot_id = Some(s.snapshot_id);
    s.snapshot_id += 1_000;
    s.sequence_number += 1;
    s.summary.retain(|k, _| !k.starts_with("dolake."));
    m.current_snapshot_id = Some(s.snapshot_id);
    m.last_sequence_number = s.sequence_number;
    m.snapshots.push(s);
    if let Some(main) = m.refs.get_mut("main") {
        main.snapshot_id = m.current_snapshot_id.unwrap();
    }
    assert_eq!(mark_in_history(&m, "e1"), Some(1));
    w.store.insert(&paths.metadata_key(2), m.to_json());
    w.store.insert(&paths.version_hint_key(), b"2".to_vec());
    let o = w.flush();
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(w.keys("users"), vec![("s1".to_string(), 1)]);
    assert_eq!(w.buffer.len(), 0);
}

#[test]
fn a_flush_out_of_time_goes_on_later_without_duplicates() {
    let w = World::new();
    let expected = load_workload(&w);
    // Every clock reading moves 1 ms; a 1 ms budget stops after one table.
    let o = w.flush_with(4 << 20, 1);
    assert!(o.more && o.error.is_none());
    assert!(w.buffer.len() > 0);
    w.drain(40);
    for (table, keys) in &expected {
        assert_eq!(&w.keys(table), keys, "{table}");
    }
}

mod property {
    //! Intake and flush together: whatever intake accepts is flushed, once,
    //! to its table or to the dead-letter table, and no flush fails.
    use super::*;
    use crate::intake::{Admission, BufferTotals, Intake};
    use crate::protocol::{CdcBatchMessage, ServerMessage};
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            prop_oneof![
                Just(f64::MIN_POSITIVE),
                Just(5e-324),
                Just(1e308),
                Just(-0.0)
            ]
            .prop_map(|f| json!(f)),
            ".{0,40}".prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    prop_compose! {
        fn raw_event()(
            table in prop_oneof![Just("users"), Just("orders"), Just("Odd-Name_1")],
            ts in prop_oneof![
                Just(0i64), Just(-62_135_596_800_000i64), Just(253_402_300_799_999i64),
                Just(9_300_000_000_000_000i64), Just(i64::MIN), Just(i64::MAX),
                1_600_000_000_000i64..1_800_000_000_000,
            ],
            op in 0..3u8,
            row in prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}|.{1,12}", value(), 0..6),
            huge_seq in prop::bool::weighted(0.05),
        ) -> (String, i64, u8, serde_json::Map<String, serde_json::Value>, bool) {
            (table.to_string(), ts, op, row.into_iter().collect(), huge_seq)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn accepted_batches_reach_their_tables_or_the_dead_letter_table_once(
            batches in prop::collection::vec(
                (0..3usize, prop::collection::vec(raw_event(), 1..6), any::<bool>()),
                1..10,
            ),
        ) {
            let w = World::new();
            let mut intake = Intake::new(w.config.clone(), vec![], BufferTotals::default());
            let mut accepted: Vec<(String, u64, String)> = Vec::new();
            let mut seq = 0u64;
            for (n, (source, events, resend)) in batches.iter().enumerate() {
                let source = ["s0", "s1", "ś2-\u{1F600}"][*source];
                let events: Vec<CdcEvent> = events.iter().map(|(table, ts, op, row, huge)| {
                    seq += 1;
                    let operation = ["INSERT", "UPDATE", "DELETE"][*op as usize];
                    let mut e = json!({
                        "sequence": if *huge { u64::MAX - seq } else { seq },
                        "timestamp": ts,
                        "operation": operation,
                        "table": table, "rowId": format!("r{seq}"),
                    });
                    if *op < 2 { e["after"] = serde_json::Value::Object(row.clone()); }
                    if *op > 0 { e["before"] = serde_json::Value::Object(row.clone()); }
                    serde_json::from_value(e).unwrap()
                }).collect();
                let batch: CdcBatchMessage = serde_json::from_value(json!({
                    "type": "cdc_batch", "timestamp": 1, "sourceDoId": source,
                    "events": events, "sequenceNumber": n as u64,
                })).unwrap();
                for _ in 0..if *resend { 2 } else { 1 } {
                    match intake.admit(1_700_000_000_000, batch.clone()) {
                        Admission::Store(plan) => {
                            let record = plan.record.clone();
                            w.buffer.push_record(&record);
                            for e in batch.events.decoded().unwrap().iter() {
                                accepted.push((source.to_string(), e.sequence, e.table.clone()));
                            }
                            intake.commit(1_700_000_000_000, *plan);
                        }
                        Admission::Reply(ServerMessage::Ack(_)) => {}
                        Admission::Reply(ServerMessage::Nack(n)) => {
                            prop_assert_eq!(n.reason.as_str(), "invalid_format", "{}", n.error_message);
                        }
                        Admission::Reply(other) => prop_assert!(false, "{:?}", other),
                    }
                }
            }
            let outcome = w.flush();
            prop_assert!(outcome.error.is_none(), "{:?}", outcome.error);
            prop_assert_eq!(w.buffer.len(), 0);
            let mut got: Vec<(String, u64, String)> = Vec::new();
            for table in ["users", "orders", "Odd-Name_1"] {
                for r in w.rows(table) {
                    got.push((r["_cdc_source"].clone(), r["_cdc_seq"].parse().unwrap(), table.to_string()));
                }
            }
            for r in w.rows(REJECTED_TABLE) {
                got.push((r["source_id"].clone(), r["sequence"].parse().unwrap(), r["table_name"].clone()));
            }
            got.sort();
            accepted.sort();
            prop_assert_eq!(got, accepted);
        }
    }
}
