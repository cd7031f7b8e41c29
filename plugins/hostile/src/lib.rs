//! `hostile`: a test fixture that misbehaves on purpose, as its `mode` config says. The host
//! must contain each behaviour with a specific error while other heads keep working.
//!
//! Modes (checked when `run` is called on a text containing `boom`; other texts are answered
//! normally, so a batch with and without the trigger can be told apart):
//! `loop` (spins forever), `memory` (allocates without bound), `recursion` (unbounded
//! recursion), `huge-output` (a multi-megabyte JSON result), `panic`, `wrong-count` (returns
//! fewer results than items), `bad-json`, `bad-span` (an entity outside the text),
//! `long-error` (a 1 MiB error message for the text), `config-fails` (rejects its config), `probe` (answers what the sandbox lets it see: the
//! environment, arguments, stdin, the clocks, and a hash keyed by the randomness std draws),
//! `log-flood` (writes `line_bytes`-byte log lines, default 64 KiB, with newlines and terminal
//! escapes in them: `lines` of them then answers, or without `lines` until its deadline).
//!
//! Mode `layers` asks for the encoder layers its config names (`pooled`, `tokens`: lists of
//! layer numbers, as many as it likes) and answers, per text, the length and first value of
//! each layer's states it got, and its token count: what the host delivered, or refused.
//!
//! Mode `embed-flood` misbehaves in `configure` instead: it asks the host to embed `texts`
//! texts (default 4,000) of `text_bytes` bytes (default 16 KiB), `per_call` at a time (default
//! 1,000: 16 MB a call, within its memory cap), and ignores every error, asking again; with `distinct = false` every call
//! asks for the same texts.

use headstream_sdk::{
    Assets, Config, ConfigError, Description, Entity, Head, HeadError, Inputs, Item, LayerStates,
    Output, TaskKind,
};

struct Hostile {
    mode: String,
    lines: Option<u64>,
    line_bytes: usize,
    inputs: Inputs,
}

/// Asks the host to embed far more than any head needs, ignoring refusals.
fn embed_flood(config: &Config) -> Result<(), ConfigError> {
    let texts: usize = config.get("texts")?.unwrap_or(4_000);
    let text_bytes: usize = config.get("text_bytes")?.unwrap_or(16 << 10);
    let per_call: usize = config.get("per_call")?.unwrap_or(1_000).max(1);
    let distinct: bool = config.get("distinct")?.unwrap_or(true);
    let words = [
        "alpha ", "bravo ", "charlie ", "delta ", "echo ", "foxtrot ",
    ];
    let mut sent = 0;
    while sent < texts {
        let n = per_call.min(texts - sent);
        let batch: Vec<String> = (0..n)
            .map(|i| {
                let k = if distinct { sent + i } else { i };
                let mut t = format!("{k} ");
                while t.len() < text_bytes {
                    t.push_str(words[(t.len() + k) % words.len()]);
                }
                t.truncate(text_bytes);
                t
            })
            .collect();
        // A hostile head ignores the error and keeps asking.
        let _ = headstream_sdk::host::embed(&batch);
        sent += n;
    }
    Ok(())
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(depth % 256) as usize] = depth as u8;
    let next = recurse(depth + 1, pad);
    std::hint::black_box(next) + u64::from(pad[0])
}

impl Head for Hostile {
    fn describe() -> Description {
        headstream_sdk::describe("hostile", env!("CARGO_PKG_VERSION"), TaskKind::Other)
    }

    fn configure(config: Config, _assets: Assets) -> Result<Self, ConfigError> {
        let mode: String = config.require("mode")?;
        if mode == "config-fails" {
            return Err(ConfigError::Invalid(
                "this head always rejects its config".into(),
            ));
        }
        if mode == "embed-flood" {
            embed_flood(&config)?;
        }
        let inputs = Inputs {
            pooled_layers: config.get("pooled")?.unwrap_or_default(),
            token_layers: config.get("tokens")?.unwrap_or_default(),
        };
        Ok(Self {
            mode,
            lines: config.get("lines")?,
            line_bytes: config.get("line_bytes")?.unwrap_or(64 << 10),
            inputs,
        })
    }

    fn inputs(&self) -> Inputs {
        self.inputs.clone()
    }

    fn run_with(
        &self,
        batch: Vec<Item>,
        layers: Vec<LayerStates>,
    ) -> Vec<Result<Output, HeadError>> {
        if self.mode != "layers" {
            return self.run(batch);
        }
        let summary = |states: &[Vec<f32>]| -> Vec<String> {
            states
                .iter()
                .map(|s| format!("[{},{}]", s.len(), s.first().copied().unwrap_or(0.0)))
                .collect()
        };
        batch
            .iter()
            .zip(layers.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(item, states)| {
                let Some(states) = states else {
                    return Err(HeadError::InvalidInput("no layer states for this item".into()));
                };
                let tokens = item.token_states.as_ref().map_or(0, |t| t.tokens.len());
                Ok(Output::Json(format!(
                    "{{\"pooled\":[{}],\"tokens\":[{}],\"token_count\":{tokens},\"layers_given\":{}}}",
                    summary(&states.pooled).join(","),
                    summary(&states.tokens).join(","),
                    layers.len()
                )))
            })
            .collect()
    }

    fn run(&self, batch: Vec<Item>) -> Vec<Result<Output, HeadError>> {
        let triggered = batch.iter().any(|i| i.text.contains("boom"));
        if triggered {
            match self.mode.as_str() {
                "loop" => {
                    let mut x: u64 = 0;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                "memory" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "recursion" => {
                    let mut pad = [0u8; 256];
                    let n = recurse(0, &mut pad);
                    return vec![Ok(Output::Json(n.to_string()))];
                }
                "panic" => panic!("hostile head panicked on purpose"),
                "log-flood" => {
                    let mut line = String::from("flood\nFORGED host line \u{1b}]0;pwned\u{7}");
                    while line.len() < self.line_bytes {
                        line.push('x');
                    }
                    let mut n = 0u64;
                    while self.lines.is_none_or(|lines| n < lines) {
                        headstream_sdk::host::log(headstream_sdk::Level::Warn, &line);
                        n += 1;
                    }
                }
                "wrong-count" => return Vec::new(),
                "probe" => return batch.iter().map(|_| Ok(Output::Json(probe()))).collect(),
                _ => {}
            }
        }
        batch
            .iter()
            .map(|item| {
                let boom = item.text.contains("boom");
                Ok(match (self.mode.as_str(), boom) {
                    ("huge-output", true) => Output::Json(format!("\"{}\"", "x".repeat(2 << 20))),
                    ("bad-json", true) => Output::Json("{not json".into()),
                    ("long-error", true) => {
                        return Err(HeadError::Failed(format!("E{}", "x".repeat(1 << 20))));
                    }
                    ("bad-span", true) => Output::Entities(vec![Entity {
                        text: "nowhere".into(),
                        label: "X".into(),
                        start: 0,
                        end: item.text.len() as u32 + 10,
                        score: 1.0,
                    }]),
                    _ => Output::Json(format!("{{\"len\":{}}}", item.text.len())),
                })
            })
            .collect()
    }

    fn run_one(&self, _item: &Item) -> Result<Output, HeadError> {
        Err(HeadError::Failed("unused: run is overridden".into()))
    }
}

/// What ambient state the sandbox exposes, as JSON.
fn probe() -> String {
    use std::hash::BuildHasher as _;
    use std::io::Read as _;
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let args: Vec<String> = std::env::args().collect();
    let mut stdin = Vec::new();
    let stdin_read = std::io::stdin().read_to_end(&mut stdin).is_ok();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(-1.0, |d| d.as_secs_f64());
    let started = std::time::Instant::now();
    let mut spin: u64 = 0;
    for i in 0..1_000_000u64 {
        spin = std::hint::black_box(spin.wrapping_add(i));
    }
    let elapsed = started.elapsed().as_secs_f64();
    // HashMap's RandomState is seeded from the platform's randomness.
    let keyed = std::collections::hash_map::RandomState::new().hash_one("headstream");
    format!(
        "{{\"env\":{env:?},\"args\":{args:?},\"stdin_bytes\":{},\"stdin_read\":{stdin_read},\"wall_clock_s\":{wall},\"monotonic_elapsed_s\":{elapsed},\"random_hash\":\"{keyed:x}\",\"spin\":{spin}}}",
        stdin.len()
    )
}

headstream_sdk::export_head!(Hostile);
