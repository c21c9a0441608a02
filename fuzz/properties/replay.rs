//! Runs a fuzz target's property on every stored input of its corpus (`fuzz/corpus/<target>/`),
//! for the ordinary `cargo test` of each crate.

use std::path::PathBuf;

/// Replays `fuzz/corpus/<target>` through `property`; an empty or missing corpus is an error.
pub fn replay(target: &str, property: fn(&[u8])) -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() {
            property(&std::fs::read(&path)?);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus in {}", dir.display());
    Ok(())
}
