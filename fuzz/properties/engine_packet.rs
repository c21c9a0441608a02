//! The Engine.IO packet parser must read any client text as a packet or an error, never a
//! panic, and what it reads must be what was sent: the type digit, then the payload as is.
//! Outbound packets must frame any text with a header that states its length.
//! Shared by the `engine_packet` fuzz target and `engineio/tests/fuzz_corpora.rs`.

use engineio::Packet;
use engineio::packet::{EnginePacket, parse};

/// The property, on one input.
pub fn check(data: &[u8]) {
    let packet = Packet::new(data);
    assert_eq!(packet.text(), data);
    let header = &packet.frame()[..packet.frame().len() - data.len()];
    let stated = match header.get(1) {
        Some(126) => header.get(2..4).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))),
        Some(127) => header.get(2..10).and_then(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            usize::try_from(u64::from_be_bytes(a)).ok()
        }),
        Some(&n) => Some(usize::from(n)),
        None => None,
    };
    assert_eq!((header.first(), stated), (Some(&0x81), Some(data.len())));

    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(parsed) = parse(text) else {
        assert!(
            !matches!(text.as_bytes().first(), Some(b'1'..=b'6')),
            "refused {text:?}"
        );
        return;
    };
    // The payload is what follows the type digit, untouched.
    let (digit, payload) = match parsed {
        EnginePacket::Close => (b'1', None),
        EnginePacket::Ping(rest) => (b'2', Some(rest)),
        EnginePacket::Pong(rest) => (b'3', Some(rest)),
        EnginePacket::Message(rest) => (b'4', Some(rest)),
        EnginePacket::Upgrade => (b'5', None),
        EnginePacket::Noop => (b'6', None),
    };
    assert_eq!(text.as_bytes().first(), Some(&digit));
    if let Some(payload) = payload {
        assert_eq!(text.get(1..), Some(payload));
    }
}
