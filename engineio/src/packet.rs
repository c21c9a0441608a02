//! Engine.IO v4 packets as text, the same on both transports: parsing what clients send, and
//! outbound packets built once with their WebSocket frame header in front, shared by every
//! recipient: a WebSocket session writes the frame as it is, a polling session the text after
//! the header.

use crate::frame;
use bytes::Bytes;
use std::io;

/// Engine.IO's packet separator in a polling body.
pub const SEPARATOR: u8 = 0x1e;

/// An Engine.IO packet a client sent that cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Empty, or an unknown type digit.
    #[error("unknown packet type")]
    UnknownType,
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
    /// `4` + the message (for Socket.IO, its packet).
    Message(&'a str),
    /// `5`: the client switches to the probed WebSocket.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Reads one Engine.IO text packet.
pub fn parse(text: &str) -> Result<EnginePacket<'_>, ParseError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(ParseError::UnknownType)?;
    let rest = chars.as_str();
    Ok(match kind {
        '1' => EnginePacket::Close,
        '2' => EnginePacket::Ping(rest),
        '3' => EnginePacket::Pong(rest),
        '4' => EnginePacket::Message(rest),
        '5' => EnginePacket::Upgrade,
        '6' => EnginePacket::Noop,
        _ => return Err(ParseError::UnknownType),
    })
}

/// Room left in front of a packet's text for the longest WebSocket frame header.
const HEADER_ROOM: usize = 10;

/// An outbound Engine.IO packet as a whole WebSocket text frame; cheap to clone.
#[derive(Clone, Debug)]
pub struct Packet {
    frame: Bytes,
    /// Where the text starts (the frame header's length).
    text_at: u8,
    /// A binary message's polling form (`b` + base64), which is not in its frame.
    binary_text: Option<Bytes>,
}

impl Packet {
    /// A packet from its whole text (type digit included).
    pub fn new(text: &[u8]) -> Self {
        let mut out = PacketBuilder::with_capacity(text.len());
        out.extend_from_slice(text);
        out.build()
    }

    /// A control frame (a pong, a close), to queue behind the frames before it.
    pub(crate) fn control(opcode: u8, payload: &[u8]) -> Self {
        let frame = frame::frame(opcode, payload);
        // A control frame's payload is at most 125 bytes: a 2-byte header.
        Self {
            frame: Bytes::from(frame),
            text_at: 2,
            binary_text: None,
        }
    }

    /// A binary message: a WebSocket binary frame, or `b` + base64 in a polling payload.
    pub fn binary(data: &[u8]) -> Self {
        use base64::Engine as _;
        let mut text = b"b".to_vec();
        text.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(data).as_bytes());
        Self {
            frame: Bytes::from(frame::frame(frame::OP_BINARY, data)),
            text_at: 0,
            binary_text: Some(Bytes::from(text)),
        }
    }

    /// The whole WebSocket frame.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// The Engine.IO text, for polling.
    pub fn text(&self) -> &[u8] {
        match &self.binary_text {
            Some(text) => text,
            None => &self.frame[usize::from(self.text_at)..],
        }
    }
}

/// Writes a packet's text in place, after room for its frame header, so that building the
/// frame copies nothing; `io::Write` lets serializers write straight into it.
#[derive(Debug)]
pub struct PacketBuilder {
    out: Vec<u8>,
}

impl PacketBuilder {
    /// An empty packet with room for `capacity` bytes of text.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(HEADER_ROOM + capacity);
        out.extend_from_slice(&[0; HEADER_ROOM]);
        Self { out }
    }

    /// Appends one byte of text.
    pub fn push(&mut self, byte: u8) {
        self.out.push(byte);
    }

    /// Appends text.
    pub fn extend_from_slice(&mut self, text: &[u8]) {
        self.out.extend_from_slice(text);
    }

    /// The packet, its frame header written just before the text.
    pub fn build(self) -> Packet {
        let mut out = self.out;
        let header = frame::Header::new(frame::OP_TEXT, out.len() - HEADER_ROOM);
        let header = header.as_bytes();
        let start = HEADER_ROOM - header.len();
        out[start..HEADER_ROOM].copy_from_slice(header);
        Packet {
            frame: Bytes::from(out).slice(start..),
            // A header is at most 10 bytes.
            text_at: header.len() as u8,
            binary_text: None,
        }
    }
}

impl io::Write for PacketBuilder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_engine_packets() {
        assert_eq!(parse("2probe").ok(), Some(EnginePacket::Ping("probe")));
        assert_eq!(parse("3").ok(), Some(EnginePacket::Pong("")));
        assert_eq!(parse("42[\"a\"]").ok(), Some(EnginePacket::Message("2[\"a\"]")));
        assert_eq!(parse("5").ok(), Some(EnginePacket::Upgrade));
        assert_eq!(parse("6").ok(), Some(EnginePacket::Noop));
        assert_eq!(parse("1").ok(), Some(EnginePacket::Close));
        assert!(parse("").is_err());
        assert!(parse("9").is_err());
        assert!(parse("é").is_err());
    }

    #[test]
    fn frames_carry_the_shortest_header() {
        let short = Packet::new(b"41");
        assert_eq!(short.frame(), b"\x81\x0241");
        assert_eq!(short.text(), b"41");
        let long = Packet::new(&[b'x'; 200]);
        assert_eq!(&long.frame()[..4], [0x81, 126, 0, 200]);
        assert_eq!(long.frame().len(), 204);
        assert_eq!(long.text(), [b'x'; 200]);
    }

    #[test]
    fn builder_writes_in_place() -> io::Result<()> {
        use std::io::Write as _;
        let mut b = PacketBuilder::with_capacity(0);
        b.push(b'4');
        b.extend_from_slice(b"2");
        write!(b, "[{}]", 1)?;
        assert_eq!(b.build().text(), b"42[1]");
        Ok(())
    }
}
