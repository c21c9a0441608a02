//! The `phoenix_frame` target: the property in `fuzz/properties/phoenix_frame.rs`.
#![no_main]

#[path = "../properties/phoenix_frame.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|data: &[u8]| property::check(data));
