use std::rc::Rc;

use super::*;
use crate::flush::memory::{block_on, Crash, MemoryStore};

/// The registry's body for `request` (not a load-table).
fn body(registry: &Registry, request: &CatalogRequest) -> Value {
    match registry.answer(request).unwrap() {
        Answer::Body(b) => b,
        other => panic!("expected a body, got {other:?}"),
    }
}

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn id(ns: &str, name: &str) -> TableId {
    TableId {
        namespace: ns.into(),
        name: name.into(),
    }
}

#[test]
fn routes_reads_and_refuses_writes() {
    assert_eq!(route("GET", "/v1/config", &[]), Ok(CatalogRequest::Config));
    assert_eq!(
        route(
            "GET",
            "/v1/namespaces",
            &q(&[("pageSize", "2"), ("pageToken", "a")])
        ),
        Ok(CatalogRequest::ListNamespaces {
            parent: None,
            page: Page {
                token: Some("a".into()),
                size: Some(2)
            }
        })
    );
    assert_eq!(
        route("HEAD", "/v1/namespaces/default", &[]),
        Ok(CatalogRequest::Namespace {
            namespace: "default".into(),
        })
    );
    assert_eq!(
        route("GET", "/v1/namespaces/default/tables/users", &[]),
        Ok(CatalogRequest::Table {
            namespace: "default".into(),
            table: "users".into(),
        })
    );
    // Escaped segments are decoded; a two-level namespace does not exist.
    assert_eq!(
        route("GET", "/v1/namespaces/a%2Db/tables", &[]),
        Ok(CatalogRequest::ListTables {
            namespace: "a-b".into(),
            page: Page::default()
        })
    );
    let two = route("GET", "/v1/namespaces/a%1Fb", &[]).unwrap_err();
    assert_eq!(two.kind, CatalogErrorKind::NoSuchNamespace);
    for (method, path) in [
        ("POST", "/v1/namespaces"),
        ("DELETE", "/v1/namespaces/default"),
        ("POST", "/v1/namespaces/default/tables"),
        ("POST", "/v1/namespaces/default/tables/users"),
        ("DELETE", "/v1/namespaces/default/tables/users"),
        ("POST", "/v1/namespaces/default/properties"),
        ("POST", "/v1/tables/rename"),
        ("POST", "/v1/transactions/commit"),
        ("POST", "/v1/oauth/tokens"),
    ] {
        let e = route(method, path, &[]).unwrap_err();
        assert_eq!(e.status(), 406, "{method} {path}");
        assert_eq!(
            e.to_json()["error"]["type"],
            "UnsupportedOperationException"
        );
        assert_eq!(e.to_json()["error"]["code"], 406);
    }
    assert_eq!(route("GET", "/v1/nope", &[]).unwrap_err().status(), 404);
    assert_eq!(route("POST", "/v1/config", &[]).unwrap_err().status(), 405);
    let bad = route("GET", "/v1/namespaces", &q(&[("pageSize", "0")])).unwrap_err();
    assert_eq!(
        (bad.status(), bad.type_name()),
        (400, "BadRequestException")
    );
    assert!(is_catalog_path("/v1/config") && !is_catalog_path("/v10") && !is_catalog_path("/ws"));
}

#[test]
fn config_lists_the_endpoints_answered() {
    let c = config_response();
    let endpoints: Vec<&str> = c["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(endpoints.contains(&"GET /v1/{prefix}/namespaces/{namespace}/tables/{table}"));
    assert!(endpoints.contains(&"HEAD /v1/{prefix}/namespaces/{namespace}"));
    assert!(!endpoints.iter().any(|e| e.starts_with("POST")));
    assert_eq!(c["defaults"], json!({}));
}

#[test]
fn lists_page_through_every_table_once() {
    let names: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    let registry = Registry::new(
        names
            .iter()
            .map(|n| id("default", n))
            .chain([id("default_current", "t00")]),
    );
    let ns = body(&registry, &route("GET", "/v1/namespaces", &[]).unwrap());
    assert_eq!(ns["namespaces"], json!([["default"], ["default_current"]]));
    assert_eq!(ns["next-page-token"], Value::Null);
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let mut query = q(&[("pageSize", "10")]);
        if let Some(t) = &token {
            query.push(("pageToken".into(), t.clone()));
        }
        let page = body(
            &registry,
            &route("GET", "/v1/namespaces/default/tables", &query).unwrap(),
        );
        for ident in page["identifiers"].as_array().unwrap() {
            assert_eq!(ident["namespace"], json!(["default"]));
            seen.push(ident["name"].as_str().unwrap().to_string());
        }
        token = page["next-page-token"].as_str().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, names);
    // Unknown namespace and table: the spec's 404s.
    let e = registry
        .answer(&route("GET", "/v1/namespaces/nope/tables", &[]).unwrap())
        .unwrap_err();
    assert_eq!(
        (e.status(), e.type_name()),
        (404, "NoSuchNamespaceException")
    );
    // Tables are loaded from the lake, registered or not (a failed
    // registration); what the lake lacks is the spec's 404.
    let unknown = route("GET", "/v1/namespaces/default/tables/nope", &[]).unwrap();
    assert_eq!(
        registry.answer(&unknown),
        Ok(Answer::LoadTable {
            namespace: "default",
            table: "nope",
            registered: false
        })
    );
    let e = registry.missing("default", "nope");
    assert_eq!((e.status(), e.type_name()), (404, "NoSuchTableException"));
    let e = registry.missing("nope", "t03");
    assert_eq!(
        (e.status(), e.type_name()),
        (404, "NoSuchNamespaceException")
    );
    let known = route("GET", "/v1/namespaces/default/tables/t03", &[]).unwrap();
    assert_eq!(
        registry.answer(&known),
        Ok(Answer::LoadTable {
            namespace: "default",
            table: "t03",
            registered: true
        })
    );
    let ns = body(
        &registry,
        &route("GET", "/v1/namespaces/default", &[]).unwrap(),
    );
    assert_eq!(ns, json!({"namespace": ["default"], "properties": {}}));
}

fn metadata(location: &str, version: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"format-version": 2, "location": location, "v": version})).unwrap()
}

#[test]
fn load_table_finds_the_newest_metadata_even_past_a_lagging_hint() {
    let store = MemoryStore::new(Rc::new(Crash::default()));
    let loc = "s3://lake/warehouse/default/users";
    let missing = block_on(load_table(&store, "default", "users")).unwrap_err();
    assert_eq!(missing.type_name(), "NoSuchTableException");
    store.insert("default/users/metadata/v1.metadata.json", metadata(loc, 1));
    // No hint yet (a crash before the first hint put): probed from 0.
    let t = block_on(load_table(&store, "default", "users")).unwrap();
    assert_eq!(
        t.metadata_location,
        format!("{loc}/metadata/v1.metadata.json")
    );
    store.insert("default/users/metadata/version-hint.text", b"1".to_vec());
    store.insert("default/users/metadata/v2.metadata.json", metadata(loc, 2));
    store.insert("default/users/metadata/v3.metadata.json", metadata(loc, 3));
    let t = block_on(load_table(&store, "default", "users")).unwrap();
    assert_eq!(
        t.metadata_location,
        format!("{loc}/metadata/v3.metadata.json")
    );
    assert_eq!(t.metadata["v"], 3);
    // Reads only: the hint is left as it was.
    assert_eq!(
        store.object("default/users/metadata/version-hint.text"),
        Some(b"1".to_vec())
    );
    let access = StorageAccess {
        endpoint: Some("https://acct.r2.cloudflarestorage.com".into()),
        region: Some("auto".into()),
        access_key_id: Some("id".into()),
        secret_access_key: Some("secret".into()),
    };
    let r = t.to_response(&access);
    assert_eq!(r["metadata-location"], t.metadata_location.as_str());
    assert_eq!(r["config"]["s3.secret-access-key"], "secret");
    assert_eq!(r["config"]["s3.region"], "auto");
    assert_eq!(
        t.to_response(&StorageAccess::default())["config"],
        json!({})
    );
}

#[test]
fn registrations_round_trip_as_json() {
    let r = Registration {
        tables: vec![id("default", "users"), id("default_current", "users")],
    };
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<Registration>(&text).unwrap(), r);
}

#[test]
fn unregistered_names_both_kinds_of_table_in_their_namespaces() {
    let config = crate::config::DoLakeConfig::parse(None).unwrap();
    let mut history = crate::flush::FlushHistory::default();
    history.tables.insert("users".into());
    history.current_tables.insert("users".into());
    let mut registered = std::collections::BTreeSet::new();
    let todo = unregistered(&history, &config, &registered);
    assert_eq!(
        todo,
        vec![id("default", "users"), id("default_current", "users")]
    );
    registered.insert(id("default", "users"));
    assert_eq!(
        unregistered(&history, &config, &registered),
        vec![id("default_current", "users")]
    );
}
