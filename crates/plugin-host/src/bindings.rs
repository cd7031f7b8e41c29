//! The host side of `wit/plugin.wit`, generated in this one place.

wasmtime::component::bindgen!({
    world: "task-head",
    path: "../../wit",
    // `embed` may trap: a head over its embedding budget or setup deadline must fail its
    // `configure`, whatever it does with an error value.
    imports: { "headstream:plugin/host.embed": trappable },
});

pub use headstream::plugin::host;
pub use headstream::plugin::types;
