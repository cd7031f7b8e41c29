//! Reading a sentence-transformers model directory: which files, which settings.

use std::path::{Path, PathBuf};

use candle_transformers::models::bert;
use serde::Deserialize;

use crate::EncoderError;

/// How token states are pooled into one sentence vector, as `1_Pooling/config.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pooling {
    /// Mean over the real (attention-mask 1) tokens, `[CLS]` and `[SEP]` included.
    Mean,
    /// The first token's (`[CLS]`) state.
    Cls,
    /// Element-wise maximum over the real tokens.
    Max,
}

impl Pooling {
    /// Stable lowercase name, used in the fingerprint and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        }
    }
}

/// Everything the encoder needs to know about a sentence-transformers BERT directory.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The directory the model was read from.
    pub dir: PathBuf,
    /// The BERT architecture (`config.json`).
    pub bert: bert::Config,
    /// Pooling mode (`1_Pooling/config.json`, or the folder `modules.json` names).
    pub pooling: Pooling,
    /// Whether a `Normalize` module follows pooling (`modules.json`).
    pub normalize: bool,
    /// Longest input in tokens, `[CLS]` and `[SEP]` included (`sentence_bert_config.json`,
    /// capped at the model's position embeddings).
    pub max_seq_length: usize,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode: Option<String>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// Files a model directory must contain.
pub(crate) const REQUIRED_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

impl ModelConfig {
    /// Reads the configuration files of the model in `dir`.
    pub fn load(dir: &Path) -> Result<Self, EncoderError> {
        if !dir.is_dir() {
            return Err(EncoderError::NoModelDir {
                dir: dir.to_owned(),
            });
        }
        for file in REQUIRED_FILES {
            if !dir.join(file).is_file() {
                return Err(EncoderError::MissingFile {
                    path: dir.join(file),
                });
            }
        }
        let bert: bert::Config = read_json(&dir.join("config.json"))?;

        let modules: Vec<Module> = match dir.join("modules.json") {
            p if p.is_file() => read_json(&p)?,
            _ => Vec::new(),
        };
        let normalize = modules.iter().any(|m| m.kind.ends_with("models.Normalize"));
        let pooling_dir = modules
            .iter()
            .find(|m| m.kind.ends_with("models.Pooling"))
            .map_or("1_Pooling", |m| m.path.as_str());
        let pooling_path = dir.join(pooling_dir).join("config.json");
        let pooling = if pooling_path.is_file() {
            parse_pooling(&pooling_path, &read_json(&pooling_path)?)?
        } else {
            // sentence-transformers' default for a bare transformer is mean pooling.
            Pooling::Mean
        };

        let st_path = dir.join("sentence_bert_config.json");
        let st_max = if st_path.is_file() {
            read_json::<SentenceBertConfig>(&st_path)?.max_seq_length
        } else {
            None
        };
        let max_seq_length = st_max
            .unwrap_or(bert.max_position_embeddings)
            .min(bert.max_position_embeddings);
        Ok(Self {
            dir: dir.to_owned(),
            bert,
            pooling,
            normalize,
            max_seq_length,
        })
    }
}

fn parse_pooling(path: &Path, cfg: &PoolingConfig) -> Result<Pooling, EncoderError> {
    let unsupported = |mode: &str| EncoderError::Config {
        path: path.to_owned(),
        reason: format!("pooling mode {mode:?} is not supported (supported: mean, cls, max)"),
    };
    if let Some(mode) = &cfg.pooling_mode {
        return match mode.as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "max" => Ok(Pooling::Max),
            other => Err(unsupported(other)),
        };
    }
    let modes = [
        (cfg.pooling_mode_mean_tokens, "mean"),
        (cfg.pooling_mode_cls_token, "cls"),
        (cfg.pooling_mode_max_tokens, "max"),
        (
            cfg.pooling_mode_mean_sqrt_len_tokens,
            "mean_sqrt_len_tokens",
        ),
        (cfg.pooling_mode_weightedmean_tokens, "weightedmean"),
        (cfg.pooling_mode_lasttoken, "lasttoken"),
    ];
    let on: Vec<&str> = modes
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, n)| *n)
        .collect();
    match on.as_slice() {
        ["mean"] => Ok(Pooling::Mean),
        ["cls"] => Ok(Pooling::Cls),
        ["max"] => Ok(Pooling::Max),
        [] => Err(EncoderError::Config {
            path: path.to_owned(),
            reason: "no pooling mode is enabled".into(),
        }),
        [one] => Err(unsupported(one)),
        many => Err(unsupported(&many.join("+"))),
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EncoderError> {
    let text = std::fs::read_to_string(path).map_err(|source| EncoderError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EncoderError::Config {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}
