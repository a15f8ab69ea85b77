//! The maintenance soak (issue 10), a benchmark and not a test: `make soak`
//! (`cargo test --release --lib flush::soak -- --ignored --nocapture`).
//!
//! One table, three sources, a flush every 30 s of simulated time (each a
//! batch of 20 events), maintenance every hour with the default policy (orphan
//! scan once a day), for `SOAK_COMMITS` commits (default 100,000: about 35
//! days). Every 10,000 commits it prints the table's shape and costs: the
//! metadata.json size, manifests in the current snapshot, live data files and
//! their mean size, objects in the store, the mean flush and maintenance
//! time, and the largest working heap of one flush and of one maintenance
//! run (peak heap during it minus the heap before it: the in-memory store
//! itself holds the whole lake, which is not the procedure's memory). The
//! goal: every figure flat, not growing with history. At the end every row
//! is read back and counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;

use super::crash_tests::{event, World, NS};
use super::maintenance::{run, Policy, TableHealth};
use super::memory::block_on;
use super::procedure::Settings;
use super::TableRef;
use crate::config::MaintenanceConfig;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TABLE: &str = "orders";
const FLUSH_MS: i64 = 30_000;
const EVENTS_PER_COMMIT: u64 = 20;

#[test]
#[ignore = "a benchmark: make soak"]
fn soak() {
    let commits: u64 = std::env::var("SOAK_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let w = World::new();
    let defaults = MaintenanceConfig::default();
    let mut policy = Policy::from_config(&defaults);
    let per_run = (defaults.interval_ms as i64 / FLUSH_MS) as u64;
    let settings = Settings {
        config: &w.config,
        epoch: "soak",
        step_budget_bytes: 4 << 20,
        target_file_bytes: 16 << 20,
        time_budget_ms: i64::MAX / 4,
    };
    let tables = vec![TableRef::changelog(TABLE)];
    println!(
        "soak: {commits} commits of {EVENTS_PER_COMMIT} events, one every {} s, maintenance every {per_run} commits, default policy",
        FLUSH_MS / 1000
    );
    println!("| commits | simulated days | metadata.json bytes | snapshots | manifests (current) | live data files | mean file bytes | objects in store | flush ms (mean) | maintenance ms (mean) | flush heap MiB (max) | maintenance heap MiB (max) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let (mut flush_time, mut flushes) = (0.0_f64, 0_u64);
    let (mut maint_time, mut maints) = (0.0_f64, 0_u64);
    let mut seq = 0_u64;
    let mut health = TableHealth::default();
    let (mut working, mut maint_working) = (0_usize, 0_usize);
    // Runs `f`, raising `working` to the most heap it took above the start.
    let measured = |working: &mut usize, f: &mut dyn FnMut()| {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        f();
        *working = (*working).max(PEAK.load(Ordering::Relaxed).saturating_sub(base));
    };
    for c in 1..=commits {
        let source = ["s1", "s2", "s3"][(c % 3) as usize];
        let now = w.env.now.get();
        let events = (0..EVENTS_PER_COMMIT)
            .map(|_| {
                seq += 1;
                event(
                    TABLE,
                    seq,
                    now,
                    json!({"id": seq, "customer": format!("c{}", seq % 977), "amount": seq as f64 / 8.0, "paid": seq.is_multiple_of(2)}),
                )
            })
            .collect();
        w.buffer.push(source, c, events);
        let t = Instant::now();
        let mut o = None;
        measured(&mut working, &mut || o = Some(w.flush()));
        let o = o.unwrap();
        flush_time += t.elapsed().as_secs_f64() * 1000.0;
        flushes += 1;
        assert!(o.error.is_none(), "commit {c}: {:?}", o.error);
        let next = w.env.now.get() + FLUSH_MS;
        w.env.now.set(next);
        w.store.clock.set(next);
        if c % per_run == 0 {
            policy.scan_orphans = c % (per_run * 24) == 0;
            let t = Instant::now();
            let mut report = None;
            measured(&mut maint_working, &mut || {
                report = Some(block_on(run(
                    &w.store, &w.index, &w.env, &settings, &policy, &tables,
                )))
            });
            let report = report.unwrap();
            maint_time += t.elapsed().as_secs_f64() * 1000.0;
            maints += 1;
            let r = &report.tables[TABLE];
            assert_eq!(r.error, None, "maintenance after commit {c}");
            health = r.health.clone().unwrap_or_default();
        }
        if c % 10_000 == 0 || c == commits {
            let objects = w.store.objects.borrow().len();
            println!(
                "| {c} | {:.1} | {} | {} | {} | {} | {} | {objects} | {:.2} | {:.1} | {:.1} | {:.1} |",
                c as f64 * FLUSH_MS as f64 / 86_400_000.0,
                health.metadata_bytes,
                health.snapshots,
                health.manifests,
                health.data_files,
                health.mean_file_bytes(),
                flush_time / flushes.max(1) as f64,
                maint_time / maints.max(1) as f64,
                working as f64 / 1_048_576.0,
                maint_working as f64 / 1_048_576.0,
            );
            (flush_time, flushes, maint_time, maints) = (0.0, 0, 0.0, 0);
            (working, maint_working) = (0, 0);
        }
    }
    let rows = super::memory::read_table(&w.store, NS, TABLE)
        .unwrap()
        .len() as u64;
    assert_eq!(rows, seq, "every event once");
    println!("rows read back: {rows} of {seq}");
}
