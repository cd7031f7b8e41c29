//! The host side of `wit/plugin.wit`, generated in this one place: every contract version the
//! host serves, sharing 0.1.0's types and host interface.

/// `headstream:plugin@0.1.0`: the first contract.
pub mod v1 {
    wasmtime::component::bindgen!({
        world: "headstream:plugin/task-head@0.1.0",
        path: "../../wit",
        // `embed` may trap: a head over its embedding budget or setup deadline must fail its
        // `configure`, whatever it does with an error value.
        imports: { "headstream:plugin/host@0.1.0.embed": trappable },
        // Batches are lowered into a head straight from the host's buffers, not from copies.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// `headstream:plugin@0.2.0`: heads ask for layers' states.
pub mod v2 {
    wasmtime::component::bindgen!({
        world: "headstream:plugin/task-head@0.2.0",
        path: "../../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "headstream:plugin/types@0.1.0": super::v1::headstream::plugin0_1_0::types,
            "headstream:plugin/host@0.1.0": super::v1::headstream::plugin0_1_0::host,
        },
    });
}

pub use v1::headstream::plugin0_1_0::host;
pub use v1::headstream::plugin0_1_0::types;
pub use v2::headstream::plugin0_2_0::features;
