//! Lake writer figures: `cargo bench --bench lake`.
//!
//! 1. Encoding 100,000 CDC events of a realistic row shape (11 columns: ids,
//!    strings, a double, a boolean, a JSON array and object) into Parquet and
//!    the commit's Iceberg metadata, for each compression: events/s, MB/s of
//!    event JSON in, MB of Parquet out.
//! 2. Planning a one-event commit on a table with 1,000 earlier snapshots
//!    (1,000 manifests carried forward, metadata.json with 1,000 snapshots).
//!
//! A plain harness (no criterion): each figure is the median of a few runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use dolake::config::{Compression, PartitionBy};
use dolake::lake::{plan_commit, ChangeEvent, CommitIds, ObjectKind, Op, TableState, WriteOptions};
use serde_json::json;
use uuid::Uuid;

const T0: i64 = 1_795_651_200_000;

fn events(n: u64) -> Vec<ChangeEvent> {
    const STATUS: [&str; 4] = ["pending", "paid", "shipped", "refunded"];
    (0..n)
        .map(|i| {
            let after = json!({
                "order_id": i,
                "user_id": i % 5_000,
                "email": format!("user{}@example.com", i % 5_000),
                "name": format!("Customer {}", i % 5_000),
                "amount": (i % 100_000) as f64 / 100.0,
                "currency": if i % 3 == 0 { "EUR" } else { "USD" },
                "status": STATUS[(i % 4) as usize],
                "is_gift": i % 7 == 0,
                "created_at": format!("2026-11-26T{:02}:{:02}:{:02}Z", (i / 3600) % 24, (i / 60) % 60, i % 60),
                "items": [{"sku": format!("SKU-{}", i % 977), "qty": 1 + i % 3}],
                "shipping": {"city": "Berlin", "zip": format!("{:05}", 10_000 + i % 900)},
            });
            ChangeEvent {
                source_id: format!("shard-{}", i % 4),
                batch_seq: i / 1000,
                sequence: i,
                timestamp_ms: T0 + (i as i64) * 800, // spans about a day
                operation: if i % 10 == 0 { Op::Update } else { Op::Insert },
                row_id: format!("{i}"),
                before: None,
                after: after.as_object().cloned(),
                metadata: None,
            }
        })
        .collect()
}

fn options(compression: Compression) -> WriteOptions {
    WriteOptions {
        warehouse_location: "s3://lakehouse/warehouse".into(),
        namespace: "bench".into(),
        table: "orders".into(),
        compression,
        row_group_size: 100_000,
        partition_by: PartitionBy::Day,
        target_file_size: 64 * 1024 * 1024,
    }
}

fn ids(n: u64) -> CommitIds {
    CommitIds {
        snapshot_id: 1 + n as i64,
        commit_uuid: Uuid::from_u128(u128::from(n) + 1),
        table_uuid: Uuid::from_u128(7),
        now_ms: T0 + n as i64,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let n = 100_000;
    let evs = events(n);
    let json_bytes: usize = evs
        .iter()
        .map(|e| serde_json::to_vec(&e.after).map(|v| v.len()).unwrap_or(0) + 64)
        .sum();
    println!(
        "encoding {n} events ({:.1} MB of event JSON), day partitions, row groups of 100,000",
        json_bytes as f64 / 1e6
    );
    println!(
        "{:<8} {:>10} {:>12} {:>10} {:>12} {:>8}",
        "codec", "time", "events/s", "MB/s in", "parquet MB", "files"
    );
    for c in [
        Compression::None,
        Compression::Snappy,
        Compression::Gzip,
        Compression::Zstd,
    ] {
        let o = options(c);
        let mut times = Vec::new();
        let mut out = (0, 0);
        for _ in 0..3 {
            let start = Instant::now();
            let commit = black_box(plan_commit(&evs, None, &o, &ids(0)).expect("commit"));
            times.push(start.elapsed());
            let data: Vec<_> = commit
                .puts
                .iter()
                .filter(|p| p.kind == ObjectKind::Data)
                .collect();
            out = (
                data.iter().map(|p| p.bytes.len()).sum::<usize>(),
                data.len(),
            );
        }
        let t = median(times).as_secs_f64();
        println!(
            "{:<8} {:>8.0}ms {:>12.0} {:>10.1} {:>12.2} {:>8}",
            format!("{c:?}").to_lowercase(),
            t * 1e3,
            n as f64 / t,
            json_bytes as f64 / 1e6 / t,
            out.0 as f64 / 1e6,
            out.1
        );
    }

    // A table with 1,000 snapshots, built by 1,000 one-event commits.
    let one = events(1);
    let o = options(Compression::Snappy);
    let start = Instant::now();
    let mut state: Option<TableState> = None;
    for i in 0..1000 {
        let c = plan_commit(&one, state.as_ref(), &o, &ids(i)).expect("commit");
        state = Some(c.state);
    }
    let build = start.elapsed();
    let state = state.expect("state");
    let mut times = Vec::new();
    let mut sizes = (0, 0);
    for _ in 0..21 {
        let start = Instant::now();
        let c = black_box(plan_commit(&one, Some(&state), &o, &ids(1000)).expect("commit"));
        times.push(start.elapsed());
        let size = |k| {
            c.puts
                .iter()
                .find(|p| p.kind == k)
                .map(|p| p.bytes.len())
                .unwrap_or(0)
        };
        sizes = (size(ObjectKind::Metadata), size(ObjectKind::ManifestList));
    }
    let parse_start = Instant::now();
    let text = state.metadata.to_json();
    for _ in 0..10 {
        black_box(dolake::lake::TableMetadata::from_json(&text).expect("parse"));
    }
    let parse = parse_start.elapsed() / 10;
    println!(
        "commit on a table with 1,000 snapshots: {:.2} ms median of 21 (metadata.json {:.0} KB, manifest list {:.0} KB with 1,001 manifests); parsing that metadata.json {:.2} ms; building the 1,000 commits took {:.1} s",
        median(times).as_secs_f64() * 1e3,
        sizes.0 as f64 / 1024.0,
        sizes.1 as f64 / 1024.0,
        parse.as_secs_f64() * 1e3,
        build.as_secs_f64()
    );
}
