//! The Socket.IO packet parser (the gateway's adapter) must read any text inside an Engine.IO
//! message as a packet or an error, never a panic; a packet's parts must come from the text
//! in order, and an event's arguments must parse or fail cleanly.
//! Shared by the `sio_packet` fuzz target and `gateway/tests/fuzz_corpora.rs`; the including
//! crate provides the codec as `packet` beside this module.

use super::packet::{Kind, event_args, parse_sio};

/// The property, on one input.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(p) = parse_sio(text) else { return };
    assert!(p.ns.starts_with('/'), "namespace {:?} from {text:?}", p.ns);
    assert!(text.ends_with(p.data), "data is the rest of the text");
    if p.ns != "/" {
        assert!(text.contains(p.ns));
    }
    if p.attachments > 0 {
        assert!(matches!(p.kind, Kind::BinaryEvent | Kind::BinaryAck));
    }
    if let Some(ack) = p.ack {
        assert!(ack >= 0, "ack ids are digits only");
    }
    if let Ok((name, _first)) = event_args(p.data) {
        // The name came out of the JSON: it serializes back to a string in it.
        assert!(serde_json::to_string(&name).is_ok());
    }
}
