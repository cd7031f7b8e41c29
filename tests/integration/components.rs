//! The components inside the binary (`crates/components/wasm/`) are what `plugins/` builds to
//! now: `scripts/components.sh --check` rebuilds them reproducibly (machine paths remapped)
//! and compares the bytes. With a rustc other than the one recorded in `wasm/BUILD` the bytes
//! cannot be compared and the script says so.

use std::process::Command;

use headstream_test_util::workspace_root;

#[test]
fn builtin_components_are_what_the_plugin_sources_build_to() {
    let root = workspace_root();
    let out = Command::new("bash")
        .arg(root.join("scripts/components.sh"))
        .arg("--check")
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/components.sh: {e}"));
    // Visible with --nocapture: whether the bytes were compared (same rustc) or not.
    eprintln!(
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
