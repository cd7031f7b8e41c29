//! `headstream doctor`: what this machine has and lacks for headstream, each missing piece with
//! the command that fixes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use headstream_fetch::ALL_MINILM_L6_V2;
use headstream_pipeline::{HostFile, NatsSettings};
use serde_json::{Value, json};

use crate::cli::DoctorArgs;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Present and usable.
    Ok,
    /// Missing or degraded, but commands that do not need it work (NATS for `run`, say).
    Warn,
    /// Missing: commands that need it fail.
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug)]
struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    fix: Option<String>,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Runs every check and prints one screen (or JSON with `--json`); fails when something that
/// commands need is missing.
pub fn run(args: &DoctorArgs, threads: Option<usize>) -> anyhow::Result<()> {
    let host = args.config.as_deref().map(HostFile::load).transpose()?;
    let checks = vec![
        model(args.model.as_deref(), host.as_ref()),
        python(),
        script_heads(),
        components(),
        cache(),
        registry(&args.registry, host.as_ref()),
        nats(args.nats.as_deref(), host.as_ref()),
        auth(host.as_ref().map(|h| &h.nats)),
        cpu(),
        thread_count(threads),
    ];
    if args.json {
        let rows: Vec<Value> = checks
            .iter()
            .map(|c| {
                json!({ "check": c.name, "status": c.status.as_str().to_lowercase(),
                        "detail": c.detail, "fix": c.fix })
            })
            .collect();
        println!("{}", Value::Array(rows));
    } else {
        println!("headstream {} doctor", env!("CARGO_PKG_VERSION"));
        for c in &checks {
            println!("{:>4}  {:<10}  {}", c.status.as_str(), c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("{:>4}  {:<10}  fix: {fix}", "", "");
            }
        }
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.name)
        .collect();
    anyhow::ensure!(failed.is_empty(), "missing: {}", failed.join(", "));
    Ok(())
}

fn model(flag: Option<&Path>, host: Option<&HostFile>) -> Check {
    let spec = ALL_MINILM_L6_V2;
    let location =
        match headstream_fetch::locate_model(&spec, flag, host.and_then(|h| h.model.as_deref())) {
            Ok(l) => l,
            Err(e) => {
                return check("model", Status::Fail, e.to_string())
                    .fix("set HEADSTREAM_DATA or pass --model DIR");
            }
        };
    let at = format!("{} ({})", location.dir.display(), location.source);
    if !location.dir.is_dir() {
        let fix = super::fetch_command(&location);
        return check("model", Status::Fail, format!("not found: {at}")).fix(fix);
    }
    let options = headstream_encoder::EncoderOptions {
        prefer_gpu: false,
        ..Default::default()
    };
    match headstream_encoder::Encoder::load(&location.dir, options) {
        Ok(encoder) => {
            let verified = if headstream_fetch::is_fetched(&spec, &location.dir) {
                "digests verified by `model fetch`"
            } else {
                "not fetched by headstream (digests unchecked)"
            };
            check(
                "model",
                Status::Ok,
                format!("{at}; fingerprint {}; {verified}", encoder.fingerprint()),
            )
        }
        Err(e) => check("model", Status::Fail, format!("{at} does not load: {e}"))
            .fix("remove it and run `headstream model fetch`"),
    }
}

fn python() -> Check {
    let python = std::env::var("HEADSTREAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args(["-m", "pip", "--version"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let version = String::from_utf8_lossy(&o.stdout);
            let version = version.split(" from ").next().unwrap_or("pip").trim();
            check(
                "python",
                Status::Ok,
                format!("{python} with {version} (used by `model fetch`)"),
            )
        }
        _ => check(
            "python",
            Status::Warn,
            format!("`{python} -m pip` does not run; `model fetch` needs it"),
        )
        .fix(
            "install Python 3 with pip (Debian: apt install python3-pip), or set HEADSTREAM_PYTHON",
        ),
    }
}

/// What building Python and JavaScript heads needs (`plugins/build.sh` installs the pinned
/// componentize-py and componentize-js itself): Python's venv module, Node.js and npm.
fn script_heads() -> Check {
    let version = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let python = std::env::var("HEADSTREAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let venv = version(&python, &["-c", "import venv, ensurepip; print('venv')"]).is_some();
    let node = version("node", &["--version"]);
    let npm = version("npm", &["--version"]);
    let mut missing = Vec::new();
    if !venv {
        missing.push(format!("{python} has no venv/ensurepip (Python heads)"));
    }
    match (&node, &npm) {
        (Some(_), Some(_)) => {}
        _ => missing.push("no node and npm (JavaScript heads)".to_owned()),
    }
    if missing.is_empty() {
        check(
            "heads",
            Status::Ok,
            format!(
                "Python heads: {python} with venv; JavaScript heads: node {}, npm {} (plugins/build.sh installs the pinned toolchains)",
                node.unwrap_or_default(),
                npm.unwrap_or_default()
            ),
        )
    } else {
        check("heads", Status::Warn, missing.join("; ")).fix(
            "only to build Python or JavaScript heads: Debian: apt install python3-venv nodejs npm",
        )
    }
}

fn components() -> Check {
    use sha2::Digest as _;
    let mut names = Vec::new();
    for b in headstream_components::ALL {
        let actual = format!("{:x}", sha2::Sha256::digest(b.bytes));
        if actual != b.sha256 {
            return check(
                "components",
                Status::Fail,
                format!(
                    "builtin {} has sha256 {actual}, pinned {}",
                    b.name, b.sha256
                ),
            )
            .fix("rebuild headstream from a clean checkout");
        }
        names.push(format!("{} ({})", b.name, &b.sha256[..12]));
    }
    check(
        "components",
        Status::Ok,
        format!("built in: {}", names.join(", ")),
    )
}

fn cache() -> Check {
    let Some(dir) = super::run::component_cache() else {
        return check(
            "cache",
            Status::Warn,
            "no home directory: components compile on every start",
        )
        .fix("set HEADSTREAM_CACHE to a writable directory");
    };
    if !dir.is_dir() {
        return check(
            "cache",
            Status::Ok,
            format!(
                "{}: not created yet (the first start fills it)",
                dir.display()
            ),
        );
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    let bytes: u64 = entries
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    // A temporary file, removed at once: the check leaves nothing behind.
    match tempfile::tempfile_in(&dir) {
        Ok(_) => check(
            "cache",
            Status::Ok,
            format!(
                "{}: {} compiled components, {:.1} MiB",
                dir.display(),
                entries.len(),
                bytes as f64 / (1 << 20) as f64
            ),
        ),
        Err(e) => check(
            "cache",
            Status::Warn,
            format!(
                "{} is not writable ({e}): components compile on every start",
                dir.display()
            ),
        )
        .fix("set HEADSTREAM_CACHE to a writable directory"),
    }
}

fn registry(cli: &[PathBuf], host: Option<&HostFile>) -> Check {
    let registry =
        headstream_package::Registry::chosen(cli, host.map_or(&[][..], |h| &h.registry[..]));
    let dirs: Vec<String> = registry
        .dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let packages: Vec<String> = registry
        .list()
        .iter()
        .map(|(v, p)| format!("{}@{v}", p.manifest.name))
        .collect();
    if packages.is_empty() {
        check(
            "registry",
            Status::Warn,
            format!("no packages in {} (only `plugin = ...` heads need them)", dirs.join(":")),
        )
        .fix("train one (`headstream train ... --out heads/NAME`), or pass --registry DIR / set HEADSTREAM_REGISTRY")
    } else {
        check(
            "registry",
            Status::Ok,
            format!("{}: {}", dirs.join(":"), packages.join(", ")),
        )
    }
}

fn nats(cli: Option<&str>, host: Option<&HostFile>) -> Check {
    let url = headstream_host::nats_url(cli, host);
    let shown = headstream_host::redact(&url);
    let settings = host.map(|h| h.nats.clone()).unwrap_or_default();
    let probe = async {
        let client = headstream_host::connect_once(&url, &settings).await?;
        let version = client.server_info().version.clone();
        let jetstream = async_nats::jetstream::new(client)
            .query_account()
            .await
            .map(|a| a.streams);
        Ok::<_, headstream_host::ConnectError>((version, jetstream.map_err(|e| e.to_string())))
    };
    let outcome = super::serve::runtime()
        .map(|rt| rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), probe).await }));
    let start = "start one: `nats-server -js` (or `docker compose up -d nats`); `headstream run` needs no NATS";
    match outcome {
        Ok(Ok(Ok((version, Ok(streams))))) => check(
            "nats",
            Status::Ok,
            format!("{shown}: nats-server {version}, JetStream on ({streams} streams)"),
        ),
        Ok(Ok(Ok((version, Err(e))))) => check(
            "nats",
            Status::Warn,
            format!("{shown}: nats-server {version}, JetStream unavailable ({e}); deploys, the registry and `delivery.mode = \"jetstream\"` need it"),
        )
        .fix("restart the server with JetStream: `nats-server -js`"),
        Ok(Ok(Err(e))) => check("nats", Status::Warn, e.to_string()).fix(start),
        Ok(Err(_)) => check(
            "nats",
            Status::Warn,
            format!("{shown}: no answer within 3 s"),
        )
        .fix(start),
        Err(e) => check("nats", Status::Warn, format!("{e:#}")),
    }
}

fn auth(settings: Option<&NatsSettings>) -> Check {
    let Some(s) = settings else {
        return check(
            "auth",
            Status::Ok,
            "no host config (--config): plain connection, no credentials",
        );
    };
    let mut said = Vec::new();
    let mut missing = Vec::new();
    for (what, file) in [
        ("credentials", &s.credentials),
        ("tls_ca", &s.tls_ca),
        ("tls_cert", &s.tls_cert),
        ("tls_key", &s.tls_key),
    ] {
        if let Some(file) = file {
            if file.is_file() {
                said.push(format!("{what} {}", file.display()));
            } else {
                missing.push(format!("{what} {} does not exist", file.display()));
            }
        }
    }
    for (what, var) in [
        ("password", &s.password_env),
        ("token", &s.token_env),
        ("nkey seed", &s.nkey_seed_env),
    ] {
        if let Some(var) = var {
            if std::env::var_os(var).is_some() {
                said.push(format!("{what} from ${var}"));
            } else {
                missing.push(format!("${var} ({what}) is not set"));
            }
        }
    }
    if let Some(user) = &s.user {
        said.push(format!("user {user}"));
    }
    if !missing.is_empty() {
        return check("auth", Status::Fail, missing.join("; "))
            .fix("set the variables or fix the paths in the host config's [nats]");
    }
    if said.is_empty() {
        check("auth", Status::Ok, "none configured: plain connection")
    } else {
        check("auth", Status::Ok, said.join(", "))
    }
}

fn cpu() -> Check {
    #[cfg(target_arch = "x86_64")]
    let vnni = if std::arch::is_x86_feature_detected!("avx512vnni") {
        "; AVX-512 VNNI present but not used yet"
    } else {
        ""
    };
    #[cfg(not(target_arch = "x86_64"))]
    let vnni = "";
    let set = headstream_encoder::instruction_set();
    let status = if set.starts_with("portable") {
        Status::Warn
    } else {
        Status::Ok
    };
    check(
        "cpu",
        status,
        format!("{} {set}{vnni}", std::env::consts::ARCH),
    )
}

fn thread_count(threads: Option<usize>) -> Check {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let used = threads
        .or_else(|| std::env::var("RAYON_NUM_THREADS").ok()?.parse().ok())
        .unwrap_or(cores);
    check(
        "threads",
        Status::Ok,
        format!("{used} compute threads on {cores} available cores (--threads sets it)"),
    )
}
