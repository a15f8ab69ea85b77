//! The JSON wire protocol.
