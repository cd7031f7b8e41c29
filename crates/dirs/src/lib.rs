//! Where headstream keeps per-user files, so every command works from any directory.
//!
//! - **Data** ([`data_dir`]): fetched models, under `models/<digest>/<name>/`. `$HEADSTREAM_DATA`,
//!   else the platform's data directory (`$XDG_DATA_HOME/headstream`, by default
//!   `~/.local/share/headstream`, on Linux).
//! - **Cache** ([`cache_dir`]): compiled components and other files that are rebuilt when
//!   missing. `$HEADSTREAM_CACHE`, else `$XDG_CACHE_HOME/headstream` (`~/.cache/headstream`).
//!
//! Nothing here creates a directory; the writers do, when they first write.
#![deny(missing_docs)]

use std::path::PathBuf;

/// Environment variable that moves the data directory.
pub const DATA_ENV: &str = "HEADSTREAM_DATA";
/// Environment variable that moves the cache directory.
pub const CACHE_ENV: &str = "HEADSTREAM_CACHE";

/// Why no per-user directory could be chosen.
#[derive(Debug, thiserror::Error)]
#[error(
    "no home directory to keep headstream's {what} in (HOME is not set): set ${env}, or pass a path explicitly"
)]
pub struct NoHome {
    /// Which directory was asked for ("data", "cache").
    pub what: &'static str,
    /// The variable that would choose it.
    pub env: &'static str,
}

fn project() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "headstream")
}

fn chosen(
    env: &'static str,
    what: &'static str,
    default: Option<PathBuf>,
) -> Result<PathBuf, NoHome> {
    match std::env::var_os(env) {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => default.ok_or(NoHome { what, env }),
    }
}

/// The per-user data directory (fetched models live under `models/`).
pub fn data_dir() -> Result<PathBuf, NoHome> {
    chosen(DATA_ENV, "data", project().map(|p| p.data_dir().to_owned()))
}

/// The per-user cache directory (compiled components live under `components/`).
pub fn cache_dir() -> Result<PathBuf, NoHome> {
    chosen(
        CACHE_ENV,
        "cache",
        project().map(|p| p.cache_dir().to_owned()),
    )
}

/// The model store: `<data>/models`.
pub fn models_dir() -> Result<PathBuf, NoHome> {
    data_dir().map(|d| d.join("models"))
}
