//! `--verify`: flush until the buffer is empty, export the warehouse through
//! the R2 inspector, and check it with tests/e2e/verify_lake.py.

use crate::args::Args;
use crate::http::{encode, request};
use serde::Serialize;
use serde_json::Value;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub passed: bool,
    pub flush_requests: u64,
    pub events_flushed: u64,
    pub flush_seconds: f64,
    pub objects_exported: u64,
    pub expected_events: u64,
    pub check_seconds: f64,
    pub output: String,
    pub error: Option<String>,
    pub dir: Option<String>,
}

const HTTP_TIMEOUT: Duration = Duration::from_secs(300);

pub fn run(args: &Args, acked_lines: &[String]) -> Verification {
    let mut v = Verification {
        expected_events: acked_lines.len() as u64,
        ..Default::default()
    };
    let deadline = Instant::now() + args.verify_timeout;
    let dir = std::env::temp_dir().join(format!(
        "dolake-loadgen-verify-{}-{}",
        std::process::id(),
        crate::shard::now_ms()
    ));
    let result = (|| -> Result<(), String> {
        let started = Instant::now();
        flush_until_empty(args, deadline, &mut v)?;
        v.flush_seconds = started.elapsed().as_secs_f64();
        let warehouse = dir.join("warehouse");
        fs::create_dir_all(&warehouse).map_err(|e| format!("{}: {e}", warehouse.display()))?;
        v.objects_exported = export(args, &warehouse)?;
        let expected = dir.join("expected.jsonl");
        write_lines(&expected, acked_lines)?;
        let started = Instant::now();
        let (ok, output) = check(args, &warehouse, &expected, deadline)?;
        v.check_seconds = started.elapsed().as_secs_f64();
        v.output = output;
        v.passed = ok;
        Ok(())
    })();
    if let Err(e) = result {
        v.error = Some(e);
    }
    if v.passed && !args.keep {
        let _ = fs::remove_dir_all(&dir);
    } else {
        v.dir = Some(dir.display().to_string());
    }
    v
}

fn flush_until_empty(args: &Args, deadline: Instant, v: &mut Verification) -> Result<(), String> {
    let base = args.http_base();
    let token = args.auth_token.as_deref();
    let mut last = String::new();
    loop {
        let res = request(
            "POST",
            &format!("{base}/lakehouse/flush"),
            token,
            HTTP_TIMEOUT,
        )?;
        v.flush_requests += 1;
        let body: Value = serde_json::from_slice(&res.body).unwrap_or(Value::Null);
        v.events_flushed += body["eventsFlushed"].as_u64().unwrap_or(0);
        if res.status != 200 {
            last = format!("flush answered {}: {}", res.status, res.text());
        }
        let status = request(
            "GET",
            &format!("{base}/lakehouse/status"),
            token,
            HTTP_TIMEOUT,
        )?;
        let status: Value = serde_json::from_slice(&status.body)
            .map_err(|e| format!("status is not JSON ({e}): {}", status.text()))?;
        let left = status["buffer"]["eventCount"].as_u64();
        if left == Some(0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the buffer still holds {left:?} events after {:?} of flushing; {last}",
                args.verify_timeout
            ));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

fn export(args: &Args, warehouse: &Path) -> Result<u64, String> {
    let inspector = args
        .inspector
        .as_deref()
        .expect("--verify needs --inspector");
    let list = request("GET", &format!("{inspector}/list"), None, HTTP_TIMEOUT)?;
    if list.status != 200 {
        return Err(format!("inspector /list: {} {}", list.status, list.text()));
    }
    let keys: Vec<String> =
        serde_json::from_slice(&list.body).map_err(|e| format!("inspector /list: {e}"))?;
    let prefix = format!("{}/", args.r2_prefix);
    let mut count = 0;
    for key in keys.iter().filter(|k| k.starts_with(&prefix)) {
        let rel = &key[prefix.len()..];
        if rel
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(format!("refusing to export the odd key {key:?}"));
        }
        let res = request(
            "GET",
            &format!("{inspector}/get?key={}", encode(key)),
            None,
            HTTP_TIMEOUT,
        )?;
        if res.status != 200 {
            return Err(format!("cannot read {key}: {}", res.status));
        }
        let file = warehouse.join(rel);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(&file, &res.body).map_err(|e| format!("{}: {e}", file.display()))?;
        count += 1;
    }
    Ok(count)
}

fn write_lines(path: &PathBuf, lines: &[String]) -> Result<(), String> {
    let mut f = std::io::BufWriter::new(fs::File::create(path).map_err(|e| e.to_string())?);
    for line in lines {
        writeln!(f, "{line}").map_err(|e| e.to_string())?;
    }
    f.flush().map_err(|e| e.to_string())
}

fn check(
    args: &Args,
    warehouse: &Path,
    expected: &Path,
    deadline: Instant,
) -> Result<(bool, String), String> {
    let log = warehouse.with_file_name("verify_lake.log");
    let out = fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(&args.python)
        .arg(&args.verify_script)
        .arg("--warehouse")
        .arg(warehouse)
        .arg("--namespace")
        .arg(&args.namespace)
        .arg("--expected")
        .arg(expected)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", args.python.display()))?;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "verify_lake.py timed out: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            None => thread::sleep(Duration::from_millis(100)),
        }
    };
    let output = fs::read_to_string(&log).unwrap_or_default();
    Ok((status.success(), output))
}
