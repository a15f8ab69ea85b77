//! The Cloudflare glue (wasm32 only): the Worker's `fetch` entry point, which
//! routes to a DoLake instance, and the `DoLake` Durable Object, which performs
//! what the core decides: WebSockets, SQLite storage, logs.

mod flusher;
mod object;
mod r2;
mod store;

use worker::{event, Context, Env, Request, Response, Result};

/// A JSON response with a status.
pub(crate) fn json_response(body: &serde_json::Value, status: u16) -> Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// The instance a request goes to: `lakehouse-{table}` when a `table` query
/// parameter is given, else `default` (the guide's "Multiple DoLake Instances").
fn instance_name(url: &worker::Url) -> String {
    match url.query_pairs().find(|(k, _)| k == "table") {
        Some((_, table)) if !table.is_empty() => format!("lakehouse-{table}"),
        _ => "default".to_string(),
    }
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    let path = url.path();
    if path == "/ws" || path.starts_with("/ws/") || path.starts_with("/lakehouse") {
        let namespace = env.durable_object("DOLAKE")?;
        let stub = namespace.id_from_name(&instance_name(&url))?.get_stub()?;
        return stub.fetch_with_request(req).await;
    }
    json_response(
        &serde_json::json!({
            "error": format!("no route for {path}; use /ws or /lakehouse/*"),
            "kind": "not_found",
            "status": 404,
        }),
        404,
    )
}
