//! The encoder fingerprint: which encoder produced a vector.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{EncoderError, ModelConfig, Precision};

/// Identifies an encoder by what determines its output: weights, tokenizer, pooling, maximum
/// length and normalisation. Displayed as `name@sha256:<64 hex>`; two encoders are compatible
/// exactly when their digests are equal (the name is for people and may differ).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    name: String,
    digest: String,
}

impl Fingerprint {
    /// Computes the fingerprint of the model described by `config`, run at `precision`. An
    /// f32 encoder's fingerprint is the one every earlier release computed; another precision
    /// adds itself to the digest and to the name (`all-minilm-l6-v2+int8`).
    pub fn compute(config: &ModelConfig, precision: Precision) -> Result<Self, EncoderError> {
        let weights = file_sha256(&config.dir.join("model.safetensors"))?;
        let tokenizer = file_sha256(&config.dir.join("tokenizer.json"))?;
        let mut h = Sha256::new();
        h.update(b"headstream-encoder-fingerprint/v1\n");
        h.update(format!("weights={weights}\n").as_bytes());
        h.update(format!("tokenizer={tokenizer}\n").as_bytes());
        h.update(format!("pooling={}\n", config.pooling.as_str()).as_bytes());
        h.update(format!("max_seq_length={}\n", config.max_seq_length).as_bytes());
        h.update(format!("normalize={}\n", config.normalize).as_bytes());
        if precision != Precision::F32 {
            h.update(format!("precision={precision}\n").as_bytes());
        }
        let name = config
            .dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_lowercase()))
            .unwrap_or_else(|| "encoder".into());
        let name = match precision {
            Precision::F32 => name,
            other => format!("{name}+{other}"),
        };
        Ok(Self {
            name,
            digest: hex(&h.finalize()),
        })
    }

    /// Parses `name@sha256:<hex>`; `None` if the text is not in that form.
    pub fn parse(text: &str) -> Option<Self> {
        let (name, digest) = text.split_once("@sha256:")?;
        let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        (valid && !name.is_empty()).then(|| Self {
            name: name.into(),
            digest: digest.to_ascii_lowercase(),
        })
    }

    /// The human-readable model name (the model directory's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 digest, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether vectors from `other` can be used where this encoder's are expected.
    pub fn is_compatible(&self, other: &Fingerprint) -> bool {
        self.digest == other.digest
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@sha256:{}", self.name, self.digest)
    }
}

fn file_sha256(path: &Path) -> Result<String, EncoderError> {
    let io_err = |source| EncoderError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut h = Sha256::new();
    io::copy(&mut file, &mut h).map_err(io_err)?;
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_rejects_garbage() {
        let text = format!("all-minilm-l6-v2@sha256:{}", "ab".repeat(32));
        let fp = Fingerprint::parse(&text);
        assert_eq!(fp.as_ref().map(ToString::to_string), Some(text));
        assert!(Fingerprint::parse("all-minilm-l6-v2").is_none());
        assert!(Fingerprint::parse("x@sha256:abc").is_none());
        assert!(Fingerprint::parse(&format!("@sha256:{}", "0".repeat(64))).is_none());
    }

    #[test]
    fn compatibility_ignores_the_name() {
        let a = Fingerprint::parse(&format!("a@sha256:{}", "1".repeat(64)));
        let b = Fingerprint::parse(&format!("b@sha256:{}", "1".repeat(64)));
        let c = Fingerprint::parse(&format!("a@sha256:{}", "2".repeat(64)));
        let (Some(a), Some(b), Some(c)) = (a, b, c) else {
            panic!("valid fingerprints")
        };
        assert!(a.is_compatible(&b));
        assert!(!a.is_compatible(&c));
    }
}
