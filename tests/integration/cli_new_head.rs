//! `headstream new-head` scaffolds a plugin crate from plugins/template and registers it in the
//! plugins workspace; bad names and existing directories are refused.

use crate::headstream;

#[test]
fn scaffolds_a_head_and_adds_it_to_the_workspace() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[workspace]\nmembers = [\n    \"sdk\",\n]\n",
    )?;
    let plugins = dir.path().to_string_lossy().into_owned();
    let run = headstream(&["new-head", "shouting", "--dir", &plugins], b"");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let manifest = std::fs::read_to_string(dir.path().join("shouting/Cargo.toml"))?;
    assert!(manifest.contains("name = \"shouting\""), "{manifest}");
    let lib = std::fs::read_to_string(dir.path().join("shouting/src/lib.rs"))?;
    assert!(
        lib.contains("describe(\"shouting\"") && lib.contains("export_head!"),
        "{lib}"
    );
    let workspace = std::fs::read_to_string(dir.path().join("Cargo.toml"))?;
    assert!(
        workspace.contains("\"shouting\",") && workspace.contains("\"sdk\","),
        "{workspace}"
    );

    let again = headstream(&["new-head", "shouting", "--dir", &plugins], b"");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = headstream(&["new-head", "Bad Name", "--dir", &plugins], b"");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must be lowercase"));
    Ok(())
}
