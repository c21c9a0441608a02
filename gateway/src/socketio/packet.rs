//! Socket.IO v5 packets as text, the same on both transports: parsing what clients send
//! inside an Engine.IO message, and encoding what the node sends. Outbound packets are whole
//! Engine.IO packets (`4` + the Socket.IO packet), built once by the `engineio` crate with
//! their WebSocket frame header in front and shared by every recipient.

use engineio::{Packet, PacketBuilder};
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

/// An event's name and first argument (`Null` when it has none). Like the reference parser,
/// the data must be a non-empty array whose first item, the name, is a string or a number.
pub fn event_args(data: &str) -> Result<(String, Value), PacketError> {
    let args: Vec<&RawValue> = serde_json::from_str(data).map_err(|e| PacketError::Data(e.to_string()))?;
    let mut args = args.into_iter();
    let name = match args.next().map(|n| serde_json::from_str::<Value>(n.get())) {
        Some(Ok(Value::String(name))) => name,
        Some(Ok(Value::Number(n))) => n.to_string(),
        _ => return Err(PacketError::Data("an event starts with its name".into())),
    };
    let first = match args.next() {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| PacketError::Data(e.to_string()))?,
        None => Value::Null,
    };
    Ok((name, first))
}

/// A CONNECT's `auth` payload: none, or a JSON object (the reference parser refuses the rest).
pub fn connect_auth(data: &str) -> Result<Option<Value>, PacketError> {
    if data.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str(data) {
        Ok(auth @ Value::Object(_)) => Ok(Some(auth)),
        Ok(_) => Err(PacketError::Data("a CONNECT payload is an object".into())),
        Err(e) => Err(PacketError::Data(e.to_string())),
    }
}

/// The most of a client's namespace name a refusal echoes back.
const ECHOED_NAMESPACE: usize = 128;

/// A client-given namespace name as a refusal echoes it: cut to a bound, at a character
/// boundary, so that a huge name does not come back whole.
pub fn echoed(ns: &str) -> &str {
    if ns.len() <= ECHOED_NAMESPACE {
        return ns;
    }
    let mut end = ECHOED_NAMESPACE;
    while !ns.is_char_boundary(end) {
        end -= 1;
    }
    &ns[..end]
}

/// Starts an outbound packet: `4`, the Socket.IO type digit, and the namespace unless `/`.
fn header(kind: u8, ns: &str, capacity: usize) -> PacketBuilder {
    let mut out = PacketBuilder::with_capacity(capacity + ns.len() + 4);
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
    Ok(out.build())
}

/// `43<id>[payload]`: the answer to an event that asked for one.
pub fn ack(ns: &str, id: i64, payload: &impl Serialize) -> Result<Packet, serde_json::Error> {
    let mut out = header(b'3', ns, 128);
    out.extend_from_slice(id.to_string().as_bytes());
    out.push(b'[');
    serde_json::to_writer(&mut out, payload)?;
    out.push(b']');
    Ok(out.build())
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
    out.build()
}

/// Longest namespace echoed back in a `connect_error`, in bytes; a longer one (a client's
/// unknown namespace) is cut at a character boundary below it.
pub const MAX_ECHOED_NAMESPACE: usize = 256;

/// `44{"message":…}`: the namespace connection is refused.
pub fn connect_error(ns: &str, message: &str) -> Packet {
    #[derive(Serialize)]
    struct Refusal<'a> {
        message: &'a str,
    }
    let mut end = ns.len().min(MAX_ECHOED_NAMESPACE);
    while !ns.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = header(b'4', ns.get(..end).unwrap_or("/"), 64);
    let _ = serde_json::to_writer(&mut out, &Refusal { message });
    out.build()
}

/// `41`: the server closes the namespace (the client does not reconnect).
pub fn disconnect(ns: &str) -> Packet {
    header(b'1', ns, 0).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        // The reference parser takes a number as a name.
        assert_eq!(event_args("[1]")?, ("1".into(), Value::Null));
        assert!(event_args("[null]").is_err());
        assert!(event_args("{}").is_err());
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
        // Issue 12: an unknown namespace is echoed back at most 256 bytes long.
        let ns = format!("/{}", "é".repeat(100_000));
        let refused = connect_error(&ns, "Invalid namespace");
        assert!(
            refused.text().len() < MAX_ECHOED_NAMESPACE + 64,
            "{}",
            refused.text().len()
        );
        // Frames carry the shortest header for their length.
        let long = event("/", "a", &"x".repeat(200))?;
        assert_eq!(&long.frame()[..4], [0x81, 126, 0, long.text().len() as u8]);
        assert_eq!(long.frame().len(), long.text().len() + 4);
        Ok(())
    }
}
