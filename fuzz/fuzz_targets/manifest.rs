//! Any bytes as a package's manifest.json: the package loads with every file verified and
//! inside its directory, or is refused with an error; never a panic, never a read outside.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use headstream_package::{Package, is_plain_name};
use libfuzzer_sys::fuzz_target;

fn package_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("headstream-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("head.wasm"), b"\0asm\x0d\0\x01\0").expect("component");
        std::fs::write(dir.join("weights.safetensors"), b"weights").expect("asset");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = package_dir();
    std::fs::write(dir.join("manifest.json"), data).expect("manifest");
    if let Ok(package) = Package::load(dir) {
        let m = &package.manifest;
        assert!(is_plain_name(&m.component.file));
        assert!(m.assets.values().all(|f| is_plain_name(&f.file)));
        let _ = m.headline_metric();
        let _ = package.config_with(&serde_json::json!({ "k": 1 }));
    }
});
