//! `keyword-flags`: a rule-based head with no weights — flags texts that contain configured
//! keywords (case-insensitive, whole words). Shows that a head can be plain logic.
//!
//! Config: `flags` — an object mapping a flag name to a list of keywords, e.g.
//! `{"urgent": ["asap", "urgent"], "refund": ["refund", "money back"]}`.
//! Output: `{"flags": [names of matching flags, sorted by name]}`.

use headstream_sdk::{
    Assets, Config, ConfigError, Description, Head, HeadError, Item, Output, TaskKind,
};

struct KeywordFlags {
    /// (flag, lowercase keyword word sequences)
    flags: Vec<(String, Vec<Vec<String>>)>,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl Head for KeywordFlags {
    fn describe() -> Description {
        let mut d =
            headstream_sdk::describe("keyword-flags", env!("CARGO_PKG_VERSION"), TaskKind::Other);
        d.output_schema = r#"{"type":"object","properties":{"flags":{"type":"array","items":{"type":"string"}}}}"#.into();
        d
    }

    fn configure(config: Config, _assets: Assets) -> Result<Self, ConfigError> {
        let map: serde_json::Map<String, serde_json::Value> = config.require("flags")?;
        let mut flags = Vec::new();
        for (name, keywords) in map {
            let list: Vec<String> = serde_json::from_value(keywords).map_err(|e| {
                ConfigError::Invalid(format!("`flags.{name}` must be a list of strings: {e}"))
            })?;
            flags.push((
                name,
                list.iter()
                    .map(|k| words(k))
                    .filter(|w| !w.is_empty())
                    .collect(),
            ));
        }
        Ok(Self { flags })
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        let text = words(&item.text);
        let matched: Vec<&str> = self
            .flags
            .iter()
            .filter(|(_, keywords)| {
                keywords
                    .iter()
                    .any(|k| text.windows(k.len()).any(|w| w == k.as_slice()))
            })
            .map(|(name, _)| name.as_str())
            .collect();
        let json = serde_json::json!({ "flags": matched });
        Ok(Output::Json(json.to_string()))
    }
}

headstream_sdk::export_head!(KeywordFlags);
