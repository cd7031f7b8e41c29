//! The host side of `wit/plugin.wit`, generated in this one place.

wasmtime::component::bindgen!({
    world: "task-head",
    path: "../../wit",
});

pub use headstream::plugin::host;
pub use headstream::plugin::types;
