//! The `sio_packet` target: the property in `fuzz/properties/sio_packet.rs`.
#![no_main]

// The codec file itself, not the gateway crate: see Cargo.toml.
#[path = "../../gateway/src/socketio/packet.rs"]
#[allow(dead_code)]
mod packet;

#[path = "../properties/sio_packet.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|data: &[u8]| property::check(data));
