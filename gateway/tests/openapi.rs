//! `GET /api/openapi.json` describes every route the router serves, with every method, and
//! nothing else: a route added without its `#[utoipa::path]` annotation fails here.
//!
//! The router's paths are read from the `.route("…")` calls of `gateway/src/http/` (axum
//! cannot list them); which methods each serves is asked of the real router (`oneshot`): a
//! method it does not serve answers 405. A route registered only under some configuration
//! (`--dev`, say) needs that configuration in [`node`], or it answers `no such route` here.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gateway::config::{Config, Options};
use gateway::server::Node;
use http_body_util::BodyExt;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEY: &str = "openapi-key";
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];

async fn node() -> Result<Node, Box<dyn std::error::Error>> {
    let options = Options {
        jwt_secret: Some("openapi-secret".into()),
        api_key: Some(KEY.into()),
        database_url: Some("sqlite::memory:".into()),
        ..Options::default()
    };
    Ok(Node::build(&Config::from_options(&options, &std::env::temp_dir())?).await?)
}

async fn call(
    node: &Node,
    method: &str,
    uri: &str,
    key: Option<&str>,
) -> Result<(StatusCode, Value), Box<dyn std::error::Error>> {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request
            .header("x-api-key", key)
            .header("content-type", "application/json");
    }
    let body = if key.is_some() { Body::from("{}") } else { Body::empty() };
    let response = match node.router.clone().oneshot(request.body(body)?).await {
        Ok(response) => response,
        Err(e) => match e {},
    };
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// The string literals passed to `.route(` in every source file under `dir`.
fn routes_in(dir: &Path, found: &mut BTreeSet<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            routes_in(&path, found)?;
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for (at, _) in text.match_indices(".route(") {
            let rest = text[at + ".route(".len()..].trim_start();
            if let Some(literal) = rest.strip_prefix('"')
                && let Some(end) = literal.find('"')
            {
                found.insert(literal[..end].to_owned());
            }
        }
    }
    Ok(())
}

/// `/api/conversations/{id}/members/{user_id}` → `/api/conversations/x/members/x`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| if segment.starts_with('{') { "x" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_description_covers_every_route_and_method() -> TestResult {
    let node = node().await?;
    let (status, spec) = call(&node, "GET", "/api/openapi.json", None).await?;
    assert_eq!(status, StatusCode::OK, "served without credentials");
    assert!(
        spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "{}",
        spec["openapi"]
    );

    let mut described = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().ok_or("no paths")? {
        for method in METHODS {
            if item.get(method.to_lowercase()).is_some() {
                described.insert(format!("{method} {path}"));
            }
        }
    }

    let mut paths = BTreeSet::new();
    routes_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"), &mut paths)?;
    assert!(paths.len() > 10, "found only {paths:?}");
    let mut served = BTreeSet::new();
    for path in &paths {
        for method in METHODS {
            let (status, body) = call(&node, method, &concrete(path), Some(KEY)).await?;
            assert_ne!(body["error"], "no such route", "{method} {path} is not routed");
            if status != StatusCode::METHOD_NOT_ALLOWED {
                served.insert(format!("{method} {path}"));
            }
        }
    }

    let undescribed: Vec<_> = served.difference(&described).collect();
    let unserved: Vec<_> = described.difference(&served).collect();
    assert!(
        undescribed.is_empty(),
        "served but not in /api/openapi.json (annotate the handler, see http/openapi.rs): {undescribed:?}"
    );
    assert!(unserved.is_empty(), "described but not served: {unserved:?}");
    Ok(())
}

#[tokio::test]
async fn every_route_but_the_public_ones_needs_credentials() -> TestResult {
    let node = node().await?;
    let (_, spec) = call(&node, "GET", "/api/openapi.json", None).await?;
    let schemes = spec["components"]["securitySchemes"]
        .as_object()
        .ok_or("no securitySchemes")?;
    assert_eq!(schemes.len(), 3, "{schemes:?}");
    assert_eq!(schemes["apiKeyHeader"]["name"], "X-API-Key");
    for (path, item) in spec["paths"].as_object().ok_or("no paths")? {
        for (method, operation) in item.as_object().ok_or("bad path item")? {
            let public = gateway::http::openapi::PUBLIC.contains(&path.as_str());
            let security = operation["security"].as_array().map_or(0, Vec::len);
            assert_eq!(security == 0, public, "{method} {path}: security {security}");
            assert_eq!(operation["responses"]["401"].is_null(), public, "{method} {path}: 401");
            assert!(operation["operationId"].is_string(), "{method} {path}: operationId");
            if public {
                continue;
            }
            // What the description promises is what the route answers without credentials.
            let (status, body) = call(&node, &method.to_uppercase(), &concrete(path), None).await?;
            assert_eq!(
                (status, body["code"].clone()),
                (StatusCode::UNAUTHORIZED, "unauthorized".into())
            );
        }
    }
    Ok(())
}
