//! `hostile-wit`: a test fixture built against a different major version of the contract
//! (`headstream:plugin@2.0.0`, whose `run` takes an extra argument). The host must refuse it
//! with an error that says the contract does not match.

wit_bindgen::generate!({ world: "task-head", path: "wit" });

use exports::headstream::plugin::head::Guest;
use headstream::plugin::types::{
    Asset, ConfigError, Description, HeadError, Item, Output, TaskKind,
};

struct Future;

impl Guest for Future {
    fn describe() -> Description {
        Description {
            name: "hostile-wit".into(),
            version: "2.0.0".into(),
            kind: TaskKind::Other,
            labels: Vec::new(),
            needs_token_states: false,
            encoder: None,
            output_schema: String::new(),
        }
    }

    fn configure(_config: String, _assets: Vec<Asset>) -> Result<(), ConfigError> {
        Ok(())
    }

    fn run(batch: Vec<Item>, _deadline_ms: u32) -> Vec<Result<Output, HeadError>> {
        batch
            .iter()
            .map(|_| Ok(Output::Json("{}".into())))
            .collect()
    }
}

export!(Future);
