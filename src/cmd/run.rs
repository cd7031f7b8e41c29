//! `headstream run`: a pipeline over JSONL, no NATS — the embedded default.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use headstream_pipeline::Pipeline;
use headstream_runner::{ErrorRecord, Message, Runner, parse_message_within};

use super::jsonl::read_input;
use crate::cli::RunArgs;

/// Runs the pipeline over the input; results to the output, error records to the error sink.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    let batch = *pipeline.batching.max_batch_size.get_ref() as usize;
    let encoder = Arc::new(super::load_encoder(
        &args.model,
        args.model.precision(),
        batch,
    )?);
    let registry = headstream_package::Registry::chosen(&args.registry, &[]);
    let plugins = headstream_runner::plugin_host(&encoder, component_cache(), 64)?;
    let runner = Runner::new(&pipeline, &plugins, encoder, &registry)?;

    let input = read_input(args.input.as_deref())?;
    let mut out = sink(args.output.as_ref(), || Box::new(std::io::stdout().lock()))?;
    let mut errors = sink(args.errors.as_ref(), || Box::new(std::io::stderr().lock()))?;
    let (mut ok, mut bad) = (0usize, 0usize);
    let mut pending: Vec<Message> = Vec::with_capacity(batch);
    let mut flush = |pending: &mut Vec<Message>, out: &mut Box<dyn Write>| -> anyhow::Result<()> {
        for record in runner.process(pending)? {
            writeln!(out, "{record}")?;
        }
        ok += pending.len();
        pending.clear();
        Ok(())
    };
    for (n, line) in input.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_message_within(line, runner.input_limits(), || (n + 1).to_string()) {
            Ok(message) => pending.push(message),
            Err(mut error) => {
                bad += 1;
                error.message = format!("line {}: {}", n + 1, error.message);
                writeln!(errors, "{}", ErrorRecord::new(runner.name(), &error, line))?;
            }
        }
        if pending.len() == batch {
            flush(&mut pending, &mut out)?;
        }
    }
    flush(&mut pending, &mut out)?;
    out.flush()?;
    errors.flush()?;
    if bad > 0 {
        eprintln!("{ok} messages processed, {bad} rejected (error records written)");
    }
    Ok(())
}

fn sink(
    path: Option<&PathBuf>,
    default: impl FnOnce() -> Box<dyn Write>,
) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(default())),
    })
}

/// Where compiled components are cached: `$HEADSTREAM_CACHE/components`, else
/// `~/.cache/headstream/components`; `None` without a home directory.
pub fn component_cache() -> Option<PathBuf> {
    super::cache_dir("components")
}
