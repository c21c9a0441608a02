//! JWT verification (the gateway's `auth` module) must refuse any text or any claims it cannot
//! use without a panic, and what it accepts must name a user by the id rule, with a numeric
//! `exp` that is not past: the property is `auth::fuzz_verify`, which `cargo test` also runs
//! on this target's stored corpus (`gateway/tests/fuzz_corpora.rs`).
#![no_main]

// The module file itself, not the gateway crate: see Cargo.toml.
#[path = "../../gateway/src/auth.rs"]
#[allow(dead_code, unused_imports)]
mod auth;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| auth::fuzz_verify(data));
