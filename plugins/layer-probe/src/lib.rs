//! `layer-probe`: a head that asks for the layers its config names, checks it received exactly
//! them, and does nothing else.
//!
//! It measures what layer states cost the host (the copy into the sandbox and the call) apart
//! from any head's own work: `headstream bench heads --plugin
//! target/wasm32-wasip2/release/layer_probe.wasm --token-layers 3,4,5,6` against the token
//! classifier over the same layers. Config: `layers` (token layers, as the token classifier
//! names them) and `pooled_layers`, both lists of layer numbers. Each text is answered
//! `received` with score 1, or fails naming what was missing or misshapen.

use headstream_sdk::{
    Assets, ClassScore, Classification, Config, ConfigError, Description, Head, HeadError, Inputs,
    Item, LayerStates, Output, TaskKind,
};

struct LayerProbe {
    inputs: Inputs,
}

impl Head for LayerProbe {
    fn describe() -> Description {
        let mut d =
            headstream_sdk::describe("layer-probe", env!("CARGO_PKG_VERSION"), TaskKind::Classify);
        d.labels = vec!["received".into()];
        d.needs_token_states = true;
        d
    }

    fn configure(config: Config, _assets: Assets) -> Result<Self, ConfigError> {
        Ok(Self {
            inputs: Inputs {
                pooled_layers: config.get("pooled_layers")?.unwrap_or_default(),
                token_layers: config.get("layers")?.unwrap_or_default(),
            },
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
        batch
            .iter()
            .enumerate()
            .map(|(i, item)| self.check(item, layers.get(i)))
            .collect()
    }

    fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
        self.check(item, None)
    }
}

impl LayerProbe {
    /// `received`, when `states` holds every asked layer in its shape.
    fn check(&self, item: &Item, states: Option<&LayerStates>) -> Result<Output, HeadError> {
        let asked = &self.inputs;
        let tokens = item
            .token_states
            .as_ref()
            .ok_or_else(|| HeadError::InvalidInput("token states are missing".into()))?;
        let hidden = tokens.hidden_size as usize;
        let empty = LayerStates {
            pooled: Vec::new(),
            tokens: Vec::new(),
        };
        let states = states.unwrap_or(&empty);
        if states.pooled.len() != asked.pooled_layers.len()
            || states.tokens.len() != asked.token_layers.len()
        {
            return Err(HeadError::InvalidInput(format!(
                "{}: asked for {} pooled and {} token layers, received {} and {}",
                item.id,
                asked.pooled_layers.len(),
                asked.token_layers.len(),
                states.pooled.len(),
                states.tokens.len()
            )));
        }
        let want = tokens.tokens.len() * hidden;
        for (layer, pooled) in asked.pooled_layers.iter().zip(&states.pooled) {
            if pooled.len() != hidden {
                return Err(HeadError::InvalidInput(format!(
                    "{}: pooled layer {layer} has {} values, not {hidden}",
                    item.id,
                    pooled.len()
                )));
            }
        }
        for (layer, rows) in asked.token_layers.iter().zip(&states.tokens) {
            if rows.len() != want {
                return Err(HeadError::InvalidInput(format!(
                    "{}: token layer {layer} has {} values, not {want}",
                    item.id,
                    rows.len()
                )));
            }
        }
        Ok(Output::Classification(Classification {
            label: "received".into(),
            score: 1.0,
            scores: vec![ClassScore {
                label: "received".into(),
                score: 1.0,
            }],
        }))
    }
}

headstream_sdk::export_head!(LayerProbe);
