//! Which model directory a command uses, and why.

use std::path::{Path, PathBuf};

use headstream_dirs::NoHome;

use crate::PackageSpec;

/// The model directory looked for in the working directory (where `model fetch --dir` put it
/// before the per-user store existed); used when present.
pub const WORKING_DIR_MODEL: &str = "models/all-minilm-l6-v2";

/// Environment variable naming the model directory.
pub const MODEL_ENV: &str = "HEADSTREAM_MODEL";

/// Where a model directory choice came from, in the order they win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// `--model DIR` on the command line.
    Flag,
    /// `$HEADSTREAM_MODEL`.
    Env,
    /// The host config's `model` (`serve --config`).
    HostConfig,
    /// `./models/all-minilm-l6-v2`, present in the working directory.
    WorkingDir,
    /// The per-user model store, where `model fetch` puts it by default.
    Store,
}

impl ModelSource {
    /// A short, stable name for JSON output (`flag`, `env`, `host-config`, `working-dir`, `store`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Env => "env",
            Self::HostConfig => "host-config",
            Self::WorkingDir => "working-dir",
            Self::Store => "store",
        }
    }

    /// Why this source was used, in words.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Flag => "given with --model",
            Self::Env => "set by $HEADSTREAM_MODEL",
            Self::HostConfig => "the host config's `model`",
            Self::WorkingDir => "./models/all-minilm-l6-v2 exists in the working directory",
            Self::Store => "the per-user model store, where `model fetch` puts it",
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// A chosen model directory and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLocation {
    /// The directory (it may not exist yet: `model fetch` creates it).
    pub dir: PathBuf,
    /// Why this one.
    pub source: ModelSource,
}

/// `spec`'s folder in the per-user store: `<data>/models/<first 12 hex of the wheel's
/// sha256>/<name>`, so several models, and several builds of one, live side by side; the
/// folder keeps the model's own name, which names its encoder fingerprint.
pub fn store_dir(spec: &PackageSpec) -> Result<PathBuf, NoHome> {
    Ok(headstream_dirs::models_dir()?
        .join(&spec.wheel_sha256[..12])
        .join(spec.name))
}

/// The model directory a command uses: `flag` (`--model`), else `$HEADSTREAM_MODEL`, else
/// `host_config` (the host config's `model`), else `./models/all-minilm-l6-v2` if it exists,
/// else `spec`'s folder in the per-user store.
pub fn locate_model(
    spec: &PackageSpec,
    flag: Option<&Path>,
    host_config: Option<&Path>,
) -> Result<ModelLocation, NoHome> {
    let env = std::env::var_os(MODEL_ENV).filter(|v| !v.is_empty());
    let at = |dir: &Path, source| ModelLocation {
        dir: dir.to_owned(),
        source,
    };
    Ok(if let Some(dir) = flag {
        at(dir, ModelSource::Flag)
    } else if let Some(dir) = env {
        at(Path::new(&dir), ModelSource::Env)
    } else if let Some(dir) = host_config {
        at(dir, ModelSource::HostConfig)
    } else if Path::new(WORKING_DIR_MODEL).is_dir() {
        at(Path::new(WORKING_DIR_MODEL), ModelSource::WorkingDir)
    } else {
        at(&store_dir(spec)?, ModelSource::Store)
    })
}
