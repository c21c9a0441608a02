//! Engine.IO v4 and Socket.IO v5 packets as text, the same on both transports: parsing what
//! clients send, and encoding what the node sends. Outbound packets are whole Engine.IO
//! packets (`4` + the Socket.IO packet), built once with their WebSocket frame header in front
//! and shared by every recipient: a WebSocket session writes the frame as it is, a polling
//! session the text after the header.

use super::ws;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// A packet a client sent that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// Empty, or an unknown type digit.
    #[error("unknown packet type")]
    UnknownType,
    /// A Socket.IO header that does not parse (attachments, namespace, ack id).
    #[error("malformed packet header")]
    Header,
    /// The data is not the JSON its packet type needs.
    #[error("malformed packet data: {0}")]
    Data(String),
}

/// An Engine.IO packet from a client; the payload borrows the frame or body it came in.
#[derive(Debug, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `1`: the client closes the session.
    Close,
    /// `2` + data: a ping (only `2probe` during an upgrade, in v4).
    Ping(&'a str),
    /// `3` + data: the answer to our ping.
    Pong(&'a str),
    /// `4` + a Socket.IO packet.
    Message(&'a str),
    /// `5`: the client switches to the probed WebSocket.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Reads one Engine.IO text packet.
pub fn parse_engine(text: &str) -> Result<EnginePacket<'_>, PacketError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(PacketError::UnknownType)?;
    let rest = chars.as_str();
    Ok(match kind {
        '1' => EnginePacket::Close,
        '2' => EnginePacket::Ping(rest),
        '3' => EnginePacket::Pong(rest),
        '4' => EnginePacket::Message(rest),
        '5' => EnginePacket::Upgrade,
        '6' => EnginePacket::Noop,
        _ => return Err(PacketError::UnknownType),
    })
}

/// The Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A Socket.IO packet from a client, header parsed, data still raw JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct SioPacket<'a> {
    pub kind: Kind,
    /// Binary attachments that follow (binary packets only).
    pub attachments: usize,
    /// The namespace, `/` when absent.
    pub ns: &'a str,
    /// The ack id the client waits on.
    pub ack: Option<i64>,
    /// The JSON data, possibly empty.
    pub data: &'a str,
}

/// Reads the Socket.IO packet inside an Engine.IO message.
pub fn parse_sio(text: &str) -> Result<SioPacket<'_>, PacketError> {
    let bytes = text.as_bytes();
    let kind = match bytes.first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'4') => Kind::ConnectError,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        _ => return Err(PacketError::UnknownType),
    };
    let mut i = 1;
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'-') {
            return Err(PacketError::Header);
        }
        attachments = text[start..i].parse().map_err(|_| PacketError::Header)?;
        i += 1;
    }
    let mut ns = "/";
    if bytes.get(i) == Some(&b'/') {
        let end = text[i..].find(',').map_or(text.len(), |p| i + p);
        ns = &text[i..end];
        i = (end + 1).min(text.len());
    }
    let start = i;
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let ack = if i > start {
        Some(text[start..i].parse().map_err(|_| PacketError::Header)?)
    } else {
        None
    };
    Ok(SioPacket {
        kind,
        attachments,
        ns,
        ack,
        data: &text[i..],
    })
}

/// An event's name and first argument (`Null` when it has none).
pub fn event_args(data: &str) -> Result<(String, Value), PacketError> {
    let args: Vec<&RawValue> = serde_json::from_str(data).map_err(|e| PacketError::Data(e.to_string()))?;
    let mut args = args.into_iter();
    let name = args
        .next()
        .and_then(|n| serde_json::from_str::<String>(n.get()).ok())
        .ok_or_else(|| PacketError::Data("an event starts with its name".into()))?;
    let first = match args.next() {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| PacketError::Data(e.to_string()))?,
        None => Value::Null,
    };
    Ok((name, first))
}

/// Room left in front of a packet's text for the longest WebSocket frame header.
const HEADER_ROOM: usize = 10;

/// An outbound Engine.IO packet as a whole WebSocket text frame; cheap to clone.
#[derive(Clone, Debug)]
pub struct Packet {
    frame: Bytes,
    /// Where the text starts (the frame header's length).
    text_at: u8,
}

impl Packet {
    /// A packet from its text.
    pub fn new(text: &[u8]) -> Self {
        let mut out = Vec::with_capacity(HEADER_ROOM + text.len());
        out.extend_from_slice(&[0; HEADER_ROOM]);
        out.extend_from_slice(text);
        Self::framed(out)
    }

    /// `out` is `HEADER_ROOM` bytes, then the text: the header is written just before it.
    fn framed(mut out: Vec<u8>) -> Self {
        let header = ws::Header::new(ws::OP_TEXT, out.len() - HEADER_ROOM);
        let header = header.as_bytes();
        let start = HEADER_ROOM - header.len();
        out[start..HEADER_ROOM].copy_from_slice(header);
        Self {
            frame: Bytes::from(out).slice(start..),
            text_at: header.len() as u8,
        }
    }

    /// The whole WebSocket frame.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// The Engine.IO text, for polling.
    pub fn text(&self) -> &[u8] {
        &self.frame[usize::from(self.text_at)..]
    }
}

/// Starts an outbound packet: `4`, the Socket.IO type digit, and the namespace unless `/`.
fn header(kind: u8, ns: &str, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_ROOM + capacity + ns.len() + 4);
    out.extend_from_slice(&[0; HEADER_ROOM]);
    out.push(b'4');
    out.push(kind);
    if ns != "/" {
        out.extend_from_slice(ns.as_bytes());
        out.push(b',');
    }
    out
}

/// `42[name, payload]`: an event.
pub fn event(ns: &str, name: &str, payload: &impl Serialize) -> Result<Packet, serde_json::Error> {
    let mut out = header(b'2', ns, 128);
    out.push(b'[');
    serde_json::to_writer(&mut out, name)?;
    out.push(b',');
    serde_json::to_writer(&mut out, payload)?;
    out.push(b']');
    Ok(Packet::framed(out))
}

/// `43<id>[payload]`: the answer to an event that asked for one.
pub fn ack(ns: &str, id: i64, payload: &impl Serialize) -> Result<Packet, serde_json::Error> {
    let mut out = header(b'3', ns, 128);
    out.extend_from_slice(id.to_string().as_bytes());
    out.push(b'[');
    serde_json::to_writer(&mut out, payload)?;
    out.push(b']');
    Ok(Packet::framed(out))
}

/// `40{"sid":…}`: the namespace is connected.
pub fn connected(ns: &str, sid: &str) -> Packet {
    #[derive(Serialize)]
    struct Sid<'a> {
        sid: &'a str,
    }
    let mut out = header(b'0', ns, 32);
    // A struct of one string always serializes.
    let _ = serde_json::to_writer(&mut out, &Sid { sid });
    Packet::framed(out)
}

/// `44{"message":…}`: the namespace connection is refused.
pub fn connect_error(ns: &str, message: &str) -> Packet {
    #[derive(Serialize)]
    struct Refusal<'a> {
        message: &'a str,
    }
    let mut out = header(b'4', ns, 64);
    let _ = serde_json::to_writer(&mut out, &Refusal { message });
    Packet::framed(out)
}

/// `41`: the server closes the namespace (the client does not reconnect).
pub fn disconnect(ns: &str) -> Packet {
    Packet::framed(header(b'1', ns, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_engine_packets() {
        assert_eq!(parse_engine("2probe").ok(), Some(EnginePacket::Ping("probe")));
        assert_eq!(parse_engine("3").ok(), Some(EnginePacket::Pong("")));
        assert_eq!(parse_engine("42[\"a\"]").ok(), Some(EnginePacket::Message("2[\"a\"]")));
        assert_eq!(parse_engine("5").ok(), Some(EnginePacket::Upgrade));
        assert!(parse_engine("").is_err());
        assert!(parse_engine("9").is_err());
        assert!(parse_engine("é").is_err());
    }

    #[test]
    fn reads_socketio_headers() -> Result<(), PacketError> {
        let p = parse_sio("2/chat,17[\"a\",1]")?;
        assert_eq!(
            (p.kind, p.ns, p.ack, p.data),
            (Kind::Event, "/chat", Some(17), "[\"a\",1]")
        );
        let p = parse_sio("0{\"token\":\"t\"}")?;
        assert_eq!(
            (p.kind, p.ns, p.ack, p.data),
            (Kind::Connect, "/", None, "{\"token\":\"t\"}")
        );
        let p = parse_sio("0/chat,")?;
        assert_eq!((p.ns, p.data), ("/chat", ""));
        let p = parse_sio("1/chat")?;
        assert_eq!((p.kind, p.ns), (Kind::Disconnect, "/chat"));
        let p = parse_sio("51-/x,3[\"a\",{\"_placeholder\":true,\"num\":0}]")?;
        assert_eq!(
            (p.kind, p.attachments, p.ns, p.ack),
            (Kind::BinaryEvent, 1, "/x", Some(3))
        );
        assert!(parse_sio("5x-[]").is_err());
        assert!(parse_sio("7").is_err());
        assert!(parse_sio("2999999999999999999999[]").is_err());
        Ok(())
    }

    #[test]
    fn reads_event_arguments() -> Result<(), PacketError> {
        assert_eq!(event_args("[\"a\",{\"b\":1},2]")?, ("a".into(), json!({"b": 1})));
        assert_eq!(event_args("[\"a\"]")?, ("a".into(), Value::Null));
        assert!(event_args("[1]").is_err());
        assert!(event_args("[]").is_err());
        assert!(event_args("{").is_err());
        Ok(())
    }

    #[test]
    fn writes_packets() -> Result<(), serde_json::Error> {
        assert_eq!(event("/", "a", &json!({"b": 1}))?.text(), b"42[\"a\",{\"b\":1}]");
        assert_eq!(event("/chat", "a", &1)?.text(), b"42/chat,[\"a\",1]");
        assert_eq!(ack("/", 3, &json!({"ok": true}))?.text(), b"433[{\"ok\":true}]");
        assert_eq!(connected("/", "x").text(), b"40{\"sid\":\"x\"}");
        assert_eq!(connect_error("/chat", "no").text(), b"44/chat,{\"message\":\"no\"}");
        assert_eq!(disconnect("/").frame(), b"\x81\x0241");
        // Frames carry the shortest header for their length.
        let long = event("/", "a", &"x".repeat(200))?;
        assert_eq!(&long.frame()[..4], [0x81, 126, 0, long.text().len() as u8]);
        assert_eq!(long.frame().len(), long.text().len() + 4);
        Ok(())
    }
}
