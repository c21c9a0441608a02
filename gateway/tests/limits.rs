//! Issue 12's hardening, through the real router without a socket (`oneshot`): the one id
//! rule on REST paths and bodies, bounded arrays and titles, the REST rate limit (429), token
//! time claims, and loopback as a dual-stack listener sees it.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use engineio::net::ConnInfo;
use gateway::config::{Config, Options};
use gateway::server::Node;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn options() -> Options {
    Options {
        jwt_secret: Some("limits-secret".into()),
        api_key: Some("limits-key".into()),
        access: Some("open".into()),
        database_url: Some("sqlite::memory:".into()),
        ..Options::default()
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<String>,
}

/// One request; `peer` is the TCP peer the router sees (none: no connect info at all).
async fn call(
    node: &Node,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<Value>,
    peer: Option<&str>,
) -> Result<Answer, Box<dyn std::error::Error>> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        req = req.header("authorization", format!("Bearer {auth}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let mut req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))?;
    if let Some(peer) = peer {
        // A real stream for ConnInfo; the address the router judges is `peer`.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (stream, _) = engineio::net::accept(&listener, &engineio::net::OpenCount::default()).await;
        let remote: SocketAddr = peer.parse()?;
        req.extensions_mut().insert(ConnectInfo(ConnInfo { remote, stream }));
    }
    let res = node.router.clone().oneshot(req).await?;
    let status = res.status();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = res.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry_after,
    })
}

/// Item 7: REST refuses the ids no socket could use, in bodies and in paths.
#[tokio::test]
async fn rest_ids_follow_the_one_rule() -> TestResult {
    let node = Node::build(&Config::from_options(&options(), &std::env::temp_dir())?).await?;
    let key = Some("limits-key");
    let long = "x".repeat(257);
    for id in [json!("   "), json!(""), json!(long), json!("a\u{1}b"), json!("a\nb")] {
        let a = call(
            &node,
            "POST",
            "/api/conversations",
            key,
            Some(json!({ "id": id })),
            None,
        )
        .await?;
        assert_eq!(
            (a.status, a.body["code"].clone()),
            (StatusCode::BAD_REQUEST, json!("bad_request")),
            "{id}"
        );
    }
    let a = call(
        &node,
        "POST",
        "/api/conversations",
        key,
        Some(json!({"id": " ok "})),
        None,
    )
    .await?;
    assert_eq!((a.status, a.body["id"].clone()), (StatusCode::CREATED, json!("ok")));
    let members: Vec<Value> = (0..1001).map(|n| json!(n)).collect();
    let a = call(
        &node,
        "POST",
        "/api/conversations",
        key,
        Some(json!({ "members": members })),
        None,
    )
    .await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = call(
        &node,
        "POST",
        "/api/conversations",
        key,
        Some(json!({"members": ["   "]})),
        None,
    )
    .await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = call(
        &node,
        "POST",
        "/api/conversations",
        key,
        Some(json!({"title": "t".repeat(1025)})),
        None,
    )
    .await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let path_long = "y".repeat(300);
    for uri in [
        format!("/api/conversations/{path_long}/messages"),
        "/api/conversations/%20%20%20/messages".to_owned(),
        "/api/conversations/a%01b/messages".to_owned(),
    ] {
        let send = Some(json!({"senderId": "alice", "content": "hi"}));
        let a = call(&node, "POST", &uri, key, send, None).await?;
        assert_eq!(
            (a.status, a.body["code"].clone()),
            (StatusCode::BAD_REQUEST, json!("bad_request")),
            "{uri}"
        );
        let a = call(&node, "GET", &uri, key, None, None).await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
    }
    let a = call(&node, "GET", &format!("/api/presence/{path_long}"), key, None, None).await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = call(&node, "PUT", "/api/conversations/ok/members/%0A", key, None, None).await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = call(
        &node,
        "POST",
        "/api/notify",
        key,
        Some(json!({"userId": "u".repeat(600)})),
        None,
    )
    .await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    Ok(())
}

/// Item 9: REST is rate limited per user token (admin tokens included), not for the API key.
#[tokio::test]
async fn rest_rate_limit_answers_429() -> TestResult {
    let config = Config::from_options(
        &Options {
            rest_rate_limit: Some("1/m,burst=3".into()),
            ..options()
        },
        &std::env::temp_dir(),
    )?;
    let node = Node::build(&config).await?;
    let jwt = config.auth.jwt.as_ref().ok_or("no jwt")?;
    let admin = jwt.sign("root", std::time::Duration::from_secs(60), {
        let mut m = serde_json::Map::new();
        m.insert("admin".into(), json!(true));
        m
    })?;
    let body = || Some(json!({}));
    for n in 0..3 {
        let a = call(&node, "POST", "/api/conversations", Some(&admin), body(), None).await?;
        assert_eq!(a.status, StatusCode::CREATED, "request {n}");
    }
    let a = call(&node, "POST", "/api/conversations", Some(&admin), body(), None).await?;
    assert_eq!(
        (a.status, a.body["code"].clone(), a.retry_after.as_deref()),
        (StatusCode::TOO_MANY_REQUESTS, json!("rate_limited"), Some("1"))
    );
    // Another user has their own bucket; the API key has none.
    let user = jwt.sign("alice", std::time::Duration::from_secs(60), serde_json::Map::new())?;
    assert_eq!(
        call(&node, "GET", "/api/stats", Some(&user), None, None).await?.status,
        StatusCode::OK
    );
    for _ in 0..10 {
        let a = call(&node, "POST", "/api/conversations", Some("limits-key"), body(), None).await?;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    Ok(())
}

/// Item 5: REST refuses the tokens the socket adapters refuse.
#[tokio::test]
async fn rest_refuses_malformed_time_claims() -> TestResult {
    let config = Config::from_options(&options(), &std::env::temp_dir())?;
    let node = Node::build(&config).await?;
    let key = jsonwebtoken::EncodingKey::from_secret(b"limits-secret");
    let now = chrono::Utc::now().timestamp();
    for (claims, reason) in [
        (
            json!({"sub": "a", "exp": "1"}),
            "unauthorized: invalid 'exp' claim: expected a NumericDate",
        ),
        (
            json!({"sub": "a", "exp": "never"}),
            "unauthorized: invalid 'exp' claim: expected a NumericDate",
        ),
        (json!({"sub": "a", "exp": -1}), "unauthorized: token expired"),
        (
            json!({"sub": "a", "exp": now + 60, "nbf": (now + 3600).to_string()}),
            "unauthorized: invalid 'nbf' claim: expected a NumericDate",
        ),
        (json!({"sub": "a"}), "unauthorized: token has no 'exp' claim"),
        (
            json!({"sub": "x".repeat(600_000), "exp": now + 60}),
            "unauthorized: token has no usable 'sub' claim",
        ),
    ] {
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?;
        let a = call(&node, "GET", "/api/stats", Some(&token), None, None).await?;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some(reason))
        );
    }
    Ok(())
}

/// Item 6: without an API key, loopback callers are the server, IPv4-mapped loopback (a
/// dual-stack listener's view of 127.0.0.1) included; nobody else is.
#[tokio::test]
async fn ipv4_mapped_loopback_is_trusted() -> TestResult {
    let config = Config::from_options(
        &Options {
            api_key: None,
            ..options()
        },
        &std::env::temp_dir(),
    )?;
    let node = Node::build(&config).await?;
    for (peer, status) in [
        ("127.0.0.1:5000", StatusCode::OK),
        ("[::1]:5000", StatusCode::OK),
        ("[::ffff:127.0.0.1]:5000", StatusCode::OK),
        ("[::ffff:10.1.2.3]:5000", StatusCode::UNAUTHORIZED),
        ("10.1.2.3:5000", StatusCode::UNAUTHORIZED),
    ] {
        let a = call(&node, "GET", "/api/users", None, None, Some(peer)).await?;
        assert_eq!(a.status, status, "{peer}");
    }
    Ok(())
}
