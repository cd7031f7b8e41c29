//! A pipeline's `[[routes]]`: CEL conditions over a result record, each naming an extra
//! subject the result goes to when it holds.

use headstream_message::{ResultRecord, RouteMatch};
use headstream_pipeline::Pipeline;

use crate::RunnerError;

/// A pipeline's routes, their conditions compiled once.
pub(crate) struct Routes {
    pipeline: String,
    routes: Vec<Compiled>,
}

/// A route with its condition compiled.
struct Compiled {
    name: String,
    subject: String,
    program: cel::Program,
}

impl Routes {
    /// Compiles every route condition of `pipeline` (validated at load; a failure here is a
    /// [`RunnerError::Route`]).
    pub(crate) fn compile(pipeline: &Pipeline) -> Result<Self, RunnerError> {
        let routes = pipeline
            .routes
            .iter()
            .map(|r| {
                let program = headstream_pipeline::compile_condition(r.when.get_ref())
                    .map_err(RunnerError::Route)?;
                Ok(Compiled {
                    name: r.name.get_ref().clone(),
                    subject: r.subject.get_ref().clone(),
                    program,
                })
            })
            .collect::<Result<_, RunnerError>>()?;
        Ok(Self {
            pipeline: pipeline.name.get_ref().clone(),
            routes,
        })
    }

    /// The routes whose condition holds for `record` of a message with `text`, in config
    /// order. A condition sees `results`, `errors`, `meta`, `id` and `text`; one that fails to
    /// evaluate (say, over the output of a head that failed) or gives no bool does not match.
    pub(crate) fn matching(&self, record: &ResultRecord, text: &str) -> Vec<RouteMatch> {
        if self.routes.is_empty() {
            return Vec::new();
        }
        let mut context = cel::Context::default();
        let exposed = [
            ("results", context.add_variable("results", &record.results)),
            ("errors", context.add_variable("errors", &record.errors)),
            ("meta", context.add_variable("meta", &record.meta)),
            ("id", context.add_variable("id", record.id.as_str())),
            ("text", context.add_variable("text", text)),
        ];
        for (name, outcome) in exposed {
            if let Err(e) = outcome {
                tracing::warn!(pipeline = %self.pipeline, "cannot expose `{name}` to routes: {e}");
            }
        }
        self.routes
            .iter()
            .filter(|r| match r.program.execute(&context) {
                Ok(cel::Value::Bool(b)) => b,
                Ok(other) => {
                    tracing::debug!(route = %r.name, "condition gave {other:?}, not a bool");
                    false
                }
                Err(e) => {
                    tracing::debug!(route = %r.name, "condition failed: {e}");
                    false
                }
            })
            .map(|r| RouteMatch {
                name: r.name.clone(),
                subject: r.subject.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use serde_json::json;

    use super::*;

    fn compiled(extra: &str) -> Result<Routes, Box<dyn std::error::Error>> {
        let text = format!(
            r#"
version = 1
name = "support"
[input]
subject = "support.in"
[output]
subject = "support.out"
errors = "support.errors"
[[heads]]
name = "sentiment"
plugin = "sentiment@^1"
[[heads]]
name = "topic"
plugin = "topic@^1"
{extra}"#
        );
        let pipeline = Pipeline::parse(&text, Path::new("support.toml"))?;
        Ok(Routes::compile(&pipeline)?)
    }

    fn record(results: serde_json::Value, errors: &[(&str, &str)]) -> ResultRecord {
        ResultRecord {
            encoder: "e".to_owned(),
            errors: errors
                .iter()
                .map(|(h, e)| ((*h).to_owned(), (*e).to_owned()))
                .collect(),
            heads: BTreeMap::new(),
            host: None,
            id: "m1".to_owned(),
            key: "support/m1/0".to_owned(),
            meta: json!({"tier": "gold"}),
            pipeline: "support".to_owned(),
            redelivered: None,
            results: serde_json::from_value(results).unwrap_or_default(),
            routes: Vec::new(),
            truncated: false,
            trace_id: None,
        }
    }

    fn names(matched: Vec<RouteMatch>) -> Vec<String> {
        matched.into_iter().map(|m| m.name).collect()
    }

    #[test]
    fn routes_match_on_outputs_failures_meta_and_text_in_config_order()
    -> Result<(), Box<dyn std::error::Error>> {
        let routes = compiled(
            r#"
[[routes]]
name = "angry"
when = 'results.sentiment.label == "negative" && results.sentiment.score > 0.8'
subject = "support.escalate"
[[routes]]
name = "gold"
when = 'meta.tier == "gold" && text.contains("refund")'
subject = "support.gold"
[[routes]]
name = "broken"
when = '"topic" in errors'
subject = "support.broken"
"#,
        )?;
        let angry = record(
            json!({"sentiment": {"label": "negative", "score": 0.93}, "topic": {"label": "billing"}}),
            &[],
        );
        assert_eq!(
            names(routes.matching(&angry, "I want a refund")),
            ["angry", "gold"]
        );
        let matched = routes.matching(&angry, "hello");
        assert_eq!(matched[0].subject, "support.escalate");
        let calm = record(
            json!({"sentiment": {"label": "negative", "score": 0.6}}),
            &[("topic", "trapped")],
        );
        assert_eq!(names(routes.matching(&calm, "hello")), ["broken"]);
        Ok(())
    }

    #[test]
    fn a_condition_over_a_failed_head_or_not_a_bool_does_not_match()
    -> Result<(), Box<dyn std::error::Error>> {
        let routes = compiled(
            r#"
[[routes]]
name = "angry"
when = 'results.sentiment.label == "negative"'
subject = "support.escalate"
"#,
        )?;
        // `sentiment` failed: its output is missing, so the condition cannot be evaluated.
        let failed = record(
            json!({"topic": {"label": "billing"}}),
            &[("sentiment", "timeout")],
        );
        assert!(routes.matching(&failed, "x").is_empty());
        assert!(
            compiled(
                r#"
[[routes]]
name = "label"
when = 'results.sentiment.label'
subject = "support.label"
"#
            )?
            .matching(
                &record(json!({"sentiment": {"label": "negative"}}), &[]),
                "x"
            )
            .is_empty()
        );
        Ok(())
    }
}
