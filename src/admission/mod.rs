//! Admission control: who may connect, how fast they may send, and when a
//! connection is closed for misbehaving (sans-IO; time is an argument).
//!
//! - [`TokenBucket`]: the limiter of new connections (`connectionsPerSecond`,
//!   `burstCapacity`) and of each connection's messages (`messagesPerSecond`).
//!   Its whole state is two numbers, kept in the socket attachment (messages)
//!   or in storage (connections), so it survives hibernation.
//! - [`ConnectionGate`]: decides on a WebSocket upgrade.
//! - [`MessageGate`]: per-connection state: message bucket and size strikes.
//! - [`check_token`]: the bearer token, compared in constant time.
//! - [`front_door`]: what the Worker does with a request before any Durable
//!   Object is involved (route, 400, 401, or its own health answer), so that
//!   no unauthenticated request creates an instance or writes storage.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::RateLimitConfig;
use crate::error::ErrorKind;

/// Size violations after which a connection is closed (code 1008).
pub const MAX_SIZE_STRIKES: u32 = 3;

/// A token bucket: `capacity` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenBucket {
    /// Tokens now (fractional while refilling).
    pub tokens: f64,
    /// When `tokens` was last brought up to date, Unix ms.
    pub updated_ms: i64,
}

/// A refusal by a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// When one token is back, ms from now.
    pub retry_after_ms: u64,
}

impl TokenBucket {
    /// A full bucket of `capacity` at `now`.
    pub fn full(capacity: u64, now: i64) -> Self {
        Self {
            tokens: capacity as f64,
            updated_ms: now,
        }
    }

    fn refill(&mut self, capacity: u64, per_second: u64, now: i64) {
        let elapsed = (now - self.updated_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed * per_second as f64 / 1000.0).min(capacity as f64);
        self.updated_ms = self.updated_ms.max(now);
    }

    /// Takes one token, or says when one is back.
    pub fn take(&mut self, capacity: u64, per_second: u64, now: i64) -> Result<u64, Throttled> {
        self.refill(capacity, per_second, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(self.tokens.floor() as u64)
        } else {
            let missing = 1.0 - self.tokens;
            let retry_after_ms = (missing * 1000.0 / per_second.max(1) as f64).ceil() as u64;
            Err(Throttled {
                retry_after_ms: retry_after_ms.max(1),
            })
        }
    }

    /// Whole tokens left at `now`, without taking one.
    pub fn remaining(&self, capacity: u64, per_second: u64, now: i64) -> u64 {
        let mut copy = *self;
        copy.refill(capacity, per_second, now);
        copy.tokens.floor() as u64
    }

    /// When the bucket is full again, Unix ms.
    pub fn full_at(&self, capacity: u64, per_second: u64, now: i64) -> i64 {
        let mut copy = *self;
        copy.refill(capacity, per_second, now);
        let missing = capacity as f64 - copy.tokens;
        now + (missing * 1000.0 / per_second.max(1) as f64).ceil() as i64
    }
}

/// Why something was refused, as counted (`refusals_total{reason}`): a
/// `nack`'s error kind, or a refusal before any message was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A `nack` (or an HTTP error) of this kind.
    Nack(ErrorKind),
    /// A request without the right bearer token.
    Unauthorized,
    /// An upgrade from an address at `maxConnectionsPerIp`.
    IpLimit,
}

impl Refusal {
    /// The counter's label: the nack reason, `unauthorized` or `ip_limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Nack(kind) => kind.nack_reason(),
            Refusal::Unauthorized => "unauthorized",
            Refusal::IpLimit => "ip_limit",
        }
    }
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRefusal {
    /// [`Refusal::IpLimit`] or [`Refusal::Nack`] of `RateLimited`.
    pub reason: Refusal,
    /// Human-readable.
    pub message: String,
    /// Seconds until a retry can succeed (for `Retry-After`).
    pub retry_after_s: u64,
    /// `X-RateLimit-Limit`.
    pub limit: u64,
    /// `X-RateLimit-Remaining`.
    pub remaining: u64,
    /// `X-RateLimit-Reset`, Unix seconds.
    pub reset_s: i64,
}

/// Decides on WebSocket upgrades.
pub struct ConnectionGate<'a> {
    limits: &'a RateLimitConfig,
}

impl<'a> ConnectionGate<'a> {
    /// The gate of `limits`.
    pub fn new(limits: &'a RateLimitConfig) -> Self {
        Self { limits }
    }

    /// A new connection from an address with `open_from_ip` sockets open;
    /// takes a token from `bucket` when admitted.
    pub fn admit(
        &self,
        bucket: &mut TokenBucket,
        open_from_ip: u64,
        now: i64,
    ) -> Result<(), UpgradeRefusal> {
        let (capacity, rate) = (
            self.limits.burst_capacity,
            self.limits.connections_per_second,
        );
        if open_from_ip >= self.limits.max_connections_per_ip {
            return Err(UpgradeRefusal {
                reason: Refusal::IpLimit,
                message: format!(
                    "this address already has {open_from_ip} open connections; at most {} are allowed (rateLimit.maxConnectionsPerIp)",
                    self.limits.max_connections_per_ip
                ),
                retry_after_s: 1,
                limit: self.limits.max_connections_per_ip,
                remaining: 0,
                reset_s: now.div_euclid(1000) + 1,
            });
        }
        match bucket.take(capacity, rate, now) {
            Ok(_) => Ok(()),
            Err(t) => Err(UpgradeRefusal {
                reason: Refusal::Nack(ErrorKind::RateLimited),
                message: format!(
                    "too many new connections; at most {rate} per second with bursts of {capacity} (rateLimit.connectionsPerSecond, rateLimit.burstCapacity)"
                ),
                retry_after_s: t.retry_after_ms.div_ceil(1000),
                limit: capacity,
                remaining: 0,
                reset_s: (bucket.full_at(capacity, rate, now) + 999).div_euclid(1000),
            }),
        }
    }
}

/// Per-connection admission state, kept in the socket's attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageGate {
    /// The message bucket (capacity and rate: `messagesPerSecond`).
    pub bucket: TokenBucket,
    /// Size violations so far.
    pub size_strikes: u32,
}

/// What a message may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageVerdict {
    /// Go on; `remaining` tokens left, the bucket is full at `reset_at`.
    Allowed {
        /// Tokens left.
        remaining: u64,
        /// When the bucket is full again, Unix ms.
        reset_at: i64,
    },
    /// Refuse with `rate_limited`; retry after this many ms.
    Throttled(u64),
}

impl MessageGate {
    /// A fresh connection's state.
    pub fn new(limits: &RateLimitConfig, now: i64) -> Self {
        Self {
            bucket: TokenBucket::full(limits.messages_per_second, now),
            size_strikes: 0,
        }
    }

    /// Counts one message against `messagesPerSecond`.
    pub fn on_message(&mut self, limits: &RateLimitConfig, now: i64) -> MessageVerdict {
        let rate = limits.messages_per_second;
        match self.bucket.take(rate, rate, now) {
            Ok(remaining) => MessageVerdict::Allowed {
                remaining,
                reset_at: self.bucket.full_at(rate, rate, now),
            },
            Err(t) => MessageVerdict::Throttled(t.retry_after_ms),
        }
    }

    /// Records a size violation; true when the connection must be closed.
    pub fn strike(&mut self) -> bool {
        self.size_strikes += 1;
        self.size_strikes >= MAX_SIZE_STRIKES
    }
}

/// Checks an `Authorization` header against the shared secret.
///
/// The header must be `<scheme> <token>` with the scheme `Bearer` in any case
/// (RFC 7235: auth schemes are case-insensitive, so `bearer x` and `BEARER x`
/// pass) and one or more spaces before the token (RFC 7235's `1*SP`). The
/// token must equal `secret` byte for byte: no trimming, so a trailing space or
/// a tab is part of the token and fails. The token is compared in constant
/// time for equal lengths (the length itself is not worth hiding); the scheme
/// is not secret and is compared plainly. An empty `secret` matches nothing.
pub fn check_token(authorization: Option<&str>, secret: &str) -> bool {
    let Some((scheme, rest)) = authorization.and_then(|h| h.split_once(' ')) else {
        return false;
    };
    if secret.is_empty() || !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let given = rest.trim_start_matches(' ');
    given.as_bytes().ct_eq(secret.as_bytes()).into()
}

/// What the Worker does with a request, decided before any Durable Object is
/// named: a Durable Object is created (and its constructor writes storage) as
/// soon as a stub is fetched, so every refusal must happen here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontDoor {
    /// Forward to the DoLake instance of this name.
    Instance(String),
    /// `GET /lakehouse/health` without valid credentials while authentication
    /// is on: the Worker answers `{"status":"ok","scope":"worker"}` itself.
    WorkerHealth,
    /// 401 `unauthorized`: authentication is on and the request lacks a valid
    /// `Authorization: Bearer <token>`.
    Unauthorized,
    /// 400 `invalid_format`: the `table` query parameter breaks the lake's
    /// table name rule (the error names it).
    BadTable(crate::Error),
    /// 404: not a DoLake route (`/ws`, `/ws/...`, `/lakehouse...`).
    NotFound,
}

/// The path of the health check that needs no token.
pub const HEALTH_PATH: &str = "/lakehouse/health";

/// The instance that keeps the table registry and answers the Iceberg REST
/// catalog (`/v1/*`, see `crate::catalog`). No `lakehouse-{table}` name can
/// equal it.
pub const CATALOG_INSTANCE: &str = "catalog";

/// Whether `path` is the Iceberg REST catalog's (`/v1` and below).
pub fn is_catalog_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Decides on a request at the Worker.
///
/// - `path`: the URL path; `is_get`: whether the method is GET;
/// - `table`: the first `table` query parameter, percent-decoded;
/// - `authorization`: the `Authorization` header; `secret`: the configured
///   `DOLAKE_AUTH_TOKEN` (`None` or empty: authentication is off).
///
/// In this order: a path that is no DoLake route is 404; a non-empty `table`
/// must pass [`crate::lake::validate_name`] (else 400, whoever asks: the name
/// is checked before the credentials, as it decides which instance would be
/// asked, and the rule is public); then, with authentication on, a request
/// without a valid token is 401, except `GET /lakehouse/health`, answered by
/// the Worker. Only then is an instance named: `lakehouse-{table}` for a
/// non-empty `table`, else `default` (the guide's "Multiple DoLake
/// Instances"). Catalog paths (`/v1/*`) go to [`CATALOG_INSTANCE`] under
/// the same authentication, whatever `table` says.
pub fn front_door(
    path: &str,
    is_get: bool,
    table: Option<&str>,
    authorization: Option<&str>,
    secret: Option<&str>,
) -> FrontDoor {
    let catalog = is_catalog_path(path);
    let routed = path == "/ws" || path.starts_with("/ws/") || path.starts_with("/lakehouse");
    if !routed && !catalog {
        return FrontDoor::NotFound;
    }
    let table = table.filter(|t| !t.is_empty() && !catalog);
    if let Some(table) = table {
        if let Err(e) = crate::lake::validate_name("table", table) {
            return FrontDoor::BadTable(e);
        }
    }
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        if !check_token(authorization, secret) {
            return if is_get && path == HEALTH_PATH {
                FrontDoor::WorkerHealth
            } else {
                FrontDoor::Unauthorized
            };
        }
    }
    FrontDoor::Instance(match table {
        _ if catalog => CATALOG_INSTANCE.to_string(),
        Some(table) => format!("lakehouse-{table}"),
        None => "default".to_string(),
    })
}

#[cfg(test)]
mod tests;
