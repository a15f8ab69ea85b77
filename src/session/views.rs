//! What `/status` and `/metrics` show: the session's state and the facts
//! the object gathers (its sockets, its flush history, its platform), as a
//! JSON body and as Prometheus text. Pure functions of their inputs.

use super::{Connection, Session};
use crate::flush::maintenance::TableHealth;
use crate::flush::FlushHistory;
use crate::metrics::{Exposition, Kind};

/// What the object knows besides the session.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Now, Unix ms.
    pub now: i64,
    /// The saved state of every open connection.
    pub connections: &'a [Connection],
    /// Open WebSockets (with or without a readable state).
    pub open_sockets: usize,
    /// Flush and maintenance history.
    pub history: &'a FlushHistory,
    /// When the alarm is set, Unix ms.
    pub next_flush_ms: Option<i64>,
    /// Whether a flush is running now.
    pub flush_running: bool,
    /// The buffer's epoch.
    pub epoch: Option<&'a str>,
    /// Whether a bearer token is required.
    pub authenticated: bool,
    /// The instance's platform facts (constructions, storage and memory).
    pub instance: &'a serde_json::Value,
}

impl Facts<'_> {
    /// Distinct sources with an open connection.
    pub fn connected_sources(&self) -> u64 {
        let mut ids: Vec<&str> = self
            .connections
            .iter()
            .filter_map(|c| c.source_id.as_deref())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len() as u64
    }
}

/// The Prometheus exposition of `/metrics`.
pub fn metrics(session: &Session, facts: &Facts<'_>) -> String {
    let intake = session.intake();
    let history = facts.history;
    let b = intake.buffer();
    let sum =
        |f: fn(&crate::intake::SourceState) -> u64| intake.sources().map(f).sum::<u64>() as f64;
    let mut e = Exposition::new();
    e.single(
        "buffer_events",
        Kind::Gauge,
        "Events in the durable buffer.",
        b.events as f64,
    )
    .single(
        "buffer_bytes",
        Kind::Gauge,
        "Bytes in the durable buffer.",
        b.bytes as f64,
    )
    .single(
        "buffer_batches",
        Kind::Gauge,
        "Batches in the durable buffer.",
        b.batches as f64,
    )
    .single(
        "buffer_utilization",
        Kind::Gauge,
        "Buffered bytes over maxBufferSize.",
        intake.utilization(),
    )
    .single(
        "connected_sources",
        Kind::Gauge,
        "Sources with an open WebSocket.",
        facts.connected_sources() as f64,
    )
    .single(
        "open_sockets",
        Kind::Gauge,
        "Open WebSockets.",
        facts.open_sockets as f64,
    )
    .single(
        "batches_received_total",
        Kind::Counter,
        "cdc_batch messages received.",
        sum(|s| s.batches_received),
    )
    .single(
        "events_received_total",
        Kind::Counter,
        "Events received in cdc_batch messages.",
        sum(|s| s.events_received),
    )
    .single(
        "batches_acked_total",
        Kind::Counter,
        "Batches stored and acked.",
        sum(|s| s.batches_acked),
    )
    .single(
        "events_acked_total",
        Kind::Counter,
        "Events stored and acked.",
        sum(|s| s.events_acked),
    )
    .single(
        "batches_nacked_total",
        Kind::Counter,
        "Batches refused with a nack.",
        sum(|s| s.batches_nacked),
    )
    .single(
        "duplicate_batches_total",
        Kind::Counter,
        "Resent batches acked as duplicate.",
        sum(|s| s.duplicate_batches),
    )
    .single(
        "duplicate_events_total",
        Kind::Counter,
        "Events dropped as already stored.",
        sum(|s| s.duplicate_events),
    );
    let refusals: Vec<(Vec<(&str, String)>, f64)> = session
        .refusals()
        .by_reason()
        .into_iter()
        .map(|(reason, n)| (vec![("reason", reason)], n as f64))
        .collect();
    e.family(
        "refusals_total",
        Kind::Counter,
        "Nacks and refused upgrades or requests, by reason.",
        &refusals,
    )
    .family(
        "flushes_total",
        Kind::Counter,
        "Flushes by outcome.",
        &[
            (
                vec![("outcome", "success".to_string())],
                history.flushes as f64,
            ),
            (
                vec![("outcome", "failure".to_string())],
                history.failures as f64,
            ),
        ],
    )
    .single(
        "flush_events_total",
        Kind::Counter,
        "Events written to the lake.",
        history.events_flushed as f64,
    )
    .single(
        "flush_bytes_total",
        Kind::Counter,
        "Bytes written to R2.",
        history.bytes_written as f64,
    )
    .single(
        "flush_files_total",
        Kind::Counter,
        "Objects written to R2.",
        history.files_written as f64,
    )
    .single(
        "flush_last_duration_seconds",
        Kind::Gauge,
        "Wall time of the last flush.",
        history.last_duration_ms as f64 / 1000.0,
    )
    .single(
        "flush_last_success_timestamp_seconds",
        Kind::Gauge,
        "When the last successful flush ended (0: never).",
        history.last_success_ms.unwrap_or(0) as f64 / 1000.0,
    )
    .single(
        "flush_consecutive_failures",
        Kind::Gauge,
        "Failed flushes since the last success.",
        history.consecutive_failures as f64,
    )
    .single(
        "r2_errors_total",
        Kind::Counter,
        "Flushes that failed on R2 or storage.",
        history.failures as f64,
    )
    .single(
        "events_rejected_total",
        Kind::Counter,
        "Events written to the dead-letter table (_dolake_rejected) because no table could take them.",
        history.events_rejected as f64,
    )
    .single(
        "unwritable_tables",
        Kind::Gauge,
        "Tables whose metadata DoLake cannot extend (their events are dead-lettered).",
        history.unwritable_tables.len() as f64,
    )
    .single(
        "version_hints_repaired_total",
        Kind::Counter,
        "Lagging version-hint.text files rewritten.",
        history.hints_repaired as f64,
    );
    let m = &history.maintenance;
    e.single(
        "maintenance_runs_total",
        Kind::Counter,
        "Maintenance runs.",
        m.runs as f64,
    )
    .single(
        "maintenance_failures_total",
        Kind::Counter,
        "Maintenance runs in which a table failed.",
        m.failures as f64,
    )
    .single(
        "maintenance_files_compacted_total",
        Kind::Counter,
        "Data files rewritten by compaction.",
        m.files_compacted as f64,
    )
    .single(
        "maintenance_snapshots_expired_total",
        Kind::Counter,
        "Snapshots expired.",
        m.snapshots_expired as f64,
    )
    .single(
        "maintenance_files_deleted_total",
        Kind::Counter,
        "Objects deleted after expiry and as orphans.",
        (m.files_deleted + m.orphans_deleted) as f64,
    );
    let c = &history.current_state;
    e.single(
        "current_state_events_total",
        Kind::Counter,
        "Change events applied to current-state tables.",
        c.events as f64,
    )
    .single(
        "current_state_rows_deleted_total",
        Kind::Counter,
        "Rows of current-state tables replaced or deleted (position deletes written).",
        c.rows_deleted as f64,
    )
    .single(
        "current_state_unknown_keys_total",
        Kind::Counter,
        "UPDATEs (applied as upserts) and DELETEs (no-ops) of keys a current-state table did not hold.",
        (c.upserts_of_unknown + c.deletes_of_unknown) as f64,
    )
    .single(
        "row_index_repairs_total",
        Kind::Counter,
        "Row indexes that disagreed with their table and were repaired.",
        history.index_repairs as f64,
    );
    let healths: Vec<(&String, &TableHealth)> = m
        .tables
        .iter()
        .filter_map(|(t, r)| Some((t, r.health.as_ref()?)))
        .collect();
    let gauge = |f: fn(&TableHealth) -> u64| -> Vec<(Vec<(&str, String)>, f64)> {
        healths
            .iter()
            .map(|(t, h)| (vec![("table", (*t).clone())], f(h) as f64))
            .collect()
    };
    e.family(
        "table_snapshots",
        Kind::Gauge,
        "Snapshots in a table's metadata (after its last maintenance).",
        &gauge(|h| h.snapshots),
    )
    .family(
        "table_manifests",
        Kind::Gauge,
        "Manifests in a table's current snapshot.",
        &gauge(|h| h.manifests),
    )
    .family(
        "table_data_files",
        Kind::Gauge,
        "Live data files of a table.",
        &gauge(|h| h.data_files),
    )
    .family(
        "table_data_bytes",
        Kind::Gauge,
        "Bytes of a table's live data files.",
        &gauge(|h| h.data_bytes),
    )
    .family(
        "table_metadata_bytes",
        Kind::Gauge,
        "Size of a table's current metadata.json.",
        &gauge(|h| h.metadata_bytes),
    );
    e.finish()
}

/// The body of `/status`.
pub fn status(session: &mut Session, facts: &Facts<'_>) -> serde_json::Value {
    let history = facts.history;
    let mut connections_per_ip = std::collections::BTreeMap::<String, u64>::new();
    for c in facts.connections {
        let ip = c.ip.clone().unwrap_or_else(|| "unknown".to_string());
        *connections_per_ip.entry(ip).or_default() += 1;
    }
    let open_ids: Vec<&str> = facts
        .connections
        .iter()
        .filter_map(|c| c.source_id.as_deref())
        .collect();
    // Expires old entries first; everything after only reads.
    let dedup_stats = session.intake_mut().dedup_stats(facts.now);
    let intake = session.intake();
    let config = intake.config();
    let sources: Vec<serde_json::Value> = intake
        .sources()
        .map(|s| s.report(open_ids.contains(&s.source_id.as_str())))
        .collect();
    let m = &history.maintenance;
    serde_json::json!({
        "state": intake.state(),
        "buffer": intake.buffer_snapshot(),
        "connectedSources": facts.connected_sources(),
        "sourceStates": sources,
        "dedupStats": dedup_stats,
        "connections": facts.connections,
        "lastFlushTime": history.last_success_ms,
        "nextFlushTime": facts.next_flush_ms,
        "tables": tables(config, history),
        "maintenance": {
            "nextRunMs": m.next_run(&config.maintenance, history),
            "lastRunMs": m.last_run_ms,
            "runs": m.runs,
            "failures": m.failures,
            "continuing": m.continuing,
        },
        "flush": {
            "running": facts.flush_running,
            "history": serde_json::to_value(history).unwrap_or_default(),
            "epoch": facts.epoch,
        },
        "config": config.to_json(),
        "instance": facts.instance,
        "authentication": if facts.authenticated { "enabled" } else { "disabled (DOLAKE_AUTH_TOKEN is not set)" },
        "rateLimits": {
            "refusals": session.refusals().by_reason(),
            "connectionsPerIp": connections_per_ip,
            "limits": serde_json::to_value(&config.rate_limit).unwrap_or_default(),
        },
    })
}

/// Every table a flush wrote, with its shape after its last maintenance.
fn tables(config: &crate::config::DoLakeConfig, history: &FlushHistory) -> serde_json::Value {
    let m = &history.maintenance;
    let tables: serde_json::Map<String, serde_json::Value> = history
        .known_tables()
        .iter()
        .map(|t| {
            let label = t.label(config);
            let r = m.tables.get(&label);
            let h = r.and_then(|r| r.health.as_ref());
            let shape = serde_json::json!({
                "snapshots": h.map(|h| h.snapshots),
                "manifests": h.map(|h| h.manifests),
                "dataFiles": h.map(|h| h.data_files),
                "dataBytes": h.map(|h| h.data_bytes),
                "meanFileBytes": h.map(|h| h.mean_file_bytes()),
                "metadataBytes": h.map(|h| h.metadata_bytes),
                "lastMaintenanceMs": r.and_then(|r| r.ran_ms),
                "lastMaintenance": r,
            });
            (label, shape)
        })
        .collect();
    serde_json::Value::Object(tables)
}
