//! `template`: the starting point for a new head (`headstream new-head NAME` copies it).
//!
//! It labels a text `question` when it ends with a question mark and `statement` otherwise,
//! and rejects an empty embedding — replace `run_one` with
//! your head's logic, `configure` with its settings and assets.

use headstream_sdk::{
    Assets, ClassScore, Classification, Config, ConfigError, Description, Head, HeadError, Item,
    Output, TaskKind,
};

struct Template {
    /// Label for texts that end with `?` (config `question_label`, default `question`).
    question_label: String,
}

impl Head for Template {
    fn describe() -> Description {
        let mut d =
            headstream_sdk::describe("template", env!("CARGO_PKG_VERSION"), TaskKind::Classify);
        d.labels = vec!["question".into(), "statement".into()];
        d
    }

    fn configure(config: Config, _assets: Assets) -> Result<Self, ConfigError> {
        let question_label = config
            .get("question_label")?
            .unwrap_or_else(|| "question".to_owned());
        Ok(Self { question_label })
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        if item.embedding.is_empty() {
            return Err(HeadError::InvalidInput("empty embedding".into()));
        }
        let question = item.text.trim_end().ends_with('?');
        let label = if question {
            self.question_label.clone()
        } else {
            "statement".to_owned()
        };
        let scores = vec![
            ClassScore {
                label: self.question_label.clone(),
                score: if question { 1.0 } else { 0.0 },
            },
            ClassScore {
                label: "statement".into(),
                score: if question { 0.0 } else { 1.0 },
            },
        ];
        Ok(Output::Classification(Classification {
            label,
            score: 1.0,
            scores,
        }))
    }
}

headstream_sdk::export_head!(Template);
