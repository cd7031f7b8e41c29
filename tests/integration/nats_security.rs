//! A locked-down bus: every command that connects authenticates and encrypts as the host config
//! says, against a nats-server configured for user/password, token, NKey, and TLS with a custom
//! CA (server-verified and mutual). Without the credentials the connection is refused with a
//! clear reason; secrets never reach the logs (hosts run with debug logging here) nor `--help`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use headstream_test_util::{NatsServer, workspace_root};

use crate::nats_serve::Host;
use serde_json::Value;

/// Runs `headstream ARGS` with extra environment variables.
fn headstream_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    crate::headstream_env(args, env, b"")
}

/// Starts `headstream serve --config CONFIG` with debug logs captured to `log`.
fn logged_host(config: &Path, env: &[(&str, &str)], log: &Path) -> Host {
    let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{e}"));
    let mut env = env.to_vec();
    env.push(("HEADSTREAM_LOG", "debug"));
    Host::serve_with(
        &[std::ffi::OsStr::new("--config"), config.as_os_str()],
        &env,
        file,
    )
}

/// A host config serving a sentiment pipeline, with `nats` as its `[nats]` section body.
fn host_config(dir: &Path, url: &str, nats: &str) -> PathBuf {
    let sentiment = workspace_root().join("heads/sentiment");
    let pipeline = dir.join("mood.toml");
    std::fs::write(
        &pipeline,
        format!(
            "version = 1\nname = \"mood\"\n[input]\nsubject = \"mood.in\"\n[output]\n\
             subject = \"mood.out\"\nerrors = \"mood.errors\"\n[[heads]]\nname = \"sentiment\"\n\
             package = {:?}\n",
            sentiment.display().to_string()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.join("headstream.toml");
    std::fs::write(
        &config,
        format!("version = 1\npipelines = [\"mood.toml\"]\n[nats]\nurl = {url:?}\n{nats}"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    config
}

/// Sends requests through `headstream request --config` until the host answers (it loads the
/// model first); returns the reply.
fn request_until_served(config: &Path, env: &[(&str, &str)]) -> Value {
    let config = config.to_string_lossy();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = headstream_env(
            &[
                "request",
                "--config",
                &config,
                "--subject",
                "mood.in",
                "--text",
                "what a lovely day",
                "--timeout-ms",
                "2000",
            ],
            env,
        );
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(
            Instant::now() < deadline,
            "no reply within 90 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Serves and requests with the credentials, is refused without them, and keeps `secret` out
/// of the host's debug log and `--help`.
fn authenticated_round_trip(
    server: &NatsServer,
    nats: &str,
    env: &[(&str, &str)],
    secret: &str,
    refusal: &str,
) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    let config = host_config(dir.path(), &url, nats);
    let log = dir.path().join("host.log");
    let host = logged_host(&config, env, &log);
    let reply = request_until_served(&config, env);
    assert_eq!(
        reply["results"]["sentiment"]["label"], "positive",
        "{reply}"
    );

    // Without the credentials: refused, with the reason.
    let out = headstream_env(
        &[
            "request",
            "--nats",
            &url,
            "--subject",
            "mood.in",
            "--text",
            "hi",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "connected without credentials");
    assert!(
        stderr.to_lowercase().contains(refusal),
        "expected {refusal:?} in: {stderr}"
    );

    // `--help` shows no environment values, even a URL with a password in it.
    let leaky = format!("nats://alice:{secret}@127.0.0.1:1");
    let help = headstream_env(&["serve", "--help"], &[("HEADSTREAM_NATS", &leaky)]);
    assert!(!String::from_utf8_lossy(&help.stdout).contains(secret));

    drop(host);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("NATS connected"), "{log}");
    assert!(!log.contains(secret), "the secret is in the host's log");
}

#[test]
fn user_and_password() {
    let server = NatsServer::start_with_config(
        "authorization { user: alice, password: \"pw-7f3a9c-secret\" }\n",
    );
    authenticated_round_trip(
        &server,
        "user = \"alice\"\npassword_env = \"HS_TEST_PASSWORD\"\n",
        &[("HS_TEST_PASSWORD", "pw-7f3a9c-secret")],
        "pw-7f3a9c-secret",
        "authorization",
    );
}

#[test]
fn token() {
    let server = NatsServer::start_with_config("authorization { token: \"tok-51b2e8-secret\" }\n");
    authenticated_round_trip(
        &server,
        "token_env = \"HS_TEST_TOKEN\"\n",
        &[("HS_TEST_TOKEN", "tok-51b2e8-secret")],
        "tok-51b2e8-secret",
        "authorization",
    );
}

#[test]
fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap_or_else(|e| panic!("{e}"));
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
        user.public_key()
    ));
    authenticated_round_trip(
        &server,
        "nkey_seed_env = \"HS_TEST_NKEY\"\n",
        &[("HS_TEST_NKEY", &seed)],
        &seed,
        "authorization",
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn certificates(dir: &Path) -> [PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let fail = |e: rcgen::Error| -> ! { panic!("{e}") };
    let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(|e| fail(e));
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let signed = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let cert = CertificateParams::new(names)
            .unwrap_or_else(|e| fail(e))
            .signed_by(&key, &issuer)
            .unwrap_or_else(|e| fail(e));
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = signed(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = signed(vec!["headstream-host".into()]);
    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server_cert),
        ("server-key.pem", server_key),
        ("client.pem", client_cert),
        ("client-key.pem", client_key),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("{e}"));
        path
    })
}

#[test]
fn tls_with_a_custom_ca_and_client_certificates() {
    let certs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let [ca, server_cert, server_key, client_cert, client_key] = certificates(certs.path());
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}\n",
        server_cert.display().to_string(),
        server_key.display().to_string(),
        ca.display().to_string(),
    ));
    let nats = format!(
        "tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        ca.display().to_string(),
        client_cert.display().to_string(),
        client_key.display().to_string(),
    );
    // The client key is the secret here.
    let key = std::fs::read_to_string(&client_key).unwrap_or_else(|e| panic!("{e}"));
    let key_body = key.lines().nth(1).unwrap_or_default().to_owned();
    authenticated_round_trip(&server, &nats, &[], &key_body, "certificate");

    // Every other command that connects goes through the same settings.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = host_config(dir.path(), &server.url(), &nats);
    let config = config.to_string_lossy();
    let sentiment = workspace_root().join("heads/sentiment");
    let deployable = dir.path().join("deployable.toml");
    std::fs::write(
        &deployable,
        "version = 1\nname = \"mood\"\n[input]\nsubject = \"mood.in\"\n[output]\nsubject = \"mood.out\"\n\
         errors = \"mood.errors\"\n[[heads]]\nname = \"sentiment\"\nplugin = \"sentiment@^1\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    let sentiment = sentiment.to_string_lossy();
    let deployable = deployable.to_string_lossy();
    let commands: [&[&str]; 6] = [
        &["publish", "--subject", "mood.in", "--text", "hello"],
        &["deploy", "plugin", &sentiment],
        &["deploy", "pipeline", &deployable],
        // `plugins ls` lists the cluster when given --nats; the config brings TLS.
        &["plugins", "ls", "--nats", &url],
        &["pipelines", "ls"],
        &["pipelines", "history", "mood"],
    ];
    for args in commands {
        let full = [args, &["--config", &config]].concat();
        let out = headstream_env(&full, &[]);
        assert!(
            out.status.success(),
            "headstream {full:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
