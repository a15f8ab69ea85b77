//! The Cloudflare glue (wasm32 only): the Worker's `fetch` entry point, which
//! authenticates and routes to a DoLake instance, and the `DoLake` Durable
//! Object, which performs what the core decides: WebSockets, SQLite storage,
//! logs.

mod catalog;
mod connections;
mod flusher;
mod index;
mod object;
mod r2;
mod sockets;
mod store;

use worker::{event, Context, Env, Method, Request, Response, Result};

use crate::admission::{front_door, FrontDoor};

/// A JSON response with a status.
pub(crate) fn json_response(body: &serde_json::Value, status: u16) -> Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// A setting: the secret `name`, else the var, when set and not empty.
pub(crate) fn setting(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|v| !v.is_empty())
}

/// The 401 of the Worker and of the object: the REST catalog's error shape
/// on catalog paths (engines' clients read it), DoLake's elsewhere.
pub(crate) fn unauthorized_response(path: &str) -> Result<Response> {
    let message = "missing or wrong `Authorization: Bearer <token>`";
    let body = if crate::catalog::is_catalog_path(path) {
        serde_json::json!({"error": {"message": message, "type": "NotAuthorizedException", "code": 401}})
    } else {
        serde_json::json!({"error": message, "kind": "unauthorized", "status": 401})
    };
    let mut res = json_response(&body, 401)?;
    res.headers_mut()
        .set("WWW-Authenticate", "Bearer realm=\"dolake\"")?;
    Ok(res)
}

/// The Worker: decides on every request before a Durable Object is named
/// (see [`front_door`]); getting a stub creates the instance, and its
/// constructor writes storage, so refusals and the unauthenticated health
/// check are answered here.
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    let path = url.path().to_string();
    let table = url
        .query_pairs()
        .find(|(k, _)| k == "table")
        .map(|(_, v)| v.into_owned());
    let secret = setting(&env, "DOLAKE_AUTH_TOKEN");
    let authorization = req.headers().get("Authorization")?;
    let door = front_door(
        &path,
        req.method() == Method::Get,
        table.as_deref(),
        authorization.as_deref(),
        secret.as_deref(),
    );
    match door {
        FrontDoor::Instance(name) => {
            let namespace = env.durable_object("DOLAKE")?;
            let stub = namespace.id_from_name(&name)?.get_stub()?;
            stub.fetch_with_request(req).await
        }
        FrontDoor::WorkerHealth => {
            json_response(&serde_json::json!({"status": "ok", "scope": "worker"}), 200)
        }
        FrontDoor::Unauthorized => {
            // The object is never asked, so it cannot count this refusal: the
            // log line is the record (DOLAKE_LOG_LEVEL=error silences it).
            let quiet = env
                .var("DOLAKE_LOG_LEVEL")
                .is_ok_and(|v| v.to_string() == "error");
            if !quiet {
                object::log(
                    "warn",
                    "unauthorized",
                    serde_json::json!({"path": path, "scope": "worker"}),
                );
            }
            unauthorized_response(&path)
        }
        FrontDoor::BadTable(e) => json_response(&e.to_json(), e.kind().http_status()),
        FrontDoor::NotFound => json_response(
            &serde_json::json!({
                "error": format!("no route for {path}; use /ws or /lakehouse/*"),
                "kind": "not_found",
                "status": 404,
            }),
            404,
        ),
    }
}
