//! Replays the stored corpora of the `jwt` and `inbound` fuzz targets (`fuzz/corpus/<target>/`)
//! through the very property each target checks, so that `cargo test` keeps every input the
//! fuzzer once found interesting passing, without a nightly toolchain.

use std::path::PathBuf;

fn replay(target: &str, property: fn(&[u8])) -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() {
            let data = std::fs::read(&path)?;
            property(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus in {}", dir.display());
    Ok(())
}

#[test]
fn jwt_corpus_replays() -> Result<(), Box<dyn std::error::Error>> {
    replay("jwt", gateway::auth::fuzz_verify)
}

#[test]
fn inbound_corpus_replays() -> Result<(), Box<dyn std::error::Error>> {
    replay("inbound", gateway::inbound::fuzz_read)
}
