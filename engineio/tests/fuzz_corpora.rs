//! Replays the stored corpora of the `ws_frame` and `engine_packet` fuzz targets
//! (`fuzz/corpus/<target>/`) through the very property each target checks
//! (`fuzz/properties/`), so that `cargo test` keeps every input the fuzzer once found
//! interesting passing, without a nightly toolchain.

#[path = "../../fuzz/properties/ws_frame.rs"]
mod ws_frame;

#[path = "../../fuzz/properties/engine_packet.rs"]
mod engine_packet;

#[path = "../../fuzz/properties/replay.rs"]
mod replay;

#[test]
fn ws_frame_corpus_replays() -> Result<(), Box<dyn std::error::Error>> {
    replay::replay("ws_frame", ws_frame::check)
}

#[test]
fn engine_packet_corpus_replays() -> Result<(), Box<dyn std::error::Error>> {
    replay::replay("engine_packet", engine_packet::check)
}
