//! The connections' states, in the sockets' attachments and in memory.
//!
//! The attachment is what hibernation keeps, and it is written with every
//! change, as before. Reading it back (a structured clone, then serde over
//! the JavaScript object) cost 7.5 % of intake's CPU in a workerd profile of
//! 100-event batches (`make profile`), so this instance keeps a copy of each
//! state it saved and reads that. A socket is tied to its copy by a property
//! on its JavaScript object named for this instance: after hibernation or in
//! another instance the objects are new or the name differs, and the state
//! is read from the attachment.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use worker::js_sys::Reflect;
use worker::wasm_bindgen::JsValue;
use worker::{Result, WebSocket};

use crate::session::Connection;

/// Most copies kept; past it they are dropped (a socket that closed without
/// a close event leaves its copy behind), and read from attachments again.
const MAX_COPIES: usize = 20_000;

/// The copies of the connections' states this instance saved.
pub(super) struct Connections {
    /// The property that ties a socket to its copy, unique to this instance.
    key: JsValue,
    next: Cell<u32>,
    copies: RefCell<HashMap<u32, Connection>>,
}

impl Connections {
    /// No copies yet; `instance` tells this instance's property apart.
    pub(super) fn new(instance: &str) -> Self {
        Self {
            key: JsValue::from_str(&format!("__dolake_{instance}")),
            next: Cell::new(0),
            copies: RefCell::new(HashMap::new()),
        }
    }

    fn id_of(&self, ws: &WebSocket) -> Option<u32> {
        let raw: &JsValue = ws.as_ref();
        let id = Reflect::get(raw, &self.key).ok()?.as_f64()?;
        Some(id as u32)
    }

    /// The socket's state: this instance's copy, else its attachment.
    pub(super) fn read(&self, ws: &WebSocket) -> Option<Connection> {
        if let Some(id) = self.id_of(ws) {
            if let Some(conn) = self.copies.borrow().get(&id) {
                return Some(conn.clone());
            }
        }
        ws.deserialize_attachment::<Connection>().ok().flatten()
    }

    /// Writes the socket's state into its attachment, and keeps a copy.
    pub(super) fn save(&self, ws: &WebSocket, conn: &Connection) -> Result<()> {
        ws.serialize_attachment(conn)?;
        let id = match self.id_of(ws) {
            Some(id) => id,
            None => {
                let id = self.next.get();
                self.next.set(id.wrapping_add(1));
                let raw: &JsValue = ws.as_ref();
                if !Reflect::set(raw, &self.key, &JsValue::from(id)).unwrap_or(false) {
                    return Ok(());
                }
                id
            }
        };
        let mut copies = self.copies.borrow_mut();
        if copies.len() >= MAX_COPIES && !copies.contains_key(&id) {
            copies.clear();
        }
        copies.insert(id, conn.clone());
        Ok(())
    }

    /// Drops the copy of a socket that closed.
    pub(super) fn forget(&self, ws: &WebSocket) {
        if let Some(id) = self.id_of(ws) {
            self.copies.borrow_mut().remove(&id);
        }
    }
}
