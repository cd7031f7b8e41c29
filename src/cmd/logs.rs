//! `headstream logs PIPELINE [HEAD]`: what a pipeline's heads wrote through `log`, from the
//! hosts' `HEADSTREAM_LOGS` stream, and with `--follow` as it is written.

use std::io::Write as _;

use anyhow::Context as _;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt as _;
use headstream_message::logs::{HeadLogRecord, LOGS_STREAM, LOGS_SUBJECT, token};

use crate::cli::LogsArgs;

/// Prints the retained lines since `--since`, then (with `--follow`) new ones until Ctrl-C.
pub fn run(args: &LogsArgs) -> anyhow::Result<()> {
    let start = super::replay::since_time(&args.since)?;
    let filter = format!(
        "{LOGS_SUBJECT}.{}.{}",
        token(&args.pipeline),
        args.head.as_deref().map_or_else(|| "*".to_owned(), token)
    );
    super::serve::runtime()?.block_on(async {
        let client = super::serve::connect(&args.connect).await?;
        let js = async_nats::jetstream::new(client.clone());
        let stream = match js.get_stream(LOGS_STREAM).await {
            Ok(stream) => stream,
            Err(e) if args.follow => {
                eprintln!("no {LOGS_STREAM} stream ({e}): showing new lines only");
                let mut live = client
                    .subscribe(filter.clone())
                    .await
                    .context("cannot subscribe")?;
                while let Some(message) = live.next().await {
                    print(args, &message.payload)?;
                }
                return Ok(());
            }
            Err(e) => anyhow::bail!(
                "no {LOGS_STREAM} stream on this server ({e}): hosts create it when JetStream is enabled; `--follow` shows new lines without it"
            ),
        };
        // Without --follow: what the stream holds now, not what arrives while printing.
        let last = stream
            .get_info()
            .await
            .map(|i| i.state.last_sequence)
            .unwrap_or(u64::MAX);
        let mut consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: filter.clone(),
                deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
                ..Default::default()
            })
            .await
            .context("cannot read the log stream")?;
        let mut pending = consumer
            .info()
            .await
            .map(|i| i.num_pending)
            .context("cannot read the log stream")?;
        if pending == 0 && !args.follow {
            return Ok(());
        }
        let mut messages = consumer
            .messages()
            .await
            .context("cannot read the log stream")?;
        while let Some(message) = messages.next().await {
            let message = message.context("reading the log stream")?;
            print(args, &message.payload)?;
            let (seq, left) = message
                .info()
                .map_or((u64::MAX, 0), |i| (i.stream_sequence, i.pending));
            pending = left;
            if !args.follow && (pending == 0 || seq >= last) {
                break;
            }
        }
        Ok(())
    })
}

fn print(args: &LogsArgs, payload: &[u8]) -> anyhow::Result<()> {
    let Ok(r) = serde_json::from_slice::<HeadLogRecord>(payload) else {
        return Ok(());
    };
    // Subjects make names single tokens (`a.b` and `a_b` share one): the record says which.
    if r.pipeline != args.pipeline || args.head.as_ref().is_some_and(|h| *h != r.head) {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        out.write_all(payload)?;
        out.write_all(b"\n")?;
    } else {
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.at_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{at} {host} {pipeline}/{head} {version} {level:>5} {message}",
            host = r.host,
            pipeline = r.pipeline,
            head = r.head,
            version = r.version,
            level = r.level.to_uppercase(),
            message = r.message
        )?;
    }
    out.flush()?;
    Ok(())
}
