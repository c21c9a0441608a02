//! WebSocket sessions against a real server: handshake, echo, the upgrade from polling,
//! heartbeat, oversized and malformed frames, close reasons and slow consumers.

mod common;

use common::{Res, TestResult, TestServer, Ws, fast_heartbeat};
use engineio::{Config, DisconnectReason};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The next message, whatever it is.
async fn next(ws: &mut Ws) -> Res<Message> {
    Ok(tokio::time::timeout(common::WAIT, ws.next())
        .await?
        .ok_or("stream ended")??)
}

/// The next text message.
async fn next_text(ws: &mut Ws) -> Res<String> {
    match next(ws).await? {
        Message::Text(t) => Ok(t.as_str().to_owned()),
        other => Err(format!("expected text, got {other:?}").into()),
    }
}

/// A new WebSocket session: the socket and its sid, from the open packet.
async fn open(server: &TestServer) -> Res<(Ws, String, serde_json::Value)> {
    let mut ws = server.websocket("").await?;
    let open = common::open_packet(next_text(&mut ws).await?.as_bytes())?;
    let sid = open["sid"].as_str().ok_or("no sid")?.to_owned();
    Ok((ws, sid, open))
}

async fn send(ws: &mut Ws, text: &str) -> Res<()> {
    ws.send(Message::text(text)).await?;
    Ok(())
}

/// Reads until the server's close frame; its code.
async fn close_code(ws: &mut Ws) -> Res<Option<CloseCode>> {
    loop {
        match tokio::time::timeout(common::WAIT, ws.next()).await? {
            Some(Ok(Message::Close(frame))) => return Ok(frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Ok(None),
        }
    }
}

#[tokio::test]
async fn handshake_and_echo() -> TestResult {
    let server = TestServer::start(Config::default().with_max_payload(5000)).await?;
    let (mut ws, sid, open) = open(&server).await?;
    assert_eq!(sid.len(), 20);
    assert_eq!(open["upgrades"], serde_json::json!([]));
    assert_eq!(open["pingInterval"], 25000);
    assert_eq!(open["pingTimeout"], 20000);
    assert_eq!(open["maxPayload"], 5000);
    send(&mut ws, "4hello").await?;
    assert_eq!(next_text(&mut ws).await?, "4hello");
    ws.send(Message::binary(vec![1, 2, 3, 4])).await?;
    assert_eq!(next_text(&mut ws).await?, "4binary:4");
    // A WebSocket ping is answered by the server's framing, not by the layer above.
    ws.send(Message::Ping(b"hi".to_vec().into())).await?;
    assert!(matches!(next(&mut ws).await?, Message::Pong(p) if p.as_ref() == b"hi"));
    Ok(())
}

#[tokio::test]
async fn upgrade_from_polling() -> TestResult {
    let server = TestServer::start(Config::default()).await?;
    let (sid, _) = server.handshake().await?;
    let addr = server.addr;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    let waiting = tokio::spawn(async move { common::http(addr, "GET", &query, b"").await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut ws = server.websocket(&format!("&sid={sid}")).await?;
    send(&mut ws, "2probe").await?;
    assert_eq!(next_text(&mut ws).await?, "3probe");
    // The waiting poll returns a noop so that the client can pause polling.
    assert_eq!(tokio::time::timeout(common::WAIT, waiting).await???.text(), "6");
    send(&mut ws, "5").await?;
    send(&mut ws, "4after").await?;
    assert_eq!(next_text(&mut ws).await?, "4after");
    // The session is the same one, now on the WebSocket: polling it is refused.
    assert_eq!(server.session_count(), 1);
    let r = server.poll(&sid).await?;
    assert_eq!((r.status, r.refusal()?.0), (400, 3));
    let r = server.post(&sid, b"4x").await?;
    assert_eq!((r.status, r.refusal()?.0), (400, 3));
    // A second WebSocket for the same session is accepted, then closed, as the reference
    // server does; the session carries on on the first.
    let mut second = server.websocket(&format!("&sid={sid}")).await?;
    assert_eq!(close_code(&mut second).await?, Some(CloseCode::Normal));
    send(&mut ws, "4still").await?;
    assert_eq!(next_text(&mut ws).await?, "4still");
    drop(ws);
    assert_eq!(server.closed(&sid).await?, DisconnectReason::TransportClose);
    Ok(())
}

#[tokio::test]
async fn an_upgrade_of_an_unknown_session_is_refused() -> TestResult {
    let server = TestServer::start(Config::default()).await?;
    let err = server.websocket("&sid=nosuchsession").await.err().ok_or("upgraded")?;
    assert!(err.to_string().contains("400"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_failed_probe_leaves_the_session_polling() -> TestResult {
    let server = TestServer::start(Config::default()).await?;
    let (sid, _) = server.handshake().await?;
    let mut ws = server.websocket(&format!("&sid={sid}")).await?;
    send(&mut ws, "4not a probe").await?;
    assert!(close_code(&mut ws).await?.is_none(), "the probe socket is shut");
    server.post(&sid, b"4still").await?;
    assert_eq!(server.poll(&sid).await?.text(), "4still");
    Ok(())
}

#[tokio::test]
async fn pongs_keep_a_session_and_silence_ends_it() -> TestResult {
    let server = TestServer::start(fast_heartbeat()).await?;
    let (mut ws, sid, _) = open(&server).await?;
    for _ in 0..3 {
        assert_eq!(next_text(&mut ws).await?, "2");
        send(&mut ws, "3").await?;
    }
    assert_eq!(server.session_count(), 1);
    assert_eq!(next_text(&mut ws).await?, "2");
    assert_eq!(server.closed(&sid).await?, DisconnectReason::HeartbeatTimeout);
    Ok(())
}

#[tokio::test]
async fn a_message_over_max_payload_closes_with_1009() -> TestResult {
    let server = TestServer::start(Config::default().with_max_payload(1024)).await?;
    let (mut ws, sid, _) = open(&server).await?;
    // At the limit is fine.
    let at_limit = format!("4{}", "a".repeat(1023));
    send(&mut ws, &at_limit).await?;
    assert_eq!(next_text(&mut ws).await?, at_limit);
    send(&mut ws, &"a".repeat(1025)).await?;
    assert_eq!(close_code(&mut ws).await?, Some(CloseCode::Size));
    assert_eq!(server.closed(&sid).await?, DisconnectReason::TooBig);
    Ok(())
}

#[tokio::test]
async fn malformed_frames_close_with_their_codes() -> TestResult {
    let server = TestServer::start(Config::default()).await?;

    // An unmasked client frame, written under tungstenite's framing.
    let (mut ws, sid, _) = open(&server).await?;
    ws.get_mut().write_all(&[0x81, 0x02, b'4', b'x']).await?;
    assert_eq!(close_code(&mut ws).await?, Some(CloseCode::Protocol));
    assert_eq!(server.closed(&sid).await?, DisconnectReason::TransportError);

    // A text frame that is not UTF-8 (masked with a zero key).
    let (mut ws, sid, _) = open(&server).await?;
    ws.get_mut().write_all(&[0x81, 0x82, 0, 0, 0, 0, b'4', 0xff]).await?;
    assert_eq!(close_code(&mut ws).await?, Some(CloseCode::Invalid));
    assert_eq!(server.closed(&sid).await?, DisconnectReason::TransportError);
    Ok(())
}

#[tokio::test]
async fn close_reasons_over_websocket() -> TestResult {
    let server = TestServer::start(Config::default()).await?;

    let (mut ws, sid, _) = open(&server).await?;
    send(&mut ws, "1").await?;
    assert_eq!(server.closed(&sid).await?, DisconnectReason::ClientClose);

    let (ws, sid, _) = open(&server).await?;
    drop(ws);
    assert_eq!(server.closed(&sid).await?, DisconnectReason::TransportClose);

    // A close frame is a close on purpose, and is answered with one echoing its code.
    let (mut ws, sid, _) = open(&server).await?;
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "bye".into(),
    }))
    .await?;
    assert_eq!(close_code(&mut ws).await?, Some(CloseCode::Library(4000)));
    assert_eq!(server.closed(&sid).await?, DisconnectReason::ClientClose);

    // A close after flush: what was sent before it, then a normal close frame.
    let (mut ws, sid, _) = open(&server).await?;
    send(&mut ws, "4bye").await?;
    assert_eq!(next_text(&mut ws).await?, "4bye");
    assert_eq!(close_code(&mut ws).await?, Some(CloseCode::Normal));
    assert_eq!(server.closed(&sid).await?, DisconnectReason::ServerClose);

    // A close at once shuts the TCP connection without a close frame, as a lost connection.
    let (mut ws, sid, _) = open(&server).await?;
    send(&mut ws, "4drop").await?;
    assert_eq!(close_code(&mut ws).await?, None);
    assert_eq!(server.closed(&sid).await?, DisconnectReason::Draining);
    assert_eq!(server.session_count(), 0);
    Ok(())
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_as_a_slow_consumer() -> TestResult {
    let server = TestServer::start(Config::default().with_max_queue(8)).await?;
    let (mut ws, sid, _) = open(&server).await?;
    let before = engineio::stats::outbound_dropped();
    // Far more than the kernel's socket buffers hold; the client reads nothing.
    send(&mut ws, "4flood:4000:65536").await?;
    assert_eq!(server.closed(&sid).await?, DisconnectReason::SlowConsumer);
    assert!(engineio::stats::outbound_dropped() > before);
    Ok(())
}
