//! The `engine_packet` target: the property in `fuzz/properties/engine_packet.rs`.
#![no_main]

#[path = "../properties/engine_packet.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|data: &[u8]| property::check(data));
