//! `headstream embed`: JSONL texts in, JSONL embeddings out.

use std::io::{BufWriter, Write};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use super::jsonl::{parse_records, read_input};
use crate::cli::EmbedArgs;

/// Texts encoded per call, bounding memory (token states are ~1.5 KB per token).
const CHUNK: usize = 1024;

#[derive(Serialize)]
struct Output<'a> {
    id: &'a Value,
    embedding: &'a [f32],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_ids: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offsets: Option<&'a [(usize, usize)]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_states: Option<Vec<&'a [f32]>>,
}

/// Runs `headstream embed`. The whole input is validated before anything is written, and a
/// file output appears only when complete.
pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    let source = args
        .input
        .as_ref()
        .map_or_else(|| "stdin".to_owned(), |p| p.display().to_string());
    let records = parse_records(&read_input(args.input.as_deref())?, &source)?;
    let encoder = super::load_encoder(
        &args.model,
        args.model.precision(),
        args.batch_size as usize,
    )?;
    let hidden = encoder.hidden_size();

    let write_all = |out: &mut dyn Write| -> anyhow::Result<()> {
        for chunk in records.chunks(CHUNK) {
            let texts: Vec<&str> = chunk.iter().map(|r| r.text.as_str()).collect();
            let encoded = encoder.encode(&texts, args.tokens)?;
            for (record, e) in chunk.iter().zip(&encoded) {
                let line = Output {
                    id: &record.id,
                    embedding: &e.embedding,
                    truncated: e.truncated,
                    input_ids: args.tokens.then_some(e.input_ids.as_slice()),
                    offsets: args.tokens.then_some(e.offsets.as_slice()),
                    token_states: e.token_states.as_ref().map(|s| s.chunks(hidden).collect()),
                };
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
            }
        }
        out.flush()?;
        Ok(())
    };

    match &args.output {
        Some(path) => {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => std::path::Path::new("."),
            };
            let tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot create a file in {}", dir.display()))?;
            let mut out = BufWriter::new(tmp);
            write_all(&mut out).with_context(|| format!("cannot write {}", path.display()))?;
            let tmp = out.into_inner().map_err(|e| e.into_error())?;
            tmp.persist(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            write_all(&mut out).context("cannot write to stdout")?;
        }
    }
    Ok(())
}
