//! REST routes through the real router, without a socket (`oneshot`).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gateway::config::{Config, Options};
use gateway::server::Node;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn config() -> Result<Config, Box<dyn std::error::Error>> {
    let options = Options {
        jwt_secret: Some("route-secret".into()),
        api_key: Some("route-key".into()),
        access: Some("claims".into()),
        max_payload: Some("4KiB".into()),
        database_url: Some("sqlite::memory:".into()),
        ..Options::default()
    };
    Ok(Config::from_options(&options, &std::env::temp_dir())?)
}

fn token(config: &Config, user: &str, claims: Value) -> Result<String, Box<dyn std::error::Error>> {
    let jwt = config.auth.jwt.as_ref().ok_or("no jwt")?;
    let extra = claims.as_object().cloned().unwrap_or_default();
    Ok(jwt.sign(user, Duration::from_secs(60), extra)?)
}

async fn call(node: &Node, method: &str, uri: &str, auth: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        req = req.header("authorization", format!("Bearer {auth}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = match req.body(body.map(|b| Body::from(b.to_owned())).unwrap_or_else(Body::empty)) {
        Ok(r) => r,
        Err(e) => panic!("bad request in test: {e}"),
    };
    let res = match node.router.clone().oneshot(req).await {
        Ok(res) => res,
        Err(e) => match e {},
    };
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn health_and_readiness() -> TestResult {
    let node = Node::build(&config()?).await?;
    assert_eq!(
        call(&node, "GET", "/health", None, None).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(call(&node, "GET", "/ready", None, None).await.0, StatusCode::OK);
    node.state.readiness.start_draining();
    let (status, body) = call(&node, "GET", "/ready", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "draining");
    Ok(())
}

#[tokio::test]
async fn credentials_decide_rights() -> TestResult {
    let config = config()?;
    let node = Node::build(&config).await?;
    let user = token(&config, "alice", json!({}))?;
    let admin = token(&config, "root", json!({"admin": true}))?;
    let broadcast = Some(r#"{"message": "hi"}"#);

    let (status, body) = call(&node, "GET", "/api/users", None, None).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    let (status, body) = call(&node, "GET", "/api/users", Some("wrong"), None).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    let (status, body) = call(&node, "GET", "/api/users", Some("route-key"), None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"users": [], "nextCursor": null}))
    );

    let (status, body) = call(&node, "POST", "/api/users/broadcast", Some(&user), broadcast).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::FORBIDDEN, json!("forbidden"))
    );
    let (status, body) = call(&node, "POST", "/api/users/broadcast", Some(&admin), broadcast).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "Message broadcasted"}))
    );

    // A user may read stats and presence, and online lists only where the token allows.
    assert_eq!(
        call(&node, "GET", "/api/stats", Some(&user), None).await.0,
        StatusCode::OK
    );
    let (status, body) = call(&node, "GET", "/websocket/presence/bob", Some(&user), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["online"], false);
    let (status, body) = call(&node, "GET", "/api/conversations/c1/online", Some(&user), None).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::FORBIDDEN, json!("forbidden"))
    );
    let member = token(&config, "carol", json!({"conversations": ["c*"]}))?;
    let (status, body) = call(&node, "GET", "/websocket/bam/c1/online", Some(&member), None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"conversationId": "c1", "onlineUsers": []}))
    );
    Ok(())
}

#[tokio::test]
async fn errors_are_json_with_a_code() -> TestResult {
    let node = Node::build(&config()?).await?;
    let key = Some("route-key");
    let cases = [
        (
            "POST",
            "/api/users/nobody/message",
            Some(r#"{"message": "hi"}"#),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            "/api/users/nobody/message",
            Some("{not json"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/users/nobody/message",
            Some(r#"{"msg": 1}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        // Found by schemathesis: serde fills a struct from an array of its fields.
        (
            "POST",
            "/api/users/broadcast",
            Some("[null, null]"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/conversations",
            Some("[null, null]"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/notify",
            Some(r#"{"userId": {"a": 1}}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/notify",
            Some(r#"{"userId": "nobody"}"#),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            "/api/conversations/c1/emit",
            Some(r#"{"data": 1}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/websocket/broadcast",
            Some(r#"{"event": "connect", "data": 1}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/api/users?limit=lots",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("GET", "/no/such/route", None, StatusCode::NOT_FOUND, "not_found"),
    ];
    for (method, uri, body, status, code) in cases {
        let (got, json) = call(&node, method, uri, key, body).await;
        assert_eq!(
            (got, json["code"].as_str()),
            (status, Some(code)),
            "{method} {uri}: {json}"
        );
        assert!(json["error"].is_string(), "{method} {uri}: {json}");
    }
    let (status, body) = call(&node, "GET", "/api/users/nobody/message", key, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["code"], "bad_request");

    let big = format!(r#"{{"message": "{}"}}"#, "x".repeat(8 * 1024));
    let (status, json) = call(&node, "POST", "/api/users/broadcast", key, Some(&big)).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    let (status, json) = call(
        &node,
        "POST",
        "/api/users/nobody/message",
        key,
        Some(r#"{"message": 1}"#),
    )
    .await;
    assert_eq!(
        json,
        json!({"error": "User not connected", "code": "not_found"}),
        "{status}"
    );
    Ok(())
}
