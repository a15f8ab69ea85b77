//! The JSON wire protocol between DoSQL shards and DoLake.
//!
//! Field for field the protocol of the integration guide: every message has a
//! `type`, a `timestamp` and an optional `correlationId`; fields are camelCase.
//! [`decode_client_message`] never panics on any input; when it refuses a
//! message it still recovers the batch's `sequenceNumber` whenever it can be
//! read, so the client can match the `nack` to its pending batch.
//!
//! A valid `cdc_batch` is read in one typed pass that keeps each event's
//! text and never builds its images as maps ([`BatchEvents::Received`]); the
//! `digest` module owns the events' content digest that deduplication keeps.

mod client;
mod digest;
mod fast;
mod server;

pub use client::sniff_sequence_number;
pub use client::{
    decode_client_message, BatchEvents, Capabilities, CdcBatchMessage, CdcBatchType, CdcEvent,
    ClientMessage, ConnectMessage, DecodeError, DisconnectMessage, FlushRequestMessage,
    HeartbeatMessage, Operation, ReceivedEvents, MAX_ID_BYTES,
};
pub(crate) use digest::events_digest;
pub(crate) use fast::events_of;
pub use server::{
    AckDetails, AckMessage, AckStatus, BufferSnapshot, FlushResponseMessage, FlushResult,
    NackMessage, PongMessage, RateLimitInfo, ServerMessage, ServiceState, StatusMessage,
};
