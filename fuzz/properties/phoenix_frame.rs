//! The Phoenix frame decoder must turn any client text into a frame or an error, never a panic,
//! and a decoded frame must encode back to an array the decoder reads the same way.
//! Shared by the `phoenix_frame` fuzz target and `shared/tests/fuzz_corpora.rs`.

use shared::phoenix::{decode, encode};

/// The property, on one input.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = decode(text) {
        let again = encode(
            frame.join_ref.as_deref(),
            frame.reference.as_deref(),
            &frame.topic,
            &frame.event,
            &frame.payload,
        )
        .ok()
        .and_then(|s| decode(&s).ok());
        assert!(
            again.is_some_and(|f| f.join_ref == frame.join_ref
                && f.reference == frame.reference
                && f.topic == frame.topic
                && f.event == frame.event
                && f.payload.get() == frame.payload.get()),
            "round trip changed {text:?}"
        );
    }
}
