//! The one error type of DoLake.
//!
//! Every failure carries an [`ErrorKind`]; the edges map the kind to what the
//! peer sees: a `nack` reason (and whether a retry can help) on the WebSocket,
//! an HTTP status with a JSON body on HTTP.

use std::fmt;

/// What went wrong, in terms a peer can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The message could not be understood (bad JSON, wrong shape, bad values).
    InvalidFormat,
    /// A source's sequence numbers cannot be tracked (too sparse).
    InvalidSequence,
    /// The durable buffer is over `maxBufferSize`; retry after a flush.
    BufferFull,
    /// The sender exceeded a rate limit; retry later.
    RateLimited,
    /// A message larger than `maxPayloadSize`.
    PayloadTooLarge,
    /// A single event larger than `maxEventSize`.
    EventTooLarge,
    /// DoLake holds as much per-source state as it may; retry much later.
    Overloaded,
    /// The configuration (`DOLAKE_CONFIG`) is invalid.
    Config,
    /// Durable Object storage failed.
    Storage,
    /// Object storage (R2) failed.
    Lake,
    /// No such route.
    NotFound,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// A bug or an unexpected runtime failure.
    Internal,
}

impl ErrorKind {
    /// The `nack` reason of the wire protocol.
    pub fn nack_reason(self) -> &'static str {
        match self {
            ErrorKind::InvalidFormat | ErrorKind::NotFound | ErrorKind::MethodNotAllowed => {
                "invalid_format"
            }
            ErrorKind::InvalidSequence => "invalid_sequence",
            ErrorKind::BufferFull => "buffer_full",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::EventTooLarge => "event_too_large",
            ErrorKind::Overloaded => "load_shedding",
            ErrorKind::Config | ErrorKind::Storage | ErrorKind::Lake | ErrorKind::Internal => {
                "internal_error"
            }
        }
    }

    /// Whether sending the same message again later can succeed.
    pub fn should_retry(self) -> bool {
        matches!(
            self,
            ErrorKind::BufferFull
                | ErrorKind::Overloaded
                | ErrorKind::RateLimited
                | ErrorKind::Storage
                | ErrorKind::Lake
                | ErrorKind::Internal
        )
    }

    /// The HTTP status for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidFormat | ErrorKind::InvalidSequence => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge | ErrorKind::EventTooLarge => 413,
            ErrorKind::RateLimited => 429,
            ErrorKind::BufferFull | ErrorKind::Overloaded => 503,
            ErrorKind::Lake => 502,
            ErrorKind::Config | ErrorKind::Storage | ErrorKind::Internal => 500,
        }
    }

    /// A short stable name for logs and JSON bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidFormat => "invalid_format",
            ErrorKind::InvalidSequence => "invalid_sequence",
            ErrorKind::BufferFull => "buffer_full",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::EventTooLarge => "event_too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Config => "config",
            ErrorKind::Storage => "storage",
            ErrorKind::Lake => "lake",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error with its kind and a message meant for the peer and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Shorthand for [`ErrorKind::InvalidFormat`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidFormat, message)
    }

    /// Shorthand for [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Shorthand for [`ErrorKind::Storage`].
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Storage, message)
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body of an HTTP error response.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.message,
            "kind": self.kind.as_str(),
            "status": self.kind.http_status(),
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

/// Result with DoLake's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_wire_reasons_and_statuses() {
        assert_eq!(ErrorKind::BufferFull.nack_reason(), "buffer_full");
        assert!(ErrorKind::BufferFull.should_retry());
        assert!(!ErrorKind::InvalidFormat.should_retry());
        assert_eq!(ErrorKind::InvalidSequence.nack_reason(), "invalid_sequence");
        assert!(!ErrorKind::InvalidSequence.should_retry());
        assert!(!ErrorKind::PayloadTooLarge.should_retry());
        assert_eq!(ErrorKind::PayloadTooLarge.http_status(), 413);
        assert_eq!(ErrorKind::NotFound.http_status(), 404);
        let e = Error::invalid("missing field `table`");
        assert_eq!(e.to_json()["error"], "missing field `table`");
        assert_eq!(e.to_json()["status"], 400);
    }
}
