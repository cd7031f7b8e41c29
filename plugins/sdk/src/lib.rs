//! Write headstream task heads in Rust.
//!
//! A task head is a WebAssembly component that implements `headstream:plugin/head` (see
//! `wit/plugin.wit` in the headstream repository). With this crate a head is a type that
//! implements [`Head`], exported with [`export_head!`]:
//!
//! ```ignore
//! use headstream_sdk::{Assets, Config, ConfigError, Description, Head, HeadError, Item, Output, TaskKind};
//!
//! struct Shouting;
//!
//! impl Head for Shouting {
//!     fn describe() -> Description {
//!         headstream_sdk::describe("shouting", env!("CARGO_PKG_VERSION"), TaskKind::Other)
//!     }
//!     fn configure(_config: Config, _assets: Assets) -> Result<Self, ConfigError> {
//!         Ok(Shouting)
//!     }
//!     fn run_one(&self, item: &Item) -> Result<Output, HeadError> {
//!         let loud = item.text.chars().filter(|c| c.is_uppercase()).count() * 2 > item.text.len();
//!         Ok(Output::Json(format!("{{\"shouting\":{loud}}}")))
//!     }
//! }
//!
//! headstream_sdk::export_head!(Shouting);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component.
//!
//! Helpers for common heads: [`softmax`], [`top_k`], [`classify`], [`Dense`] (a linear layer
//! read from a safetensors asset), [`decode_bio`] (BIO/IOB2 tags to byte-offset entity spans),
//! [`viterbi_bio`] (the most probable valid BIO path from per-token tag probabilities).

#![deny(missing_docs)]

mod helpers;

pub use helpers::{Dense, TaggedToken, classify, decode_bio, softmax, top_k, viterbi_bio};

/// The generated bindings for `headstream:plugin` (wit-bindgen). Plugin code rarely needs this
/// module directly; [`export_head!`] uses it.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "task-head",
        path: "../../wit",
        // The host interface and shared types are 0.1.0's, from wit/deps.
        generate_all,
        pub_export_macro: true,
        default_bindings_module: "headstream_sdk::bindings",
        export_macro_name: "export_task_head",
    });
}

pub use bindings::headstream::plugin0_1_0::host::{self, Level};
pub use bindings::headstream::plugin0_1_0::types::{
    Asset, ClassScore, Classification, ConfigError, Description, Entity, HeadError, Item, Output,
    TaskKind, Token, TokenStates, Upstream,
};
pub use bindings::headstream::plugin0_2_0::features::{Inputs, LayerStates};

/// Asks for no layer: the sentence embedding (and token states, by `needs_token_states`) only.
pub fn no_layers() -> Inputs {
    Inputs {
        pooled_layers: Vec::new(),
        token_layers: Vec::new(),
    }
}

/// A task head. `configure` builds the head's state once per instance; `run` (or `run_one`)
/// answers batches. A head that reads the encoder's other layers says which in `inputs` and
/// gets their states in `run_with`.
pub trait Head: Sized + 'static {
    /// Describes the head: name, version, kind, labels, needs, encoder.
    fn describe() -> Description;

    /// Builds the head from the pipeline's settings and assets.
    fn configure(config: Config, assets: Assets) -> Result<Self, ConfigError>;

    /// Answers one text.
    fn run_one(&self, item: &Item) -> Result<Output, HeadError>;

    /// Answers a batch: one result per item, in order. Override for batch-wide work.
    fn run(&self, batch: Vec<Item>) -> Vec<Result<Output, HeadError>> {
        batch.iter().map(|item| self.run_one(item)).collect()
    }

    /// The encoder layers whose states the head reads, asked once after `configure` (a
    /// trained head knows them from its weights). At most 4 layers of per-token states.
    fn inputs(&self) -> Inputs {
        no_layers()
    }

    /// Answers a batch with `layers[i]`, item `i`'s states of the layers `inputs` asked for.
    /// Heads that ask for layers override this; the default ignores them and calls `run`.
    fn run_with(
        &self,
        batch: Vec<Item>,
        layers: Vec<LayerStates>,
    ) -> Vec<Result<Output, HeadError>> {
        let _ = layers;
        self.run(batch)
    }
}

/// A [`Description`] with no labels, no token states and no encoder pin; adjust fields as needed.
pub fn describe(name: &str, version: &str, kind: TaskKind) -> Description {
    Description {
        name: name.into(),
        version: version.into(),
        kind,
        labels: Vec::new(),
        needs_token_states: false,
        encoder: None,
        output_schema: String::new(),
    }
}

/// The pipeline's per-head settings (a JSON object).
#[derive(Debug, Clone, Default)]
pub struct Config(serde_json::Map<String, serde_json::Value>);

impl Config {
    /// Parses the JSON text the host passes to `configure`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => Ok(Self(map)),
            Ok(serde_json::Value::Null) => Ok(Self::default()),
            Ok(_) => Err(ConfigError::Invalid("config must be a JSON object".into())),
            Err(e) => Err(ConfigError::Invalid(format!("config is not JSON: {e}"))),
        }
    }

    /// The raw value of `key`.
    pub fn value(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    /// `key` deserialised as `T`; `None` when absent, an error naming the key when malformed.
    pub fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.0.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("`{key}`: {e}"))),
        }
    }

    /// Like [`Config::get`], but absence is an error.
    pub fn require<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T, ConfigError> {
        self.get(key)?
            .ok_or_else(|| ConfigError::Invalid(format!("`{key}` is required")))
    }
}

/// The assets the pipeline gave the head, by name.
#[derive(Debug, Clone, Default)]
pub struct Assets(Vec<Asset>);

impl Assets {
    /// Wraps the assets passed to `configure`.
    pub fn new(assets: Vec<Asset>) -> Self {
        Self(assets)
    }

    /// The bytes of asset `name`, if given.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.data.as_slice())
    }

    /// The bytes of asset `name`; a [`ConfigError::MissingAsset`] when absent.
    pub fn require(&self, name: &str) -> Result<&[u8], ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::MissingAsset(name.into()))
    }
}

/// Exports a [`Head`] implementation as the component's `headstream:plugin/head`.
#[macro_export]
macro_rules! export_head {
    ($head:ty) => {
        #[doc(hidden)]
        pub struct __HeadstreamGuest;

        ::std::thread_local! {
            static __HEADSTREAM_HEAD: ::core::cell::RefCell<::core::option::Option<$head>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        impl $crate::bindings::exports::headstream::plugin0_2_0::head::Guest for __HeadstreamGuest {
            fn describe() -> $crate::Description {
                <$head as $crate::Head>::describe()
            }

            fn configure(
                config: String,
                assets: Vec<$crate::Asset>,
            ) -> Result<$crate::Inputs, $crate::ConfigError> {
                let config = $crate::Config::parse(&config)?;
                let head = <$head as $crate::Head>::configure(config, $crate::Assets::new(assets))?;
                let inputs = <$head as $crate::Head>::inputs(&head);
                __HEADSTREAM_HEAD.with(|slot| *slot.borrow_mut() = Some(head));
                Ok(inputs)
            }

            fn run(
                batch: Vec<$crate::Item>,
                layers: Vec<$crate::LayerStates>,
            ) -> Vec<Result<$crate::Output, $crate::HeadError>> {
                __HEADSTREAM_HEAD.with(|slot| match &*slot.borrow() {
                    Some(head) => <$head as $crate::Head>::run_with(head, batch, layers),
                    None => batch
                        .iter()
                        .map(|_| {
                            Err($crate::HeadError::Failed(
                                "the head is not configured".into(),
                            ))
                        })
                        .collect(),
                })
            }
        }

        $crate::bindings::export_task_head!(__HeadstreamGuest);
    };
}
