//! Replays the stored corpora of the `jwt`, `inbound` and `sio_packet` fuzz targets
//! (`fuzz/corpus/<target>/`) through the very property each target checks, so that `cargo
//! test` keeps every input the fuzzer once found interesting passing, without a nightly
//! toolchain.

#[path = "../../fuzz/properties/replay.rs"]
mod replay;

use replay::replay;

/// The codec the `sio_packet` property reads, as its fuzz target provides it.
mod packet {
    pub use gateway::socketio::packet::*;
}

#[path = "../../fuzz/properties/sio_packet.rs"]
mod sio_packet;

#[test]
fn jwt_corpus_replays() -> Result<(), Box<dyn std::error::Error>> {
    replay("jwt", gateway::auth::fuzz_verify)
}

#[test]
fn inbound_corpus_replays() -> Result<(), Box<dyn std::error::Error>> {
    replay("inbound", gateway::inbound::fuzz_read)
}

#[test]
fn sio_packet_corpus_replays() -> Result<(), Box<dyn std::error::Error>> {
    replay("sio_packet", sio_packet::check)
}
