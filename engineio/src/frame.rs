//! WebSocket (RFC 6455) framing as Engine.IO needs it, over the connection's own TCP stream:
//! the handshake answer, client frames read from whatever bytes arrive, and headers for server
//! frames. Owning the framing lets a sender write a frame straight to the socket when nothing
//! is queued, and lets an idle connection hold no buffer at all.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Opcode: the next fragment of a message.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode: a UTF-8 text message.
pub const OP_TEXT: u8 = 0x1;
/// Opcode: a binary message.
pub const OP_BINARY: u8 = 0x2;
/// Opcode: the closing handshake.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode: a ping.
pub const OP_PING: u8 = 0x9;
/// Opcode: a pong.
pub const OP_PONG: u8 = 0xA;

/// Close code for a protocol violation.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code for a text message that is not UTF-8.
pub const CLOSE_NOT_UTF8: u16 = 1007;
/// Close code for a message over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a normal close, and the answer to a close frame without a code.
pub const CLOSE_NORMAL: u16 = 1000;

/// Whether a client may send `code` in a close frame (RFC 6455 §7.4: the defined codes a peer
/// may send, and the ranges for libraries and applications).
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The status code of a client's close frame payload, checked.
fn close_payload(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !close_code_allowed(code) {
                return Err(WsError::Protocol("close code not allowed"));
            }
            std::str::from_utf8(reason).map_err(|_| WsError::NotUtf8)?;
            Ok(Some(code))
        }
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The header of an unfragmented, unmasked server frame carrying `len` bytes.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header for an `opcode` frame of `len` payload bytes.
    pub fn new(opcode: u8, len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let n = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Self { bytes, len: n }
    }

    /// The header's bytes, 2 to 10 of them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A whole frame (header and payload) in one buffer, for control frames.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let header = Header::new(opcode, payload.len());
    let mut out = Vec::with_capacity(header.as_bytes().len() + payload.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// A close frame with its code.
pub fn close_frame(code: u16) -> Vec<u8> {
    frame(OP_CLOSE, &code.to_be_bytes())
}

/// Why the client's byte stream is not acceptable; each maps to a close code.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A frame or reassembled message over the size limit.
    #[error("message over the size limit")]
    TooBig,
    /// A frame RFC 6455 forbids from a client.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message that is not UTF-8.
    #[error("text message is not UTF-8")]
    NotUtf8,
}

impl WsError {
    /// The close code that tells the client why.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooBig => CLOSE_TOO_BIG,
            WsError::Protocol(_) => CLOSE_PROTOCOL,
            WsError::NotUtf8 => CLOSE_NOT_UTF8,
        }
    }
}

/// A whole message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A whole text message, reassembled if it came in fragments.
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping and its payload, for the pong.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// The client's close frame, with its status code if it gave one (a valid one: a close
    /// frame with a code RFC 6455 forbids, or a reason that is not UTF-8, is an error).
    Close(Option<u16>),
}

/// Reassembles client frames from the bytes as they arrive. Holds memory only while a frame
/// or a fragmented message is incomplete.
#[derive(Default)]
pub struct Reader {
    /// Bytes of an incomplete frame.
    partial: Vec<u8>,
    /// A fragmented message being assembled, and its opcode.
    message: Vec<u8>,
    message_opcode: Option<u8>,
    /// How much of a fragmented text message is known to be UTF-8: each fragment is checked
    /// as it comes, so a bad one fails at once.
    checked: usize,
}

/// One parsed frame header: where the payload is, and its mask.
struct FrameHead {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    start: usize,
    end: usize,
}

fn parse_head(data: &[u8], max: usize) -> Result<Option<FrameHead>, WsError> {
    let (Some(&b0), Some(&b1)) = (data.first(), data.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("client frame not masked"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => match data.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match data.get(2..10) {
            // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
            Some(b) if b[0] & 0x80 != 0 => return Err(WsError::Protocol("64-bit length with its top bit set")),
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let opcode = b0 & 0x0F;
    let fin = b0 & 0x80 != 0;
    if opcode >= 0x8 && (!fin || len > 125) {
        return Err(WsError::Protocol("bad control frame"));
    }
    let len = usize::try_from(len).map_err(|_| WsError::TooBig)?;
    if len > max {
        return Err(WsError::TooBig);
    }
    let Some(mask) = data.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    if data.len() < at + len {
        return Ok(None);
    }
    Ok(Some(FrameHead {
        fin,
        opcode,
        mask,
        start: at,
        end: at + len,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

impl Reader {
    /// Reads the frames in `chunk` (the bytes just received), handing each complete message
    /// and control frame to `on`. `max` bounds a message. Stops at the first error; after a
    /// close frame the rest is ignored.
    pub fn feed(&mut self, chunk: &mut [u8], max: usize, on: &mut dyn FnMut(Incoming<'_>)) -> Result<(), WsError> {
        if self.partial.is_empty() {
            let used = self.frames(chunk, max, on)?;
            if used < chunk.len() {
                self.partial.extend_from_slice(&chunk[used..]);
            }
        } else {
            self.partial.extend_from_slice(chunk);
            let mut partial = std::mem::take(&mut self.partial);
            let used = self.frames(&mut partial, max, on)?;
            partial.drain(..used);
            self.partial = partial;
        }
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = Vec::new();
        }
        Ok(())
    }

    /// Reads whole frames from the start of `data`; returns how many bytes they used.
    fn frames(&mut self, data: &mut [u8], max: usize, on: &mut dyn FnMut(Incoming<'_>)) -> Result<usize, WsError> {
        let mut used = 0;
        // Allow the frame header on top of the payload limit while waiting for a frame.
        while let Some(head) = parse_head(&data[used..], max)? {
            let (start, end) = (used + head.start, used + head.end);
            used = end;
            let payload = &mut data[start..end];
            unmask(payload, head.mask);
            match head.opcode {
                OP_CLOSE => {
                    on(Incoming::Close(close_payload(payload)?));
                    return Ok(data.len());
                }
                OP_PING => on(Incoming::Ping(payload)),
                OP_PONG => on(Incoming::Pong),
                OP_TEXT | OP_BINARY if self.message_opcode.is_some() => {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                OP_TEXT | OP_BINARY if head.fin => deliver(head.opcode, payload, on)?,
                OP_TEXT | OP_BINARY => {
                    self.message_opcode = Some(head.opcode);
                    self.message.extend_from_slice(payload);
                    self.check_fragment(head.opcode)?;
                }
                OP_CONTINUATION => {
                    let Some(opcode) = self.message_opcode else {
                        return Err(WsError::Protocol("continuation without a message"));
                    };
                    if self.message.len() + payload.len() > max {
                        return Err(WsError::TooBig);
                    }
                    self.message.extend_from_slice(payload);
                    self.check_fragment(opcode)?;
                    if head.fin {
                        let message = std::mem::take(&mut self.message);
                        self.message_opcode = None;
                        self.checked = 0;
                        deliver(opcode, &message, on)?;
                    }
                }
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
        }
        Ok(used)
    }
}

impl Reader {
    /// Checks the text received so far of a fragmented message: only a sequence cut at the
    /// end (its next fragment may complete it) is not an error yet.
    fn check_fragment(&mut self, opcode: u8) -> Result<(), WsError> {
        if opcode != OP_TEXT {
            return Ok(());
        }
        let rest = &self.message[self.checked..];
        match std::str::from_utf8(rest) {
            Ok(_) => self.checked = self.message.len(),
            Err(e) if e.error_len().is_some() => return Err(WsError::NotUtf8),
            Err(e) => self.checked += e.valid_up_to(),
        }
        Ok(())
    }
}

fn deliver(opcode: u8, payload: &[u8], on: &mut dyn FnMut(Incoming<'_>)) -> Result<(), WsError> {
    if opcode == OP_TEXT {
        on(Incoming::Text(
            std::str::from_utf8(payload).map_err(|_| WsError::NotUtf8)?,
        ));
    } else {
        on(Incoming::Binary(payload));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as browsers send them.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn read_all(reader: &mut Reader, chunks: &mut [Vec<u8>], max: usize) -> Result<Vec<String>, WsError> {
        let mut seen = Vec::new();
        for chunk in chunks {
            reader.feed(chunk, max, &mut |m| {
                seen.push(match m {
                    Incoming::Text(t) => format!("text:{t}"),
                    Incoming::Binary(b) => format!("binary:{}", b.len()),
                    Incoming::Ping(p) => format!("ping:{}", p.len()),
                    Incoming::Pong => "pong".into(),
                    Incoming::Close(code) => format!("close {code:?}"),
                })
            })?;
        }
        Ok(seen)
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn headers_use_the_shortest_length() {
        assert_eq!(Header::new(OP_TEXT, 5).as_bytes(), [0x81, 5]);
        assert_eq!(Header::new(OP_TEXT, 300).as_bytes(), [0x81, 126, 1, 44]);
        assert_eq!(
            Header::new(OP_BINARY, 70_000).as_bytes(),
            [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn reads_frames_split_anywhere() -> Result<(), WsError> {
        let mut bytes = client_frame(true, OP_TEXT, b"42[\"a\"]");
        bytes.extend(client_frame(true, OP_PING, b"hi"));
        bytes.extend(client_frame(true, OP_TEXT, "é".repeat(100).as_bytes()));
        bytes.extend(client_frame(false, OP_TEXT, b"frag"));
        bytes.extend(client_frame(true, OP_PONG, b""));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"ment"));
        let want = vec![
            "text:42[\"a\"]".to_string(),
            "ping:2".into(),
            format!("text:{}", "é".repeat(100)),
            "pong".into(),
            "text:fragment".into(),
        ];
        for split in [1, 2, 3, 7, 13, bytes.len()] {
            let mut chunks: Vec<Vec<u8>> = bytes.chunks(split).map(<[u8]>::to_vec).collect();
            let mut reader = Reader::default();
            assert_eq!(read_all(&mut reader, &mut chunks, 1 << 20)?, want, "split {split}");
            assert_eq!(reader.partial.capacity(), 0, "nothing kept after whole frames");
        }
        Ok(())
    }

    #[test]
    fn refuses_what_it_must() {
        let mut r = Reader::default();
        let mut big = vec![client_frame(true, OP_TEXT, &[b'a'; 200])];
        assert_eq!(read_all(&mut r, &mut big, 100), Err(WsError::TooBig));
        let mut unmasked = vec![vec![0x81, 1, b'a']];
        assert!(matches!(
            read_all(&mut Reader::default(), &mut unmasked, 100),
            Err(WsError::Protocol(_))
        ));
        let mut bad_utf8 = vec![client_frame(true, OP_TEXT, &[0xff, 0xfe])];
        assert_eq!(
            read_all(&mut Reader::default(), &mut bad_utf8, 100),
            Err(WsError::NotUtf8)
        );
        let mut stray = vec![client_frame(true, OP_CONTINUATION, b"x")];
        assert!(matches!(
            read_all(&mut Reader::default(), &mut stray, 100),
            Err(WsError::Protocol(_))
        ));
        let mut fragments = vec![
            client_frame(false, OP_TEXT, &[b'a'; 60]),
            client_frame(true, OP_CONTINUATION, &[b'a'; 60]),
        ];
        assert_eq!(
            read_all(&mut Reader::default(), &mut fragments, 100),
            Err(WsError::TooBig)
        );
        // RFC 6455 §5.2: a 64-bit length's top bit must be 0 (a protocol error, not "too big").
        let mut huge = vec![vec![0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]];
        assert!(matches!(
            read_all(&mut Reader::default(), &mut huge, 100),
            Err(WsError::Protocol(_))
        ));
    }

    fn close_with(payload: &[u8]) -> Result<Vec<String>, WsError> {
        read_all(
            &mut Reader::default(),
            &mut [client_frame(true, OP_CLOSE, payload)],
            100,
        )
    }

    #[test]
    fn close_frames_carry_an_allowed_code_and_a_utf8_reason() -> Result<(), WsError> {
        assert_eq!(close_with(b"")?, ["close None"]);
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice("fin ✓".as_bytes());
            assert_eq!(close_with(&payload)?, [format!("close Some({code})")]);
        }
        // The codes RFC 6455 §7.4 reserves or leaves undefined: the close fails with 1002.
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            let err = close_with(&code.to_be_bytes()).err();
            assert_eq!(err.map(|e| e.close_code()), Some(CLOSE_PROTOCOL), "code {code}");
        }
        assert_eq!(close_with(&[0x03]).err().map(|e| e.close_code()), Some(CLOSE_PROTOCOL));
        // A reason that is not UTF-8: 1007.
        assert_eq!(close_with(&[0x03, 0xE8, 0xff]), Err(WsError::NotUtf8));
        Ok(())
    }

    #[test]
    fn a_fragmented_text_fails_at_its_first_bad_fragment() {
        let mut reader = Reader::default();
        // The first fragment ends inside a valid sequence: not an error yet.
        let mut cut = vec![client_frame(false, OP_TEXT, &"é".as_bytes()[..1])];
        assert_eq!(read_all(&mut reader, &mut cut, 100), Ok(vec![]));
        // The next one breaks it: failed before the message's last fragment.
        let mut broken = vec![client_frame(false, OP_CONTINUATION, &[0x41])];
        assert_eq!(read_all(&mut reader, &mut broken, 100), Err(WsError::NotUtf8));
        // A sequence split across fragments is fine.
        let mut reader = Reader::default();
        let bytes = "é!".as_bytes();
        let mut split = vec![
            client_frame(false, OP_TEXT, &bytes[..1]),
            client_frame(true, OP_CONTINUATION, &bytes[1..]),
        ];
        assert_eq!(read_all(&mut reader, &mut split, 100), Ok(vec!["text:é!".to_owned()]));
    }
}
