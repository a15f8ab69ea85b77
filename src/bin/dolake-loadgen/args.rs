//! Command-line options, parsed by hand (no extra crate).

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
dolake-loadgen: N DoSQL shards streaming CDC batches to DoLake over WebSockets

USAGE: dolake-loadgen [OPTIONS]

  --url URL             DoLake base URL, ws:// or http:// [ws://127.0.0.1:8787]
  --path PATH           WebSocket path [/ws]
  --shards N            concurrent shards, one thread each [4]
  --batches M           batches per shard [100]
  --duration-s S        stop starting batches after S seconds (with --batches: whichever first)
  --batch-size K        events per batch [100]
  --tables a,b,c        tables the events go to [users,orders]
  --row-bytes B         approximate JSON size of a row image [200]
  --mix I:U:D           weights of INSERT:UPDATE:DELETE [70:20:10]
  --heartbeat-ms MS     heartbeat interval, 0 = none [5000]
  --auth-token TOKEN    sent as `Authorization: Bearer TOKEN` (WebSocket and HTTP)
  --seed N              seed of the generator; same seed, same events [1]
  --source-prefix P     sourceDoId prefix [loadgen-<seed>]; shard i is <P>-<i>
  --ack-timeout-ms MS   no reply for this long: reconnect and resend [30000]
  --max-retries N       drop a batch after N retryable nacks [50]
  --verify              flush, export the lake and check every acked event is there once
  --inspector URL       the R2 inspector (GET /list, /get?key=) for --verify
  --r2-prefix P         warehouse prefix in the bucket [warehouse]
  --namespace NS        Iceberg namespace [default]
  --python PATH         python with pyiceberg/duckdb [<repo>/.tools/venv/bin/python]
  --verify-script PATH  [<repo>/tests/e2e/verify_lake.py]
  --verify-timeout-s S  bound on flushing + export + check [600]
  --keep                keep the verification directory
  --out FILE            write the summary as JSON
  --acked-out FILE      write every acked event as JSONL (verify_lake.py's --expected)
  --quiet               no progress display
  -h, --help            this text
";

#[derive(Debug, Clone)]
pub struct Args {
    pub url: String,
    pub path: String,
    pub shards: usize,
    pub batches: Option<u64>,
    pub duration: Option<Duration>,
    pub batch_size: usize,
    pub tables: Vec<String>,
    pub row_bytes: usize,
    pub mix: [u32; 3],
    pub heartbeat: Option<Duration>,
    pub auth_token: Option<String>,
    pub seed: u64,
    pub source_prefix: String,
    pub ack_timeout: Duration,
    pub max_retries: u32,
    pub verify: bool,
    pub inspector: Option<String>,
    pub r2_prefix: String,
    pub namespace: String,
    pub python: PathBuf,
    pub verify_script: PathBuf,
    pub verify_timeout: Duration,
    pub keep: bool,
    pub out: Option<PathBuf>,
    pub acked_out: Option<PathBuf>,
    pub quiet: bool,
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: not a valid number: {v:?}"))
}

pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        url: "ws://127.0.0.1:8787".into(),
        path: "/ws".into(),
        shards: 4,
        batches: None,
        duration: None,
        batch_size: 100,
        tables: vec!["users".into(), "orders".into()],
        row_bytes: 200,
        mix: [70, 20, 10],
        heartbeat: Some(Duration::from_millis(5000)),
        auth_token: None,
        seed: 1,
        source_prefix: String::new(),
        ack_timeout: Duration::from_millis(30_000),
        max_retries: 50,
        verify: false,
        inspector: None,
        r2_prefix: "warehouse".into(),
        namespace: "default".into(),
        python: root.join(".tools/venv/bin/python"),
        verify_script: root.join("tests/e2e/verify_lake.py"),
        verify_timeout: Duration::from_secs(600),
        keep: false,
        out: None,
        acked_out: None,
        quiet: false,
    };
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--url" => a.url = value()?,
            "--path" => a.path = value()?,
            "--shards" => a.shards = num(&flag, &value()?)?,
            "--batches" => a.batches = Some(num(&flag, &value()?)?),
            "--duration-s" => {
                let s: f64 = num(&flag, &value()?)?;
                if !(s.is_finite() && s > 0.0) {
                    return Err("--duration-s must be positive".into());
                }
                a.duration = Some(Duration::from_secs_f64(s));
            }
            "--batch-size" => a.batch_size = num(&flag, &value()?)?,
            "--tables" => {
                a.tables = value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect()
            }
            "--row-bytes" => a.row_bytes = num(&flag, &value()?)?,
            "--mix" => {
                let v = value()?;
                let parts: Vec<&str> = v.split(':').collect();
                if parts.len() != 3 {
                    return Err(format!("--mix: expected I:U:D, got {v:?}"));
                }
                for (slot, p) in a.mix.iter_mut().zip(parts) {
                    *slot = num("--mix", p)?;
                }
                if a.mix[0] == 0 {
                    return Err("--mix: the INSERT weight must be positive".into());
                }
            }
            "--heartbeat-ms" => {
                let ms: u64 = num(&flag, &value()?)?;
                a.heartbeat = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--auth-token" => a.auth_token = Some(value()?),
            "--seed" => a.seed = num(&flag, &value()?)?,
            "--source-prefix" => a.source_prefix = value()?,
            "--ack-timeout-ms" => a.ack_timeout = Duration::from_millis(num(&flag, &value()?)?),
            "--max-retries" => a.max_retries = num(&flag, &value()?)?,
            "--verify" => a.verify = true,
            "--inspector" => a.inspector = Some(value()?.trim_end_matches('/').to_string()),
            "--r2-prefix" => a.r2_prefix = value()?.trim_matches('/').to_string(),
            "--namespace" => a.namespace = value()?,
            "--python" => a.python = value()?.into(),
            "--verify-script" => a.verify_script = value()?.into(),
            "--verify-timeout-s" => a.verify_timeout = Duration::from_secs(num(&flag, &value()?)?),
            "--keep" => a.keep = true,
            "--out" => a.out = Some(value()?.into()),
            "--acked-out" => a.acked_out = Some(value()?.into()),
            "--quiet" => a.quiet = true,
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    if a.shards == 0 || a.batch_size == 0 {
        return Err("--shards and --batch-size must be positive".into());
    }
    if a.tables.is_empty() {
        return Err("--tables: at least one table".into());
    }
    if a.batches.is_none() && a.duration.is_none() {
        a.batches = Some(100);
    }
    if a.verify && a.inspector.is_none() {
        return Err(
            "--verify needs --inspector URL (the R2 inspector of tests/e2e/server.mjs)".into(),
        );
    }
    if a.source_prefix.is_empty() {
        a.source_prefix = format!("loadgen-{}", a.seed);
    }
    a.url = a.url.trim_end_matches('/').to_string();
    if !a.path.starts_with('/') {
        a.path.insert(0, '/');
    }
    Ok(Some(a))
}

impl Args {
    /// Whether shards keep the acked events.
    pub fn keep_acked(&self) -> bool {
        self.verify || self.acked_out.is_some()
    }

    /// `ws://host:port` whatever scheme `--url` used.
    pub fn ws_base(&self) -> String {
        swap_scheme(&self.url, "ws")
    }

    /// `http://host:port`.
    pub fn http_base(&self) -> String {
        swap_scheme(&self.url, "http")
    }
}

fn swap_scheme(url: &str, to: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let secure = url.starts_with("wss://") || url.starts_with("https://");
    format!("{to}{}://{rest}", if secure { "s" } else { "" })
}
