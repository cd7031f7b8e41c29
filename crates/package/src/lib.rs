//! Plugin packages: what `headstream train` writes and what the runtime loads like any plugin.
//!
//! A package is a directory holding a WebAssembly component (in Rust, Python or JavaScript),
//! its assets (trained weights as safetensors) and `manifest.json` ([`Manifest`]): name,
//! version, task kind, labels, the configuration to pass to the component, the fingerprint of
//! the encoder the weights were trained on (none for a head that works on any encoder), where
//! the training data came from, the hyper-parameters and the metrics reached.
//! [`Package::load`] reads a package and verifies every file against the sha256 digests the
//! manifest records, so a package that was altered after it was written is refused.
//!
//! ```no_run
//! let package = headstream_package::Package::load("heads/sentiment".as_ref())?;
//! println!("{} {} trained on {:?}", package.manifest.name, package.manifest.version, package.manifest.encoder);
//! # Ok::<(), headstream_package::PackageError>(())
//! ```
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The manifest file inside every package.
pub const MANIFEST: &str = "manifest.json";
/// The manifest format this release reads and writes.
pub const FORMAT: u32 = 1;

/// Why a package could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// A file of the package could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `manifest.json` is not a valid manifest.
    #[error("{}: not a valid package manifest: {source}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// The manifest is of a format this release does not read.
    #[error("{}: manifest format {found} is not supported (this release reads {FORMAT})", path.display())]
    Format {
        /// The manifest file.
        path: PathBuf,
        /// The format it declares.
        found: u32,
    },
    /// A file's digest does not match the manifest.
    #[error("{}: sha256 is {actual}, the manifest says {expected}", path.display())]
    Digest {
        /// The file.
        path: PathBuf,
        /// Digest recorded in the manifest.
        expected: String,
        /// Digest of the file on disk.
        actual: String,
    },
    /// No package in the registry matches a reference.
    #[error("no package matches {reference} in {dirs:?} (versions found: {versions:?})")]
    NotFound {
        /// The reference, `name@requirement`.
        reference: String,
        /// The registry's directories.
        dirs: Vec<PathBuf>,
        /// Versions of packages with that name.
        versions: Vec<String>,
    },
    /// A file name in the manifest leaves the package directory.
    #[error("{}: file {name:?} is not a plain file name inside the package", path.display())]
    Escape {
        /// The manifest file.
        path: PathBuf,
        /// The offending name.
        name: String,
    },
}

/// What kind of task a packaged head performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One label per text.
    Classify,
    /// Entity spans from per-token tags.
    Tokens,
    /// Anything else (a JSON result), or a head that was written rather than trained.
    Other,
}

impl Kind {
    /// The kind's name as written in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Classify => "classify",
            Kind::Tokens => "tokens",
            Kind::Other => "other",
        }
    }
}

/// A file of the package and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// File name inside the package directory.
    pub file: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
}

/// Where the training data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// The data file as given on the command line.
    pub data: String,
    /// sha256 of the data file.
    pub data_sha256: String,
    /// Examples trained on (after few-shot sampling).
    pub examples: usize,
    /// Examples per label (tags per tag for token heads).
    pub per_label: BTreeMap<String, usize>,
    /// Hyper-parameters, including any chosen by cross-validation.
    pub hyperparameters: Value,
    /// The command line that produced the package.
    pub command: String,
}

/// A package's `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format ([`FORMAT`]).
    pub format: u32,
    /// Head name, e.g. `sentiment`.
    pub name: String,
    /// Semver version of this package.
    pub version: String,
    /// Task kind.
    pub kind: Kind,
    /// Labels (classify) or tags (tokens), in the order of the weight rows.
    pub labels: Vec<String>,
    /// Fingerprint (`name@sha256:<hex>`) of the encoder the weights were trained on; hosts
    /// running another encoder refuse the package. `None` for a head that works on any encoder
    /// (rules, say): written by `headstream package`, never by `train`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    /// The WebAssembly component.
    pub component: FileRef,
    /// Assets passed to the component's `configure`, by asset name.
    pub assets: BTreeMap<String, FileRef>,
    /// Configuration passed to the component's `configure` (a JSON object); a pipeline's
    /// `[heads.config]` keys override it.
    pub config: Value,
    /// Training provenance, if the package was trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
    /// Metrics on held-out data, as printed by `headstream eval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
    /// Other encoders (say, the int8 build of `encoder`) the head was evaluated on and approved
    /// for by `headstream eval --approve`; hosts running one of them serve it too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_encoders: Vec<Approval>,
}

/// An encoder a package was approved for after an evaluation on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The approved encoder's fingerprint (`name@sha256:<hex>`).
    pub encoder: String,
    /// The evaluation data file.
    pub data: String,
    /// sha256 of the data file.
    pub data_sha256: String,
    /// The metrics on that encoder, as `eval` printed them.
    pub metrics: Value,
}

impl Manifest {
    /// Every encoder fingerprint the package may run on: the one it was trained on, then the
    /// approved ones.
    pub fn encoders(&self) -> impl Iterator<Item = &str> {
        self.encoder
            .as_deref()
            .into_iter()
            .chain(self.approved_encoders.iter().map(|a| a.encoder.as_str()))
    }

    /// The headline figure of the recorded metrics (`{"accuracy": ..}` for classifiers,
    /// `{"entity_f1": ..}` for token heads), for listings.
    pub fn headline_metric(&self) -> Option<Value> {
        let metrics = &self.metrics.as_ref()?["metrics"];
        metrics
            .get("accuracy")
            .map(|a| serde_json::json!({ "accuracy": a }))
            .or_else(|| {
                metrics["overall"]
                    .get("f1")
                    .map(|f| serde_json::json!({ "entity_f1": f }))
            })
    }
}

/// A verified package on disk.
#[derive(Debug, Clone)]
pub struct Package {
    /// The package directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Package {
    /// Reads `dir/manifest.json` and verifies the component and every asset against their
    /// recorded digests.
    pub fn load(dir: &Path) -> Result<Self, PackageError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).map_err(|source| PackageError::Io {
            path: path.clone(),
            source,
        })?;
        // Check the format before the schema, so a newer manifest says so rather than failing
        // on a field this release does not know.
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe =
            serde_json::from_slice(&text).map_err(|source| PackageError::Manifest {
                path: path.clone(),
                source,
            })?;
        if probe.format != FORMAT {
            return Err(PackageError::Format {
                path,
                found: probe.format,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|source| PackageError::Manifest {
                path: path.clone(),
                source,
            })?;
        let package = Self {
            dir: dir.to_path_buf(),
            manifest,
        };
        package.verify(&package.manifest.component)?;
        for file in package.manifest.assets.values() {
            package.verify(file)?;
        }
        Ok(package)
    }

    /// Writes `manifest.json` from [`Package::manifest`] (e.g. after adding metrics); the
    /// component and asset digests it records are not recomputed.
    pub fn save_manifest(&self) -> Result<(), PackageError> {
        let path = self.dir.join(MANIFEST);
        let mut text =
            serde_json::to_vec_pretty(&self.manifest).map_err(|source| PackageError::Manifest {
                path: path.clone(),
                source,
            })?;
        text.push(b'\n');
        std::fs::write(&path, text).map_err(|source| PackageError::Io { path, source })
    }

    /// Path of the component file.
    pub fn component_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.component.file)
    }

    /// Reads the assets, by name.
    pub fn read_assets(&self) -> Result<Vec<(String, Vec<u8>)>, PackageError> {
        self.manifest
            .assets
            .iter()
            .map(|(name, file)| {
                let path = self.dir.join(&file.file);
                std::fs::read(&path)
                    .map(|data| (name.clone(), data))
                    .map_err(|source| PackageError::Io { path, source })
            })
            .collect()
    }

    /// The configuration for `configure`: the manifest's, with `overrides`' keys replacing its
    /// own.
    pub fn config_with(&self, overrides: &Value) -> Value {
        let mut config = match &self.manifest.config {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        if let Value::Object(extra) = overrides {
            for (k, v) in extra {
                config.insert(k.clone(), v.clone());
            }
        }
        Value::Object(config)
    }

    fn verify(&self, file: &FileRef) -> Result<(), PackageError> {
        let path = self.dir.join(MANIFEST);
        if !is_plain_name(&file.file) {
            return Err(PackageError::Escape {
                path,
                name: file.file.clone(),
            });
        }
        let path = self.dir.join(&file.file);
        let data = std::fs::read(&path).map_err(|source| PackageError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = sha256_hex(&data);
        if actual != file.sha256 {
            return Err(PackageError::Digest {
                path,
                expected: file.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// Directories of packages, searched by name and version: what a pipeline's
/// `plugin = "name@requirement"` resolves against.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// The directories; each holds package directories.
    pub dirs: Vec<PathBuf>,
}

impl Registry {
    /// The registry named by `$HEADSTREAM_REGISTRY` (paths separated by `:`), else `./heads`.
    pub fn from_env() -> Self {
        let dirs = match std::env::var_os("HEADSTREAM_REGISTRY") {
            Some(v) => std::env::split_paths(&v).collect(),
            None => vec![PathBuf::from("heads")],
        };
        Self { dirs }
    }

    /// The registry a command uses: the command line's directories (`--registry`), else the
    /// config's, else [`Registry::from_env`].
    pub fn chosen(cli: &[PathBuf], config: &[PathBuf]) -> Self {
        match (cli, config) {
            ([_, ..], _) => Self { dirs: cli.to_vec() },
            ([], [_, ..]) => Self {
                dirs: config.to_vec(),
            },
            ([], []) => Self::from_env(),
        }
    }

    /// Every package (verified) in the registry, with its version.
    pub fn list(&self) -> Vec<(semver::Version, Package)> {
        let mut found = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if !is_package(&path) {
                    continue;
                }
                match Package::load(&path) {
                    Ok(p) => match semver::Version::parse(&p.manifest.version) {
                        Ok(v) => found.push((v, p)),
                        Err(e) => tracing_skip(&path, &e.to_string()),
                    },
                    Err(e) => tracing_skip(&path, &e.to_string()),
                }
            }
        }
        found
    }

    /// The newest package called `name` whose version meets `req`.
    pub fn resolve(&self, name: &str, req: &semver::VersionReq) -> Result<Package, PackageError> {
        self.resolve_with(name, &req.to_string(), |version, _| req.matches(version))
    }

    /// The newest package called `name` for which `matches(version, manifest)` holds;
    /// `requirement` describes the test in the error when none does.
    pub fn resolve_with(
        &self,
        name: &str,
        requirement: &str,
        matches: impl Fn(&semver::Version, &Manifest) -> bool,
    ) -> Result<Package, PackageError> {
        let candidates: Vec<(semver::Version, Package)> = self
            .list()
            .into_iter()
            .filter(|(_, p)| p.manifest.name == name)
            .collect();
        let versions: Vec<String> = candidates
            .iter()
            .map(|(v, p)| format!("{v} (sha256:{})", p.manifest.component.sha256))
            .collect();
        candidates
            .into_iter()
            .filter(|(v, p)| matches(v, &p.manifest))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, p)| p)
            .ok_or_else(|| PackageError::NotFound {
                reference: format!("{name}@{requirement}"),
                dirs: self.dirs.clone(),
                versions,
            })
    }
}

fn tracing_skip(path: &Path, why: &str) {
    tracing::warn!(package = %path.display(), "registry: skipping: {why}");
}

/// Writes a package into `dir` (created if missing): the component, the assets and a manifest
/// whose `component` and `assets` digests are filled in from the bytes given.
pub fn write(
    dir: &Path,
    mut manifest: Manifest,
    component: &[u8],
    assets: &[(&str, &str, &[u8])],
) -> Result<Package, PackageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let write_file = |name: &str, data: &[u8]| -> Result<FileRef, PackageError> {
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(io(&path))?;
        Ok(FileRef {
            file: name.to_owned(),
            sha256: sha256_hex(data),
        })
    };
    manifest.format = FORMAT;
    manifest.component = write_file("head.wasm", component)?;
    manifest.assets.clear();
    for (asset, file, data) in assets {
        let file = write_file(file, data)?;
        manifest.assets.insert((*asset).to_owned(), file);
    }
    let package = Package {
        dir: dir.to_path_buf(),
        manifest,
    };
    package.save_manifest()?;
    Ok(package)
}

/// Whether `dir` looks like a package (has a manifest), as opposed to a bare component file.
pub fn is_package(path: &Path) -> bool {
    path.join(MANIFEST).is_file()
}

/// Lower-case hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is a plain file name (no directories, no `.`/`..`): what manifests may name.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && Path::new(name).file_name().is_some_and(|n| n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            name: "sentiment".into(),
            version: "1.0.0".into(),
            kind: Kind::Classify,
            labels: vec!["negative".into(), "positive".into()],
            encoder: Some("test@sha256:00".into()),
            component: FileRef {
                file: String::new(),
                sha256: String::new(),
            },
            assets: BTreeMap::new(),
            config: serde_json::json!({"labels": ["negative", "positive"]}),
            training: None,
            metrics: None,
            approved_encoders: Vec::new(),
        }
    }

    #[test]
    fn written_packages_load_and_verify() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let written = write(
            dir.path(),
            manifest(),
            b"\0asm",
            &[("weights", "weights.safetensors", b"w")],
        )?;
        let loaded = Package::load(dir.path())?;
        assert_eq!(loaded.manifest, written.manifest);
        assert_eq!(loaded.manifest.component.sha256, sha256_hex(b"\0asm"));
        assert_eq!(
            loaded.read_assets()?,
            vec![("weights".to_owned(), b"w".to_vec())]
        );
        assert!(is_package(dir.path()));
        Ok(())
    }

    #[test]
    fn altered_files_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        write(
            dir.path(),
            manifest(),
            b"\0asm",
            &[("weights", "weights.safetensors", b"w")],
        )?;
        std::fs::write(dir.path().join("weights.safetensors"), b"x")?;
        let err = Package::load(dir.path())
            .map(|_| ())
            .err()
            .ok_or("loaded")?;
        assert!(matches!(err, PackageError::Digest { .. }), "{err}");
        assert!(
            err.to_string().contains("weights.safetensors: sha256 is"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn names_outside_the_package_and_other_formats_are_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut m = write(dir.path(), manifest(), b"\0asm", &[])?.manifest;
        m.component.file = "../head.wasm".into();
        std::fs::write(dir.path().join(MANIFEST), serde_json::to_vec(&m)?)?;
        let err = Package::load(dir.path())
            .map(|_| ())
            .err()
            .ok_or("loaded")?;
        assert!(matches!(err, PackageError::Escape { .. }), "{err}");

        m.format = 2;
        std::fs::write(dir.path().join(MANIFEST), serde_json::to_vec(&m)?)?;
        let err = Package::load(dir.path())
            .map(|_| ())
            .err()
            .ok_or("loaded")?;
        assert!(
            err.to_string()
                .contains("manifest format 2 is not supported"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn registry_resolves_the_newest_matching_version() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for (sub, version) in [("a", "1.0.0"), ("b", "1.4.2"), ("c", "2.0.0")] {
            let mut m = manifest();
            m.version = version.into();
            write(&dir.path().join(sub), m, b"\0asm", &[])?;
        }
        let registry = Registry {
            dirs: vec![dir.path().to_path_buf()],
        };
        let pick = |req: &str| -> Result<String, PackageError> {
            let req = semver::VersionReq::parse(req).map_err(|_| PackageError::Format {
                path: PathBuf::new(),
                found: 0,
            })?;
            registry
                .resolve("sentiment", &req)
                .map(|p| p.manifest.version)
        };
        assert_eq!(pick("^1")?, "1.4.2");
        assert_eq!(pick("*")?, "2.0.0");
        assert_eq!(pick("=1.0.0")?, "1.0.0");
        let err = pick("^3").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no package matches sentiment@^3"), "{err}");
        assert!(err.contains("1.4.2"), "{err}");
        Ok(())
    }

    #[test]
    fn pipeline_config_overrides_the_manifest() {
        let package = Package {
            dir: PathBuf::new(),
            manifest: manifest(),
        };
        let config = package.config_with(&serde_json::json!({"threshold": 0.7}));
        assert_eq!(config["threshold"], 0.7);
        assert_eq!(config["labels"][1], "positive");
    }
}
