//! Connecting to NATS with a host config's authentication and TLS settings.

use std::path::PathBuf;
use std::time::Duration;

use headstream_pipeline::{HostFile, NatsSettings};

/// Where commands look for NATS when told nothing.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Why a NATS connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The credentials file named by the host config could not be read.
    #[error("cannot read NATS credentials {}: {source}", path.display())]
    Credentials {
        /// The `.creds` file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The host config names an environment variable for a secret that is not set.
    #[error("the host config names ${0}, which is not set")]
    MissingSecret(String),
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to NATS at {url}: {source}")]
    Server {
        /// The URL, with any secret in it redacted.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
}

/// The NATS URL to use: the command line's, else the host config's, else [`DEFAULT_URL`].
pub fn nats_url(cli: Option<&str>, host: Option<&HostFile>) -> String {
    cli.map(str::to_owned)
        .or_else(|| host.and_then(|h| h.nats.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// `url` with any password or token in it replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{prefix}{shown}@{host}")
        }
        None => url.to_owned(),
    }
}

/// Connects a one-off client (`publish`, `request`, `deploy`): fails at once if the server
/// cannot be reached.
pub async fn connect_once(
    url: &str,
    settings: &NatsSettings,
) -> Result<async_nats::Client, ConnectError> {
    connect(url, settings, false).await
}

/// Connects with the host config's authentication and TLS settings; a comma-separated `url`
/// names several servers of a cluster. With `retry` (a host) it waits for the server at start
/// and reconnects forever after a connection loss (subscriptions and consumers resume),
/// logging each disconnect.
pub async fn connect(
    url: &str,
    settings: &NatsSettings,
    retry: bool,
) -> Result<async_nats::Client, ConnectError> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(creds) = &settings.credentials {
        options =
            options
                .credentials_file(creds)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: creds.clone(),
                    source,
                })?;
    }
    let secret =
        |var: &str| std::env::var(var).map_err(|_| ConnectError::MissingSecret(var.to_owned()));
    if let Some(user) = &settings.user {
        let password = match &settings.password_env {
            Some(var) => secret(var)?,
            None => String::new(),
        };
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(var) = &settings.token_env {
        options = options.token(secret(var)?);
    }
    if let Some(var) = &settings.nkey_seed_env {
        options = options.nkey(secret(var)?);
    }
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if retry {
        options = options.retry_on_initial_connect().max_reconnects(None);
    }
    options
        .name("headstream")
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting")
                }
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                other => tracing::info!("NATS: {other}"),
            }
        })
        .connect(url.split(',').map(str::trim).collect::<Vec<_>>())
        .await
        .map_err(|source| ConnectError::Server {
            url: redact(url),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_secrets() {
        assert_eq!(
            redact("nats://alice:s3cret@h:4222"),
            "nats://alice:***@h:4222"
        );
        assert_eq!(redact("nats://t0ken@h:4222"), "nats://***@h:4222");
        assert_eq!(redact("tls://h:4222"), "tls://h:4222");
    }

    #[test]
    fn the_command_line_url_wins_over_the_default() {
        assert_eq!(nats_url(Some("nats://a:1"), None), "nats://a:1");
        assert_eq!(nats_url(None, None), DEFAULT_URL);
    }

    #[tokio::test]
    async fn an_unset_secret_is_named() {
        let settings = NatsSettings {
            token_env: Some("HEADSTREAM_TEST_SURELY_UNSET_TOKEN".to_owned()),
            ..NatsSettings::default()
        };
        let error = connect_once(DEFAULT_URL, &settings).await.err();
        assert!(
            matches!(&error, Some(ConnectError::MissingSecret(var)) if var == "HEADSTREAM_TEST_SURELY_UNSET_TOKEN"),
            "{error:?}"
        );
    }
}
