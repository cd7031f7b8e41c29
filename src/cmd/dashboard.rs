//! `headstream dashboard`: the live page of the cluster, served over HTTP.

use anyhow::Context as _;

use crate::cli::DashboardArgs;

/// Serves the dashboard until Ctrl-C / SIGTERM.
pub fn run(args: &DashboardArgs) -> anyhow::Result<()> {
    let host = super::serve::host_file(&args.connect)?;
    let (url, settings) = super::serve::nats_settings(host.as_ref(), &args.connect);
    super::serve::runtime()?.block_on(async {
        let client = headstream_host::connect(&url, &settings, true).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr().context("no local address")?;
        eprintln!(
            "headstream dashboard on http://{addr}/dashboard (NATS {})",
            headstream_host::redact(&url)
        );
        let shutdown = async {
            super::serve::Signals::new().next().await;
        };
        headstream_gateway::dashboard::serve(listener, client, shutdown)
            .await
            .context("serving the dashboard")?;
        Ok(())
    })
}
