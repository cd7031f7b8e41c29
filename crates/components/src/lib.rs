//! The task-head components that ship inside the `headstream` binary.
//!
//! `headstream train` packages [`LINEAR_CLASSIFIER`] or [`TOKEN_CLASSIFIER`] with the weights it
//! fits, and a pipeline names any of [`ALL`] with `builtin = "name"`, so neither needs a
//! WebAssembly toolchain or a `cargo plugins` step on the machine that runs them.
//!
//! The bytes are the committed files in `wasm/`, built from `plugins/` by
//! `scripts/components.sh` with machine-specific paths remapped, so a rebuild with the rustc
//! recorded in `wasm/BUILD` gives the same bytes; the test suite rebuilds and compares them.
//! Each component's sha256 is pinned here and checked by this crate's tests.
#![deny(missing_docs)]

/// One embedded component: its name, what it is for, its bytes and their pinned sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtin {
    /// The name pipelines use (`builtin = "keyword-flags"`), which is also its plugin's folder.
    pub name: &'static str,
    /// One line on what the head does and what it needs.
    pub summary: &'static str,
    /// The component (a wasm32-wasip2 WebAssembly component of the `task-head` world).
    pub bytes: &'static [u8],
    /// sha256 of `bytes`, lower-case hex.
    pub sha256: &'static str,
}

impl Builtin {
    /// How results and messages name it: `builtin:<name>`.
    pub fn origin(&self) -> String {
        format!("builtin:{}", self.name)
    }
}

/// A dense softmax layer over the pooled embedding; `train --kind classify` packages it.
pub const LINEAR_CLASSIFIER: Builtin = Builtin {
    name: "linear-classifier",
    summary: "softmax layer over the sentence embedding (weights asset `weights`); `train --kind classify`",
    bytes: include_bytes!("../wasm/linear-classifier.wasm"),
    sha256: "3f6dc72f046b99926fe9b359a06551220e1f85d2544b5c9de73ee0e7a35f83f7",
};

/// A per-word BIO tagger over token states; `train --kind tokens` packages it.
pub const TOKEN_CLASSIFIER: Builtin = Builtin {
    name: "token-classifier",
    summary: "BIO entity tagger over token states (weights asset `weights`); `train --kind tokens`",
    bytes: include_bytes!("../wasm/token-classifier.wasm"),
    sha256: "8df4e69b7e68c9792ae5e4adea1111a542787135762e26457e35a9941e492c23",
};

/// Zero-shot classification by cosine similarity to example sentences given in its config.
pub const PROTOTYPE_CLASSIFIER: Builtin = Builtin {
    name: "prototype-classifier",
    summary: "zero-shot labels from example sentences in its config (`labels`, `temperature`)",
    bytes: include_bytes!("../wasm/prototype-classifier.wasm"),
    sha256: "47c774d1ba4fcca5be24af0c01ee3bb6ed0063d6107e983084ddf76e8d35424c",
};

/// Rule-based flags: which configured keyword lists a text mentions.
pub const KEYWORD_FLAGS: Builtin = Builtin {
    name: "keyword-flags",
    summary: "flags from keyword lists in its config (`flags`), with byte spans",
    bytes: include_bytes!("../wasm/keyword-flags.wasm"),
    sha256: "43301d44cf9e9bf4110cd139950519eadea74f68f21060029b1651c0bccb30ec",
};

/// Every embedded component, by name.
pub const ALL: &[Builtin] = &[
    LINEAR_CLASSIFIER,
    TOKEN_CLASSIFIER,
    PROTOTYPE_CLASSIFIER,
    KEYWORD_FLAGS,
];

/// The embedded component called `name`, if there is one.
pub fn get(name: &str) -> Option<&'static Builtin> {
    ALL.iter().find(|b| b.name == name)
}

/// The names of every embedded component, for messages.
pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|b| b.name).collect()
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn every_component_has_its_pinned_digest() {
        for b in ALL {
            let actual = format!("{:x}", Sha256::digest(b.bytes));
            assert_eq!(
                actual, b.sha256,
                "{}: the bytes changed; update the pin (and wasm/BUILD via scripts/components.sh)",
                b.name
            );
            assert!(
                b.bytes.starts_with(b"\0asm"),
                "{} is not WebAssembly",
                b.name
            );
        }
    }

    #[test]
    fn the_build_record_lists_the_pinned_digests() {
        let record = include_str!("../wasm/BUILD");
        for b in ALL {
            let line = format!("{}  {}.wasm", b.sha256, b.name);
            assert!(
                record.lines().any(|l| l == line),
                "wasm/BUILD lacks `{line}`"
            );
        }
    }

    #[test]
    fn names_are_unique_and_found() {
        for b in ALL {
            assert_eq!(get(b.name), Some(b));
        }
        assert_eq!(get("nosuch"), None);
        let mut names = names();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
