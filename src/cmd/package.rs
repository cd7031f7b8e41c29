//! `headstream package COMPONENT --out DIR`: a written (not trained) head as a deployable
//! package: the component, its assets, its configuration and a manifest with their digests.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use headstream_package::{FileRef, Kind, Manifest};
use headstream_plugin_host::{Asset, HeadConfig, HostConfig, PluginHost, TaskKind};
use serde_json::{Value, json};

use crate::cli::PackageArgs;

/// Loads the component with its configuration and assets (so a package that would not
/// configure is never written), then writes the package.
pub fn run(args: &PackageArgs) -> anyhow::Result<()> {
    let component = std::fs::read(&args.component)
        .with_context(|| format!("cannot read the component {}", args.component.display()))?;
    let config: Value = serde_json::from_str(&args.config)
        .with_context(|| format!("--config is not JSON: {}", args.config))?;
    if !config.is_object() {
        bail!("--config must be a JSON object, not {}", args.config);
    }
    let mut assets: Vec<(String, String, Vec<u8>)> = Vec::new();
    for spec in &args.assets {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--asset {spec}: expected NAME=FILE");
        };
        if !headstream_package::is_plain_name(name) || assets.iter().any(|a| a.0 == name) {
            bail!("--asset {spec}: the name must be a plain, unique file name");
        }
        let path = PathBuf::from(file);
        let data =
            std::fs::read(&path).with_context(|| format!("--asset {name}: cannot read {file}"))?;
        // The file keeps its own name unless that is taken (by another asset, the component or
        // the manifest): then `<asset name>.bin`.
        let taken = |n: &str| {
            n == "head.wasm"
                || n == headstream_package::MANIFEST
                || assets.iter().any(|(_, stored, _)| stored == n)
        };
        let stored = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| headstream_package::is_plain_name(n) && !taken(n))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{name}.bin"));
        if taken(&stored) {
            bail!("--asset {spec}: two assets would be stored as {stored}");
        }
        assets.push((name.to_owned(), stored, data));
    }

    // The encoder serves `embed` for heads that embed while configuring.
    let encoder = Arc::new(super::load_encoder(
        &args.model,
        args.model.precision(),
        32,
    )?);
    let host = PluginHost::new(HostConfig {
        cache_dir: super::run::component_cache(),
        encoder: Some(encoder.fingerprint().clone()),
        embedder: Some(encoder.clone()),
        ..HostConfig::default()
    })?;
    let head = host
        .load_bytes(
            &args.component,
            &component,
            HeadConfig {
                config: config.clone(),
                assets: assets
                    .iter()
                    .map(|(name, _, data)| Asset {
                        name: name.clone(),
                        data: data.clone(),
                    })
                    .collect(),
                ..HeadConfig::default()
            },
        )
        .with_context(|| format!("{} does not load", args.component.display()))?;
    let described = head.description();
    let name = args.name.clone().unwrap_or_else(|| described.name.clone());
    if !headstream_package::is_plain_name(&name) {
        bail!("{name:?} is not a usable package name");
    }
    let version = args
        .package_version
        .clone()
        .unwrap_or_else(|| described.version.clone());
    if semver::Version::parse(&version).is_err() {
        bail!("version {version:?} is not semver (pass --package-version)");
    }
    let kind = match described.kind {
        TaskKind::Classify => Kind::Classify,
        TaskKind::Tokens => Kind::Tokens,
        _ => Kind::Other,
    };
    let manifest = Manifest {
        format: headstream_package::FORMAT,
        name: name.clone(),
        version: version.clone(),
        kind,
        labels: described.labels.clone(),
        // A head that pins an encoder says so itself; otherwise it works on any.
        encoder: described.encoder.clone(),
        component: FileRef {
            file: String::new(),
            sha256: String::new(),
        },
        assets: Default::default(),
        config,
        training: None,
        metrics: None,
        approved_encoders: Vec::new(),
    };
    let files: Vec<(&str, &str, &[u8])> = assets
        .iter()
        .map(|(n, f, d)| (n.as_str(), f.as_str(), d.as_slice()))
        .collect();
    let package = headstream_package::write(&args.out, manifest, &component, &files)?;
    let summary = json!({
        "package": args.out.display().to_string(),
        "name": name,
        "version": version,
        "kind": kind.as_str(),
        "runtime": head.runtime().to_string(),
        "component_sha256": package.manifest.component.sha256,
        "assets": package.manifest.assets.keys().collect::<Vec<_>>(),
        "encoder": package.manifest.encoder,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
