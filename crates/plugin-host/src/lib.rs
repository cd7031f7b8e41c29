//! Runs task-head plugins: WebAssembly components built against `wit/plugin.wit`
//! (`headstream:plugin@0.2.0`, or `@0.1.0` from `wit/deps/`, served as before), sandboxed and
//! bounded.
//!
//! A [`PluginHost`] owns one wasmtime [`Engine`](wasmtime::Engine) (epoch interruption, pooling
//! allocator) and an on-disk cache of compiled components keyed by the component's sha256 and the
//! engine's configuration. [`PluginHost::load`] checks a plugin's digest (when pinned), compiles
//! or loads it from the cache, refuses disallowed imports, asks the head to describe itself,
//! refuses it when it was built for another encoder, and configures it. The resulting [`Head`]
//! runs batches with [`Head::run`]. A 0.2.0 head answers `configure` with the encoder layers
//! it reads ([`Head::inputs`], at most [`MAX_TOKEN_LAYERS`] of per-token states); the host
//! copies just those into each call.
//!
//! Containment: every call runs under a CPU deadline and a memory cap. A trap, timeout, limit hit
//! or malformed output fails only that head's results for that batch ([`Failure`]); the instance
//! is dropped and a fresh one configured for the next batch. A head that fails
//! [`Limits::max_consecutive_failures`] batches in a row is switched off.
//!
//! What a head can make the host do is budgeted too ([`Limits::embed`], [`Limits::log`]):
//! `embed` is served only while the head configures, within texts, bytes and tokens per call
//! and per configure, and its time counts toward the setup deadline (a head over either fails
//! `configure`; texts it embedded before come from a cache, so a reconfigure after a trap costs
//! the encoder nothing); `log` lines are cut to a length, control characters escaped, and
//! rate-limited per head with a summary of what was dropped ([`Head::take_log_lines_dropped`]).
//!
//! Capabilities: a plugin gets only the `headstream:plugin/host` imports (log; embed while
//! configuring). Rust guests on `wasm32-wasip2` import WASI through std, so WASI is linked, but
//! with deny-all state: no preopened directories, no environment or arguments, no sockets,
//! stdin empty, stdout/stderr discarded, clocks frozen at zero and randomness a fixed cycle.
//! Imports of `wasi:http` are refused at load; so are `wasi:sockets` and
//! `wasi:filesystem/preopens` for native heads. Python and JavaScript heads carry an
//! interpreter whose standard library imports those whether or not the head uses them
//! ([`Runtime`]): for them they are linked to the same deny-all state (no directories to
//! open, every socket operation denied).
//!
//! ```no_run
//! use headstream_plugin_host::{HeadConfig, PluginHost, HostConfig};
//! let host = PluginHost::new(HostConfig::default())?;
//! let head = host.load("target/wasm32-wasip2/release/keyword_flags.wasm".as_ref(), HeadConfig::default())?;
//! println!("{} {}", head.description().name, head.description().version);
//! # Ok::<(), headstream_plugin_host::PluginError>(())
//! ```
#![deny(missing_docs)]

mod bindings;
mod budget;
mod engine;
mod head;
mod runtime;

pub use budget::{EmbedLimits, LogLevel, LogLimits, LogSink};
pub use engine::{HostConfig, PluginHost};
pub use head::{
    Asset, Description, Embedder, Failure, FailureKind, Head, HeadConfig, Inputs, Item, Limits,
    MAX_POOLED_LAYERS, MAX_TOKEN_LAYERS, TaskKind, TokenStates,
};
pub use runtime::Runtime;

use std::path::PathBuf;

/// Why a plugin could not be loaded. Each message names the plugin and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The plugin file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The plugin's sha256 differs from the pinned one.
    #[error("plugin {path}: sha256 is {actual}, the pipeline pins {expected}")]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The file is not a valid WebAssembly component.
    #[error("plugin {path} is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The compiler's reason.
        reason: String,
    },
    /// The component imports something headstream does not grant.
    #[error("plugin {path} imports `{import}`, which headstream does not grant to plugins")]
    DisallowedImport {
        /// The file.
        path: PathBuf,
        /// The import's name.
        import: String,
    },
    /// The component does not implement this host's version of the contract.
    #[error(
        "plugin {path} does not implement headstream:plugin/head@0.1 (built against another WIT version?): {reason}"
    )]
    Contract {
        /// The file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// The head was built for another encoder.
    #[error("head {head} was built for encoder {expected}, but this host runs {actual}")]
    EncoderMismatch {
        /// The head's name.
        head: String,
        /// The fingerprint the head declares.
        expected: String,
        /// The running encoder's fingerprint.
        actual: String,
    },
    /// `describe` or `configure` failed or trapped.
    #[error("head {head}: {failure}")]
    Setup {
        /// The head's name (or file, before `describe`).
        head: String,
        /// What went wrong.
        failure: Failure,
    },
    /// The engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// A plugin package could not be read or failed its digest checks.
    #[error(transparent)]
    Package(#[from] headstream_package::PackageError),
}
