//! `headstream dashboard`: the live page of the cluster, served over HTTP.

use anyhow::Context as _;

use crate::cli::DashboardArgs;

/// Serves the dashboard until Ctrl-C / SIGTERM.
pub fn run(args: &DashboardArgs) -> anyhow::Result<()> {
    super::serve::runtime()?.block_on(async {
        let (client, listener, addr, url) =
            super::serve::connect_and_listen(&args.connect, args.listen).await?;
        eprintln!("headstream dashboard on http://{addr}/dashboard (NATS {url})");
        let shutdown = async {
            super::serve::Signals::new().next().await;
        };
        headstream_gateway::dashboard::serve(listener, client, shutdown)
            .await
            .context("serving the dashboard")?;
        Ok(())
    })
}
