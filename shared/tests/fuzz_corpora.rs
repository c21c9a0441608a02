//! Replays the stored corpus of the `phoenix_frame` fuzz target through its property
//! (`fuzz/properties/phoenix_frame.rs`) under an ordinary `cargo test`.

#[path = "../../fuzz/properties/phoenix_frame.rs"]
mod phoenix_frame;

#[path = "../../fuzz/properties/replay.rs"]
mod replay;

#[test]
fn phoenix_frame_corpus_replays() -> Result<(), Box<dyn std::error::Error>> {
    replay::replay("phoenix_frame", phoenix_frame::check)
}
