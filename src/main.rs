//! `headstream`: the command-line entry point. Parses arguments and calls into the crates;
//! every failure is reported as one line (`error: ...` with its causes) and a non-zero exit.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{
    BenchCommand, Cli, Command, ConnectArgs, ModelCommand, PluginsCommand, RollbackCommand,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.threads.map(usize::from);
    if let Some(threads) = threads {
        set_thread_count(threads);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEADSTREAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in files and log collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Model {
            command: ModelCommand::Fetch(args),
        } => cmd::model::fetch(&args),
        Command::Model {
            command: ModelCommand::Info(args),
        } => cmd::model::info(&args),
        Command::Model {
            command: ModelCommand::Ls,
        } => cmd::model::list(),
        Command::Embed(args) => cmd::embed::run(&args),
        Command::Run(args) => cmd::run::run(&args),
        Command::Serve(args) => cmd::serve::serve(&args),
        Command::Gateway(args) => cmd::gateway::run(&args),
        Command::Dashboard(args) => cmd::dashboard::run(&args),
        Command::Replay(args) => cmd::replay::run(&args),
        Command::Logs(args) => cmd::logs::run(&args),
        Command::Publish(args) => cmd::serve::publish(&args),
        Command::Request(args) => cmd::serve::request(&args),
        Command::Feedback(args) => cmd::quality::feedback(&args),
        Command::Quality(args) => cmd::quality::quality(&args),
        Command::NewHead(args) => cmd::new_head::run(&args),
        Command::Doctor(args) => cmd::doctor::run(&args, threads),
        Command::Train(args) => cmd::train::train(&args),
        Command::Package(args) => cmd::package::run(&args),
        Command::Eval(args) => cmd::train::eval(&args),
        Command::Plugins {
            command:
                PluginsCommand::Ls {
                    registry,
                    nats: None,
                    ..
                },
        } => cmd::train::list(&registry),
        Command::Plugins {
            command:
                PluginsCommand::Ls {
                    nats: Some(nats),
                    config,
                    ..
                },
        } => cmd::deploy::list_plugins(&ConnectArgs {
            nats: Some(nats),
            config,
        }),
        Command::Deploy { command } => cmd::deploy::deploy(&command),
        Command::Pipelines { command } => cmd::deploy::pipelines(&command),
        Command::Rollback {
            command: RollbackCommand::Pipeline { name, to, connect },
        } => cmd::deploy::rollback(&name, to, &connect),
        Command::Bench {
            command: BenchCommand::Encoder(args),
        } => cmd::bench::encoder(&args, threads),
        Command::Bench {
            command: BenchCommand::Heads(args),
        } => cmd::bench_heads::run(&args),
        Command::Bench {
            command: BenchCommand::Pipeline(args),
        } => cmd::bench_pipeline::run(&args, threads),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}

/// `err` and its causes on one line, each said once: a cause whose text its wrapper already
/// includes (many errors show their source in their own message) is not repeated.
fn report(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Caps the compute threads (candle's matmuls and the tokenizer both size their pools from
/// `RAYON_NUM_THREADS`).
#[allow(unsafe_code)]
fn set_thread_count(threads: usize) {
    // SAFETY: runs first thing in `main`, before any other thread exists, so nothing can read the
    // environment concurrently.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
}

#[cfg(test)]
mod tests {
    /// An error that shows its source in its own message, as many do.
    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "head flood: {}", self.0)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn errors_report_each_cause_once() {
        let err = anyhow::Error::new(Wrapper(std::io::Error::other("over budget")))
            .context("cannot load");
        assert_eq!(super::report(&err), "cannot load: head flood: over budget");
    }
}
