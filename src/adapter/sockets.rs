//! The object's WebSocket entry points as the runtime calls them
//! (`webSocketMessage`, `webSocketClose`, `webSocketError`), handing each to
//! the `DurableObject` methods in `object.rs`.
//!
//! `#[durable_object]` would generate these too, but its `webSocketMessage`
//! turns a text frame into a `String` with wasm-bindgen's string passing,
//! which copies the text into WASM memory one character at a time in a
//! JavaScript loop: a tenth of intake's CPU in a workerd profile of 100-event
//! batches (`make profile`). Here the runtime's `TextEncoder` encodes the
//! frame natively, straight into WASM memory.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use worker::{js_sys, wasm_bindgen_futures, WebSocketIncomingMessage};

use super::object::DoLake;
use crate::task::{start, Started};

#[wasm_bindgen]
extern "C" {
    /// The runtime's `TextEncoder` (UTF-8; a lone surrogate becomes U+FFFD,
    /// as in wasm-bindgen's own string passing).
    #[wasm_bindgen(js_name = TextEncoder)]
    type JsTextEncoder;

    #[wasm_bindgen(constructor, js_class = "TextEncoder")]
    fn new() -> JsTextEncoder;

    #[wasm_bindgen(method, js_class = "TextEncoder")]
    fn encode(this: &JsTextEncoder, text: &JsValue) -> js_sys::Uint8Array;

    #[wasm_bindgen(method, js_class = "TextEncoder", js_name = encodeInto)]
    fn encode_into(this: &JsTextEncoder, text: &JsValue, into: &js_sys::Uint8Array) -> Encoded;

    /// What `encodeInto` did.
    type Encoded;

    /// Bytes written.
    #[wasm_bindgen(method, getter)]
    fn written(this: &Encoded) -> f64;
}

/// Frames up to this many UTF-16 units are encoded straight into WASM
/// memory, into room for their longest UTF-8 form (3 bytes a unit); longer
/// ones through a buffer of their exact size, to keep the peak small.
const DIRECT_UNITS: usize = 1 << 20;

thread_local! {
    static ENCODER: JsTextEncoder = JsTextEncoder::new();
}

/// A frame as the runtime delivers it: a JavaScript string (text frame) or
/// an `ArrayBuffer` (binary frame).
fn incoming(message: JsValue) -> WebSocketIncomingMessage {
    if !message.is_string() {
        return WebSocketIncomingMessage::Binary(js_sys::Uint8Array::new(&message).to_vec());
    }
    let units = message.unchecked_ref::<js_sys::JsString>().length() as usize;
    let bytes = if units <= DIRECT_UNITS {
        let room = units * 3;
        let mut bytes: Vec<u8> = Vec::with_capacity(room);
        ENCODER.with(|encoder| {
            // SAFETY: the view is the vector's spare room, and nothing in
            // WASM runs (so memory cannot grow) while the runtime writes it;
            // the length is set to what it wrote, within the room.
            let view = unsafe { js_sys::Uint8Array::view_mut_raw(bytes.as_mut_ptr(), room) };
            let written = encoder.encode_into(&message, &view).written() as usize;
            unsafe { bytes.set_len(written.min(room)) };
        });
        bytes
    } else {
        ENCODER.with(|encoder| encoder.encode(&message)).to_vec()
    };
    // SAFETY: a TextEncoder writes UTF-8 only (the Encoding Standard: a lone
    // surrogate becomes U+FFFD), and every byte it wrote is kept.
    WebSocketIncomingMessage::String(unsafe { String::from_utf8_unchecked(bytes) })
}

/// Runs a handler at once (most frames: the batch is stored and acked
/// synchronously), returning its outcome as a plain value or a thrown error;
/// one that must wait (a flush, setting the alarm) goes on as a promise the
/// runtime awaits, owning what it uses (see `crate::task`).
fn settle(handler: impl Future<Output = worker::Result<()>> + 'static) -> Result<JsValue, JsValue> {
    let outcome =
        |result: worker::Result<()>| result.map(|()| JsValue::UNDEFINED).map_err(JsValue::from);
    match start(handler) {
        Started::Done(result) => outcome(result),
        Started::Waiting(rest) => Ok(wasm_bindgen_futures::future_to_promise(async move {
            outcome(AssertUnwindSafe(rest).await)
        })
        .into()),
    }
}

#[wasm_bindgen(
    wasm_bindgen = ::worker::wasm_bindgen,
    js_sys = ::worker::js_sys
)]
impl DoLake {
    /// `webSocketMessage(ws, message)`.
    #[wasm_bindgen(js_name = webSocketMessage)]
    pub fn on_socket_message(
        &self,
        ws: worker::worker_sys::web_sys::WebSocket,
        message: JsValue,
    ) -> Result<JsValue, JsValue> {
        let object = Rc::clone(&self.object);
        let message = incoming(message);
        settle(async move { object.websocket_message(ws.into(), message).await })
    }

    /// `webSocketClose(ws, code, reason, wasClean)`.
    #[wasm_bindgen(js_name = webSocketClose)]
    pub fn on_socket_close(
        &self,
        ws: worker::worker_sys::web_sys::WebSocket,
        code: usize,
        reason: String,
        was_clean: bool,
    ) -> Result<JsValue, JsValue> {
        let object = Rc::clone(&self.object);
        settle(async move {
            object
                .websocket_close(ws.into(), code, reason, was_clean)
                .await
        })
    }

    /// `webSocketError(ws, error)`.
    #[wasm_bindgen(js_name = webSocketError)]
    pub fn on_socket_error(
        &self,
        ws: worker::worker_sys::web_sys::WebSocket,
        error: JsValue,
    ) -> Result<JsValue, JsValue> {
        let object = Rc::clone(&self.object);
        settle(async move { object.websocket_error(ws.into(), error.into()).await })
    }
}
