//! dolake-loadgen: N DoSQL shards streaming CDC batches to DoLake, with a
//! progress display, a latency summary and an optional end-to-end check of the
//! lake. Native only; `--help` lists the options.

#[cfg(not(target_arch = "wasm32"))]
mod args;
#[cfg(not(target_arch = "wasm32"))]
mod gen;
#[cfg(not(target_arch = "wasm32"))]
mod http;
#[cfg(not(target_arch = "wasm32"))]
mod shard;
#[cfg(not(target_arch = "wasm32"))]
mod verify;

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    native::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use crate::args::{self, Args};
    use crate::shard::{Live, Shard, ShardReport};
    use crate::verify::{self, Verification};
    use serde_json::{json, Value};
    use std::collections::BTreeMap;
    use std::io::{IsTerminal, Write};
    use std::process::ExitCode;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    pub fn main() -> ExitCode {
        let args = match args::parse(std::env::args().skip(1)) {
            Ok(Some(a)) => a,
            Ok(None) => {
                print!("{}", args::USAGE);
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("dolake-loadgen: {e}");
                return ExitCode::from(2);
            }
        };
        let args = Arc::new(args);
        let live = Arc::new(Live::default());
        let started = Instant::now();
        let handles: Vec<_> = (0..args.shards)
            .map(|i| {
                let shard = Shard::new(args.clone(), live.clone(), i);
                thread::Builder::new()
                    .name(format!("shard-{i}"))
                    .spawn(move || shard.run(started))
                    .expect("spawn a shard thread")
            })
            .collect();
        progress(&args, &live, started);
        let reports: Vec<ShardReport> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| ShardReport {
                    error: Some("shard thread panicked".into()),
                    ..Default::default()
                })
            })
            .collect();
        let elapsed = started.elapsed();

        let lines: Vec<String> = reports
            .iter()
            .flat_map(|r| r.acked_lines.iter().cloned())
            .collect();
        if let Some(path) = &args.acked_out {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("dolake-loadgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        let verification = args.verify.then(|| {
            eprintln!("verifying: flushing, exporting the lake, running verify_lake.py ...");
            verify::run(&args, &lines)
        });
        let summary = summarize(&args, &reports, elapsed, verification.as_ref());
        print_summary(&summary, verification.as_ref());
        if let Some(path) = &args.out {
            let text = serde_json::to_string_pretty(&summary).expect("summary serializes");
            if let Err(e) = std::fs::write(path, text + "\n") {
                eprintln!("dolake-loadgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        if summary["ok"] == Value::Bool(true) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    fn progress(args: &Args, live: &Live, started: Instant) {
        let tty = std::io::stderr().is_terminal();
        let quiet = args.quiet;
        let total = args
            .batches
            .filter(|_| args.duration.is_none())
            .map(|m| m * args.batch_size as u64 * args.shards as u64);
        let tick = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        let mut next = Instant::now() + tick;
        let mut last_acked = 0u64;
        let mut last_at = Instant::now();
        let mut wrote = false;
        while live.shards_done.load(Ordering::Relaxed) < args.shards as u64 {
            thread::sleep(Duration::from_millis(20));
            if quiet || Instant::now() < next {
                continue;
            }
            next += tick;
            let acked = live.events_acked.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate =
                (acked - last_acked) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-3);
            (last_acked, last_at) = (acked, now);
            let elapsed = started.elapsed().as_secs_f64();
            let avg = acked as f64 / elapsed.max(1e-3);
            let done = live.shards_done.load(Ordering::Relaxed);
            let line = format!(
                "{acked} events acked ({} batches), {rate:.0} ev/s now, {avg:.0} ev/s avg, {elapsed:.1}s, shards done {done}/{}",
                live.batches_acked.load(Ordering::Relaxed),
                args.shards
            );
            let mut err = std::io::stderr().lock();
            if tty {
                let bar = total.map_or(String::new(), |t| {
                    let frac = (acked as f64 / t.max(1) as f64).min(1.0);
                    let filled = (frac * 30.0).round() as usize;
                    format!(
                        "[{}{}] {:>3.0}% ",
                        "#".repeat(filled),
                        "-".repeat(30 - filled),
                        frac * 100.0
                    )
                });
                let _ = write!(err, "\r{bar}{line}\x1b[K");
                wrote = true;
            } else {
                let _ = writeln!(err, "progress: {line}");
            }
            let _ = err.flush();
        }
        if wrote {
            let _ = writeln!(std::io::stderr());
        }
    }

    fn percentile(sorted: &[u64], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
    }

    fn add(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
        for (k, v) in from {
            *into.entry(k.clone()).or_default() += v;
        }
    }

    fn summarize(
        args: &Args,
        reports: &[ShardReport],
        elapsed: Duration,
        verification: Option<&Verification>,
    ) -> Value {
        let sum = |f: fn(&ShardReport) -> u64| reports.iter().map(f).sum::<u64>();
        let mut lat: Vec<u64> = reports
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        lat.sort_unstable();
        let mean = if lat.is_empty() {
            0.0
        } else {
            lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0
        };
        let (mut acks, mut nacks) = (BTreeMap::new(), BTreeMap::new());
        for r in reports {
            add(&mut acks, &r.acks_by_status);
            add(&mut nacks, &r.nacks_by_reason);
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        let events_sent = sum(|r| r.events_sent);
        let events_acked = sum(|r| r.events_acked);
        let errors: Vec<String> = reports
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.source_do_id)))
            .collect();
        let ok = errors.is_empty()
            && events_acked == events_sent
            && verification.is_none_or(|v| v.passed);
        json!({
            "ok": ok,
            "config": {
                "url": args.url, "path": args.path, "shards": args.shards, "batches": args.batches,
                "durationS": args.duration.map(|d| d.as_secs_f64()), "batchSize": args.batch_size,
                "tables": args.tables, "rowBytes": args.row_bytes,
                "mix": format!("{}:{}:{}", args.mix[0], args.mix[1], args.mix[2]),
                "heartbeatMs": args.heartbeat.map(|d| d.as_millis() as u64), "seed": args.seed,
                "sourcePrefix": args.source_prefix,
            },
            "elapsedSeconds": secs,
            // This process's CPU time (user + system), from /proc (Linux):
            // the client must not be the bottleneck of a measurement.
            "clientCpuSeconds": super::own_cpu_seconds(),
            "batchesSent": sum(|r| r.batches_sent),
            "batchesAcked": sum(|r| r.batches_acked),
            "eventsSent": events_sent,
            "eventsAcked": events_acked,
            "eventsPerSecond": events_acked as f64 / secs,
            "batchesPerSecond": sum(|r| r.batches_acked) as f64 / secs,
            "sends": sum(|r| r.sends),
            "ackLatencyMs": {
                "count": lat.len(), "mean": mean, "p50": percentile(&lat, 50.0), "p95": percentile(&lat, 95.0),
                "p99": percentile(&lat, 99.0), "max": percentile(&lat, 100.0),
            },
            "acksByStatus": acks,
            "nacksByReason": nacks,
            "droppedBatches": sum(|r| r.dropped_batches),
            "droppedEvents": sum(|r| r.dropped_events),
            "duplicates": sum(|r| r.duplicates),
            "reconnects": sum(|r| r.reconnects),
            "connectFailures": sum(|r| r.connect_failures),
            "heartbeats": sum(|r| r.heartbeats),
            "pongs": sum(|r| r.pongs),
            "delayHintMs": sum(|r| r.delay_hint_ms),
            "shardErrors": errors,
            "verification": verification,
            "shards": reports,
        })
    }

    fn print_summary(s: &Value, verification: Option<&Verification>) {
        let l = &s["ackLatencyMs"];
        let map = |v: &Value| {
            let m = v.as_object().cloned().unwrap_or_default();
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        println!("── dolake-loadgen summary ──");
        println!(
            "shards {}  batch size {}  tables {}  elapsed {:.2}s",
            s["config"]["shards"],
            s["config"]["batchSize"],
            s["config"]["tables"],
            s["elapsedSeconds"].as_f64().unwrap_or(0.0)
        );
        println!(
            "events sent {}  acked {}  ({} batches sent, {} acked, {} sends)",
            s["eventsSent"], s["eventsAcked"], s["batchesSent"], s["batchesAcked"], s["sends"]
        );
        println!(
            "throughput {:.0} events/s, {:.1} batches/s",
            s["eventsPerSecond"].as_f64().unwrap_or(0.0),
            s["batchesPerSecond"].as_f64().unwrap_or(0.0)
        );
        let ms = |k: &str| l[k].as_f64().unwrap_or(0.0);
        println!(
            "ack latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}",
            ms("p50"),
            ms("p95"),
            ms("p99"),
            ms("max"),
            ms("mean")
        );
        println!("acks by status: {}", map(&s["acksByStatus"]));
        println!("nacks by reason: {}", map(&s["nacksByReason"]));
        println!(
            "dropped batches {} ({} events)  duplicates {}  reconnects {}  connect failures {}  heartbeats {} / pongs {}",
            s["droppedBatches"], s["droppedEvents"], s["duplicates"], s["reconnects"], s["connectFailures"], s["heartbeats"], s["pongs"]
        );
        for e in s["shardErrors"].as_array().into_iter().flatten() {
            println!("shard error: {}", e.as_str().unwrap_or_default());
        }
        if let Some(v) = verification {
            println!(
                "verification: {}  ({} flush requests, {} events flushed in {:.1}s; {} objects exported; {} expected events checked in {:.1}s)",
                if v.passed { "PASSED" } else { "FAILED" },
                v.flush_requests, v.events_flushed, v.flush_seconds, v.objects_exported, v.expected_events, v.check_seconds
            );
            for line in v.output.lines().take(40) {
                println!("  {line}");
            }
            if let Some(e) = &v.error {
                println!("  error: {e}");
            }
            if let Some(d) = &v.dir {
                println!("  files kept in {d}");
            }
        }
        println!(
            "result: {}",
            if s["ok"] == Value::Bool(true) {
                "OK"
            } else {
                "FAILED"
            }
        );
    }
}

/// User + system CPU seconds of this process (`/proc/self/stat`, Linux;
/// `None` elsewhere). Clock ticks are 100 per second on Linux.
#[cfg(not(target_arch = "wasm32"))]
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
