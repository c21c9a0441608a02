//! The `ws_frame` target: the property in `fuzz/properties/ws_frame.rs`.
#![no_main]

#[path = "../properties/ws_frame.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|input: &[u8]| property::check(input));
