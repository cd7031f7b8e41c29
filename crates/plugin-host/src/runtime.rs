//! Which language runtime a component carries, and what that changes.

use std::fmt;

/// The language runtime inside a component, read from its metadata at load.
///
/// Components built by an interpreter toolchain (componentize-py, componentize-js) carry the
/// interpreter, whose standard library imports more of WASI than a Rust guest does (files,
/// sockets) even when the head never uses it, and which needs more memory. Such imports are
/// linked to deny-all implementations instead of being refused at load; nothing is granted
/// either way (no directories, no network). A component may claim to be an interpreter in its
/// metadata; that only moves its refusal from load time to run time and changes its default
/// memory cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Runtime {
    /// Compiled to WebAssembly directly (Rust, C, ...).
    Native,
    /// CPython inside the component (componentize-py).
    Python,
    /// SpiderMonkey inside the component (componentize-js / jco).
    JavaScript,
}

impl Runtime {
    /// Reads the runtime from a component's custom sections: a `producers` section naming
    /// ComponentizeJS, or a core module named `libpython3*` in its `component-name` section.
    /// Anything else, unparseable bytes included, is [`Runtime::Native`].
    pub fn detect(bytes: &[u8]) -> Runtime {
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            let Ok(wasmparser::Payload::CustomSection(section)) = payload else {
                if payload.is_err() {
                    break;
                }
                continue;
            };
            let data = section.data();
            match section.name() {
                "producers" if contains(data, b"ComponentizeJS") => return Runtime::JavaScript,
                "component-name" if contains(data, b"libpython3") => return Runtime::Python,
                _ => {}
            }
        }
        Runtime::Native
    }

    /// The default cap on the head's linear memory for this runtime (a pipeline's
    /// `[heads.limits] memory_mb` overrides it).
    pub fn default_memory_bytes(self) -> usize {
        match self {
            Runtime::Native => 64 << 20,
            Runtime::Python => PYTHON_MEMORY_BYTES,
            Runtime::JavaScript => JS_MEMORY_BYTES,
        }
    }

    /// Whether WASI imports that grant nothing here (`wasi:sockets`, `wasi:filesystem/preopens`)
    /// are linked to deny-all implementations rather than refused at load.
    pub(crate) fn links_denied_wasi(self) -> bool {
        self != Runtime::Native
    }
}

/// CPython's heap after start-up plus a head's working set.
const PYTHON_MEMORY_BYTES: usize = 128 << 20;
/// SpiderMonkey's heap after start-up plus a head's working set.
const JS_MEMORY_BYTES: usize = 128 << 20;

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Native => "native",
            Runtime::Python => "python",
            Runtime::JavaScript => "javascript",
        })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
