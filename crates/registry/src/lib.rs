//! The cluster registry on NATS JetStream: what `headstream deploy` writes and what every
//! `headstream serve --deployed` host follows.
//!
//! - **Plugin packages** live in the Object Store bucket [`PACKAGES_BUCKET`], one object per
//!   file under `<name>/<version>/<file>`. The manifest is written last, so a package becomes
//!   visible only once all its files are in; [`ClusterRegistry::fetch_package`] downloads one
//!   into a local directory and verifies every file against the manifest's digests.
//! - **Pipeline configs** live in the KV bucket [`PIPELINES_BUCKET`], keyed by pipeline name,
//!   with [`HISTORY`] revisions kept so that [`ClusterRegistry::rollback`] can restore an
//!   earlier one (by putting its text again, as a new revision).
//! - Hosts report what they did with a deploy on `headstream.events.<kind>`
//!   ([`EVENTS_SUBJECT`]).
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use headstream_package::{MANIFEST, Manifest, Package, PackageError, is_plain_name};
use serde::Serialize;
use tokio::io::AsyncReadExt as _;

/// Object Store bucket holding plugin packages.
pub const PACKAGES_BUCKET: &str = "headstream-packages";
/// KV bucket holding pipeline configs by name.
pub const PIPELINES_BUCKET: &str = "headstream-pipelines";
/// Revisions of each pipeline the KV bucket keeps (the server's maximum).
pub const HISTORY: i64 = 64;
/// Prefix of the subjects hosts publish deploy events on: `headstream.events.activated`,
/// `headstream.events.rejected`, `headstream.events.removed`.
pub const EVENTS_SUBJECT: &str = "headstream.events";

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A NATS / JetStream operation failed.
    #[error("NATS registry: cannot {action}: {reason}")]
    Nats {
        /// What was attempted.
        action: String,
        /// The server's or client's answer.
        reason: String,
    },
    /// A package could not be read, written or verified.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// A local file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored package is not usable: a file missing, a bad manifest or name.
    #[error("package {name}: {reason}")]
    BadPackage {
        /// `name/version` as stored.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No pipeline of that name, or no such revision.
    #[error("pipeline {name}: {reason}")]
    Pipeline {
        /// The pipeline.
        name: String,
        /// What is missing.
        reason: String,
    },
}

fn nats(action: impl Into<String>, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Nats {
        action: action.into(),
        reason: e.to_string(),
    }
}

/// A package as listed by the registry.
#[derive(Debug, Clone, Serialize)]
pub struct PackageRecord {
    /// Head name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Task kind (`classify`, `tokens`).
    pub kind: &'static str,
    /// Labels or tags.
    pub labels: Vec<String>,
    /// Encoder fingerprint the weights were trained on; `None` for a head that works on any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    /// Component sha256 (what `name@sha256:<hex>` pins).
    pub component_sha256: String,
    /// The headline metric recorded in the manifest.
    pub metrics: Option<serde_json::Value>,
}

impl PackageRecord {
    fn from_manifest(m: &Manifest) -> Self {
        Self {
            name: m.name.clone(),
            version: m.version.clone(),
            kind: m.kind.as_str(),
            labels: m.labels.clone(),
            encoder: m.encoder.clone(),
            component_sha256: m.component.sha256.clone(),
            metrics: m.headline_metric(),
        }
    }
}

/// One stored revision of a pipeline config.
#[derive(Debug, Clone, Serialize)]
pub struct Revision {
    /// Pipeline name (the KV key).
    pub name: String,
    /// KV revision (bucket-wide sequence; increases with every change).
    pub revision: u64,
    /// When it was written (Unix seconds).
    pub created: i64,
    /// The TOML text; `None` for a removal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Revision {
    fn from_entry(entry: kv::Entry) -> Self {
        let text = match entry.operation {
            kv::Operation::Put => Some(String::from_utf8_lossy(&entry.value).into_owned()),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        Self {
            name: entry.key,
            revision: entry.revision,
            created: entry.created.unix_timestamp(),
            text,
        }
    }
}

/// The registry buckets, opened (and created when missing) on a connected client.
#[derive(Clone)]
pub struct ClusterRegistry {
    packages: object_store::ObjectStore,
    pipelines: kv::Store,
}

impl std::fmt::Debug for ClusterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRegistry")
            .field("packages", &PACKAGES_BUCKET)
            .field("pipelines", &PIPELINES_BUCKET)
            .finish()
    }
}

impl ClusterRegistry {
    /// Opens both buckets, creating them if this is the first use of the cluster.
    pub async fn open(client: &async_nats::Client) -> Result<Self, RegistryError> {
        let js = jetstream::new(client.clone());
        let packages = match js.get_object_store(PACKAGES_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: PACKAGES_BUCKET.to_owned(),
                    description: Some("headstream plugin packages".to_owned()),
                    ..Default::default()
                })
                .await
                .map_err(|e| nats(format!("create bucket {PACKAGES_BUCKET}"), e))?,
        };
        let pipelines = match js.get_key_value(PIPELINES_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: PIPELINES_BUCKET.to_owned(),
                    description: "headstream pipeline configs".to_owned(),
                    history: HISTORY,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats(format!("create bucket {PIPELINES_BUCKET}"), e))?,
        };
        Ok(Self {
            packages,
            pipelines,
        })
    }

    /// Uploads the package in `dir` once it is verified (every digest checked): its component
    /// and assets, then its manifest (which makes it visible to hosts). Re-deploying the same
    /// name and version replaces it.
    pub async fn deploy_package(&self, dir: &Path) -> Result<PackageRecord, RegistryError> {
        let package = Package::load(dir)?;
        let m = &package.manifest;
        semver::Version::parse(&m.version).map_err(|e| RegistryError::BadPackage {
            name: m.name.clone(),
            reason: format!("version {:?} is not semver ({e})", m.version),
        })?;
        let mut files = vec![m.component.file.clone()];
        files.extend(m.assets.values().map(|f| f.file.clone()));
        let mut contents = Vec::new();
        for file in files {
            let path = package.dir.join(&file);
            let data = std::fs::read(&path).map_err(|source| RegistryError::Io {
                path: path.clone(),
                source,
            })?;
            contents.push((file, data));
        }
        let manifest =
            std::fs::read(package.dir.join(MANIFEST)).map_err(|source| RegistryError::Io {
                path: package.dir.join(MANIFEST),
                source,
            })?;
        self.put_package_files(&m.name, &m.version, &contents, &manifest)
            .await?;
        Ok(PackageRecord::from_manifest(m))
    }

    /// Writes a package's files as given, manifest last, without verifying anything: what
    /// [`ClusterRegistry::deploy_package`] does after its checks. Hosts verify what they fetch,
    /// so a damaged upload is refused there.
    pub async fn put_package_files(
        &self,
        name: &str,
        version: &str,
        files: &[(String, Vec<u8>)],
        manifest: &[u8],
    ) -> Result<(), RegistryError> {
        for (file, data) in files {
            self.put_object(&format!("{name}/{version}/{file}"), data)
                .await?;
        }
        self.put_object(&format!("{name}/{version}/{MANIFEST}"), manifest)
            .await
    }

    async fn put_object(&self, object: &str, data: &[u8]) -> Result<(), RegistryError> {
        let mut reader = data;
        self.packages
            .put(object, &mut reader)
            .await
            .map(drop)
            .map_err(|e| nats(format!("upload {object}"), e))
    }

    async fn get_object(&self, object: &str) -> Result<Vec<u8>, RegistryError> {
        let mut reader = self
            .packages
            .get(object)
            .await
            .map_err(|e| nats(format!("download {object}"), e))?;
        let mut data = Vec::new();
        reader
            .read_to_end(&mut data)
            .await
            .map_err(|e| nats(format!("download {object}"), e))?;
        Ok(data)
    }

    /// Every package in the bucket, by manifest (unreadable manifests are skipped with a
    /// warning).
    pub async fn packages(&self) -> Result<Vec<PackageRecord>, RegistryError> {
        let names: Vec<String> = self
            .packages
            .list()
            .await
            .map_err(|e| nats("list packages", e))?
            .map_ok(|info| info.name)
            .try_collect()
            .await
            .map_err(|e| nats("list packages", e))?;
        let mut records = Vec::new();
        for object in names.iter().filter(|n| is_manifest(n)) {
            match self.get_object(object).await.and_then(|bytes| {
                parse_manifest(object, &bytes).map(|m| PackageRecord::from_manifest(&m))
            }) {
                Ok(record) => records.push(record),
                Err(e) => tracing::warn!("registry: skipping {object}: {e}"),
            }
        }
        records.sort_by(|a, b| {
            (&a.name, version_key(&a.version)).cmp(&(&b.name, version_key(&b.version)))
        });
        Ok(records)
    }

    /// Downloads package `name@version` into `dest/<name>-<version>` (replacing what was there)
    /// and verifies it: file names stay inside the directory, every digest matches.
    pub async fn fetch_package(
        &self,
        name: &str,
        version: &str,
        dest: &Path,
    ) -> Result<Package, RegistryError> {
        let prefix = format!("{name}/{version}");
        let manifest_bytes = self.get_object(&format!("{prefix}/{MANIFEST}")).await?;
        let manifest = parse_manifest(&prefix, &manifest_bytes)?;
        if manifest.name != name || manifest.version != version {
            return Err(RegistryError::BadPackage {
                name: prefix,
                reason: format!("its manifest says {}@{}", manifest.name, manifest.version),
            });
        }
        let dir = dest.join(format!("{name}-{version}"));
        let staging = dest.join(format!(".{name}-{version}.{}", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Io { path, source }
        };
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let files = std::iter::once(&manifest.component).chain(manifest.assets.values());
        for file in files {
            if !is_plain_name(&file.file) {
                return Err(RegistryError::BadPackage {
                    name: prefix,
                    reason: format!("file {:?} is not a plain file name", file.file),
                });
            }
            let data = self.get_object(&format!("{prefix}/{}", file.file)).await?;
            let path = staging.join(&file.file);
            std::fs::write(&path, data).map_err(io(&path))?;
        }
        let path = staging.join(MANIFEST);
        std::fs::write(&path, &manifest_bytes).map_err(io(&path))?;
        let verified = Package::load(&staging);
        if let Err(e) = verified {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&staging, &dir).map_err(io(&dir))?;
        Ok(Package::load(&dir)?)
    }

    /// Packages as they are deployed: first one `(name, version)` per package already
    /// stored, then one per package written afterwards.
    pub async fn watch_packages(
        &self,
    ) -> Result<BoxStream<'static, (String, String)>, RegistryError> {
        let watch = self
            .packages
            .watch_with_history()
            .await
            .map_err(|e| nats("watch packages", e))?;
        Ok(watch
            .filter_map(|info| async move {
                let info = match info {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::warn!("registry: package watch: {e}");
                        return None;
                    }
                };
                if info.deleted || !is_manifest(&info.name) {
                    return None;
                }
                let mut parts = info.name.split('/');
                match (parts.next(), parts.next()) {
                    (Some(name), Some(version)) => Some((name.to_owned(), version.to_owned())),
                    _ => None,
                }
            })
            .boxed())
    }

    /// Stores pipeline `name`'s config text as its newest revision; returns the revision.
    pub async fn deploy_pipeline(&self, name: &str, text: &str) -> Result<u64, RegistryError> {
        self.pipelines
            .put(name, Bytes::copy_from_slice(text.as_bytes()))
            .await
            .map_err(|e| nats(format!("store pipeline {name}"), e))
    }

    /// Removes pipeline `name` (its history stays, so a rollback can bring it back).
    pub async fn remove_pipeline(&self, name: &str) -> Result<(), RegistryError> {
        self.history(name).await?;
        self.pipelines
            .delete(name)
            .await
            .map_err(|e| nats(format!("remove pipeline {name}"), e))
    }

    /// The current revision of every deployed (not removed) pipeline.
    pub async fn pipelines(&self) -> Result<Vec<Revision>, RegistryError> {
        let keys: Vec<String> = self
            .pipelines
            .keys()
            .await
            .map_err(|e| nats("list pipelines", e))?
            .try_collect()
            .await
            .map_err(|e| nats("list pipelines", e))?;
        let mut current = Vec::new();
        for key in keys {
            let entry = self
                .pipelines
                .entry(key.clone())
                .await
                .map_err(|e| nats(format!("read pipeline {key}"), e))?;
            if let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) {
                current.push(Revision::from_entry(entry));
            }
        }
        current.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(current)
    }

    /// Every kept revision of pipeline `name`, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<Revision>, RegistryError> {
        let revisions: Vec<Revision> = self
            .pipelines
            .history(name)
            .await
            .map_err(|e| nats(format!("read the history of {name}"), e))?
            .map_ok(Revision::from_entry)
            .try_collect()
            .await
            .map_err(|e| nats(format!("read the history of {name}"), e))?;
        if revisions.is_empty() {
            return Err(RegistryError::Pipeline {
                name: name.to_owned(),
                reason: "never deployed".to_owned(),
            });
        }
        Ok(revisions)
    }

    /// Restores pipeline `name` to revision `to` (default: the newest earlier revision whose
    /// text differs from the current one and passes `check`) by storing that text again.
    /// Returns (restored revision, new revision).
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<u64>,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<(u64, u64), RegistryError> {
        let history = self.history(name).await?;
        let err = |reason: String| RegistryError::Pipeline {
            name: name.to_owned(),
            reason,
        };
        let (target, text) = match to {
            Some(rev) => {
                let target = history.iter().find(|r| r.revision == rev).ok_or_else(|| {
                    err(format!(
                        "no revision {rev} (kept: {:?})",
                        history.iter().map(|r| r.revision).collect::<Vec<_>>()
                    ))
                })?;
                let text = target
                    .text
                    .as_deref()
                    .ok_or_else(|| err(format!("revision {rev} is a removal")))?;
                check(text).map_err(|e| err(format!("revision {rev} does not load: {e}")))?;
                (target.revision, text)
            }
            None => {
                // The current entry may be a removal: then this restores what was removed.
                let (current, earlier) = history
                    .split_last()
                    .ok_or_else(|| err("no history".to_owned()))?;
                earlier
                    .iter()
                    .rev()
                    .filter(|r| r.text != current.text)
                    .find_map(|r| {
                        let text = r.text.as_deref()?;
                        check(text).ok().map(|()| (r.revision, text))
                    })
                    .ok_or_else(|| err("no earlier revision that loads".to_owned()))?
            }
        };
        let revision = self.deploy_pipeline(name, text).await?;
        Ok((target, revision))
    }

    /// Pipeline changes: first the current revision of every pipeline, then each change
    /// (removals have no text) as it happens.
    pub async fn watch_pipelines(&self) -> Result<BoxStream<'static, Revision>, RegistryError> {
        let watch = self
            .pipelines
            .watch_with_history(">")
            .await
            .map_err(|e| nats("watch pipelines", e))?;
        Ok(watch
            .filter_map(|entry| async move {
                match entry {
                    Ok(entry) => Some(Revision::from_entry(entry)),
                    Err(e) => {
                        tracing::warn!("registry: pipeline watch: {e}");
                        None
                    }
                }
            })
            .boxed())
    }
}

fn is_manifest(object: &str) -> bool {
    object.split('/').count() == 3 && object.ends_with(&format!("/{MANIFEST}"))
}

fn parse_manifest(object: &str, bytes: &[u8]) -> Result<Manifest, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::BadPackage {
        name: object.to_owned(),
        reason: format!("not a valid manifest: {e}"),
    })
}

fn version_key(version: &str) -> Option<semver::Version> {
    semver::Version::parse(version).ok()
}
