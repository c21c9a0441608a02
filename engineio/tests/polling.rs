//! HTTP long-polling against a real server: handshake, GET and POST, refusals, overlapping
//! polls, heartbeat, size limit and close reasons.

mod common;

use common::{TestResult, TestServer, fast_heartbeat};
use engineio::{Config, DisconnectReason};
use std::time::Duration;

#[tokio::test]
async fn handshake_sends_the_open_packet() -> TestResult {
    let config = Config::default()
        .with_ping_interval(Duration::from_millis(1500))
        .with_ping_timeout(Duration::from_millis(700))
        .with_max_payload(4096);
    let server = TestServer::start(config).await?;
    let r = server.http("GET", "EIO=4&transport=polling", b"").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type.as_deref(), Some("text/plain; charset=UTF-8"));
    let open = common::open_packet(&r.body)?;
    let sid = open["sid"].as_str().ok_or("no sid")?;
    assert_eq!(sid.len(), 20, "{open}");
    assert!(sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(open["pingInterval"], 1500);
    assert_eq!(open["pingTimeout"], 700);
    assert_eq!(open["maxPayload"], 4096);
    // Fields in the order the reference server sends them.
    let text = r.text();
    let order: Vec<_> = [
        "\"sid\"",
        "\"upgrades\"",
        "\"pingInterval\"",
        "\"pingTimeout\"",
        "\"maxPayload\"",
    ]
    .iter()
    .map(|k| text.find(k))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(server.session_count(), 1);
    Ok(())
}

#[tokio::test]
async fn the_handshake_keeps_the_token_of_the_query_or_the_bearer_header() -> TestResult {
    let server = TestServer::start(Config::default()).await?;
    for (query, headers, want) in [
        ("&token=q1", "", "q1"),
        ("&token=q1", "Authorization: Bearer h1\r\n", "q1"),
        ("&token=", "Authorization: bearer h1\r\n", "h1"),
        ("", "Authorization: Basic h1\r\n", "none"),
        ("", "Authorization: Bearer  \r\n", "none"),
    ] {
        let query = format!("EIO=4&transport=polling{query}");
        let r = common::http_with(server.addr, "GET", &query, headers, b"").await?;
        let open = common::open_packet(&r.body)?;
        let sid = open["sid"].as_str().ok_or("no sid")?;
        server.post(sid, b"4token").await?;
        assert_eq!(
            server.poll(sid).await?.text(),
            format!("4token:{want}"),
            "{query} {headers:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn refuses_bad_requests_with_engineio_codes() -> TestResult {
    let server = TestServer::start(Config::default()).await?;
    let r = server.http("GET", "EIO=3&transport=polling", b"").await?;
    assert_eq!(
        (r.status, r.refusal()?),
        (400, (5, "Unsupported protocol version".into()))
    );
    let r = server.http("GET", "EIO=4&transport=tobi", b"").await?;
    assert_eq!((r.status, r.refusal()?), (400, (0, "Transport unknown".into())));
    let r = server.poll("nosuchsession").await?;
    assert_eq!((r.status, r.refusal()?), (400, (1, "Session ID unknown".into())));
    let r = server.post("nosuchsession", b"4x").await?;
    assert_eq!((r.status, r.refusal()?), (400, (1, "Session ID unknown".into())));
    // A WebSocket request without the upgrade headers.
    let r = server.http("GET", "EIO=4&transport=websocket", b"").await?;
    assert_eq!((r.status, r.refusal()?), (400, (3, "Bad request".into())));
    Ok(())
}

#[tokio::test]
async fn post_then_poll_echoes_in_order() -> TestResult {
    let server = TestServer::start(Config::default()).await?;
    let (sid, _) = server.handshake().await?;
    let r = server.post(&sid, b"4hello\x1e4world\x1e6").await?;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.content_type.as_deref(), Some("text/html"));
    let r = server.poll(&sid).await?;
    assert_eq!((r.status, r.text().as_str()), (200, "4hello\x1e4world"));
    // Binary packets come base64-encoded with a `b` in front.
    server.post(&sid, b"bAQID").await?;
    assert_eq!(server.poll(&sid).await?.text(), "4binary:3");
    Ok(())
}

#[tokio::test]
async fn a_waiting_poll_returns_when_a_packet_comes() -> TestResult {
    let server = TestServer::start(Config::default()).await?;
    let (sid, _) = server.handshake().await?;
    let addr = server.addr;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    let waiting = tokio::spawn(async move { common::http(addr, "GET", &query, b"").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the poll waits for a packet");
    server.post(&sid, b"4late").await?;
    let r = tokio::time::timeout(common::WAIT, waiting).await???;
    assert_eq!(r.text(), "4late");
    Ok(())
}

/// The reference server (engine.io's `Polling.onPollRequest`) answers a second GET while one
/// waits with an empty 400 and closes the session with a transport error; the waiting GET
/// gets the close packet.
#[tokio::test]
async fn an_overlapping_poll_closes_the_session() -> TestResult {
    let server = TestServer::start(Config::default()).await?;
    let (sid, _) = server.handshake().await?;
    let addr = server.addr;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    let first = tokio::spawn(async move { common::http(addr, "GET", &query, b"").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = server.poll(&sid).await?;
    assert_eq!((second.status, second.body.as_slice()), (400, &b""[..]));
    let first = tokio::time::timeout(common::WAIT, first).await???;
    assert_eq!((first.status, first.text().as_str()), (200, "1"));
    assert_eq!(server.closed(&sid).await?, DisconnectReason::TransportError);
    let after = server.poll(&sid).await?;
    assert_eq!((after.status, after.refusal()?.0), (400, 1));
    Ok(())
}

#[tokio::test]
async fn pongs_keep_a_session_and_silence_ends_it() -> TestResult {
    let server = TestServer::start(fast_heartbeat()).await?;
    let (sid, _) = server.handshake().await?;
    for _ in 0..3 {
        let r = server.poll(&sid).await?;
        assert_eq!(r.text(), "2", "a ping every interval");
        server.post(&sid, b"3").await?;
    }
    // Three intervals answered: longer than interval + timeout, so the pongs counted.
    assert_eq!(server.session_count(), 1);
    assert_eq!(server.closed(&sid).await?, DisconnectReason::HeartbeatTimeout);
    Ok(())
}

#[tokio::test]
async fn a_body_over_max_payload_closes_the_session() -> TestResult {
    let server = TestServer::start(Config::default().with_max_payload(100)).await?;
    let (sid, _) = server.handshake().await?;
    let mut body = b"4".to_vec();
    body.extend([b'a'; 100]);
    let r = server.post(&sid, &body).await?;
    assert_eq!(r.status, 413);
    assert_eq!(server.closed(&sid).await?, DisconnectReason::TooBig);
    Ok(())
}

#[tokio::test]
async fn close_reasons_over_polling() -> TestResult {
    let server = TestServer::start(Config::default()).await?;

    let (sid, _) = server.handshake().await?;
    server.post(&sid, b"1").await?;
    assert_eq!(server.closed(&sid).await?, DisconnectReason::ClientClose);

    // A server close after flush: the next poll takes what was queued, alone (a client that
    // got the close with it would handle the close first), and the poll after it the close.
    let (sid, _) = server.handshake().await?;
    server.post(&sid, b"4bye").await?;
    assert_eq!(server.poll(&sid).await?.text(), "4bye");
    assert_eq!(server.poll(&sid).await?.text(), "1");
    assert_eq!(server.closed(&sid).await?, DisconnectReason::ServerClose);

    // Closing at once: a waiting poll gets the close packet.
    let (sid, _) = server.handshake().await?;
    let addr = server.addr;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    let waiting = tokio::spawn(async move { common::http(addr, "GET", &query, b"").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.post(&sid, b"4drop").await?;
    assert_eq!(tokio::time::timeout(common::WAIT, waiting).await???.text(), "1");
    assert_eq!(server.closed(&sid).await?, DisconnectReason::Draining);

    // A body that is not UTF-8 breaks the protocol.
    let (sid, _) = server.handshake().await?;
    let r = server.post(&sid, b"4\xff").await?;
    assert_eq!((r.status, r.refusal()?.0), (400, 3));
    assert_eq!(server.closed(&sid).await?, DisconnectReason::ParseError);
    assert_eq!(server.session_count(), 0);
    Ok(())
}

#[tokio::test]
async fn a_full_queue_closes_a_slow_polling_consumer() -> TestResult {
    let server = TestServer::start(Config::default().with_max_queue(4)).await?;
    let (sid, _) = server.handshake().await?;
    let before = engineio::stats::outbound_dropped();
    server.post(&sid, b"4flood:5:10").await?;
    assert_eq!(server.closed(&sid).await?, DisconnectReason::SlowConsumer);
    assert!(engineio::stats::outbound_dropped() > before);
    Ok(())
}
