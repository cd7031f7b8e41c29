//! An on-disk cache of sentence embeddings (and of every layer's pooled states), keyed by
//! encoder fingerprint and text digest, so a second training or evaluation run over the same
//! data does not encode it again.
//!
//! One append-only file per encoder fingerprint: a header (magic, width) and fixed-size records
//! (sha256 of the text, the embedding as little-endian f32). A record cut short by a crash is
//! ignored and overwritten; a file of another width is refused rather than misread.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"HSEMB\x001\n";

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The cache file could not be read or written.
    #[error("embedding cache {}: {source}", path.display())]
    Io {
        /// The cache file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a cache file of this width.
    #[error("embedding cache {}: {message} (delete the file to rebuild it)", path.display())]
    Corrupt {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Embeddings of one encoder, by text.
#[derive(Debug)]
pub struct EmbeddingCache {
    path: PathBuf,
    dim: usize,
    file: std::fs::File,
    entries: HashMap<[u8; 32], Vec<f32>>,
    hits: usize,
    misses: usize,
}

/// sha256 of a text, the cache key.
pub fn text_key(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl EmbeddingCache {
    /// Opens (or creates) the cache for the encoder whose fingerprint digest is `digest` and
    /// whose embeddings are `dim` wide, under `dir`.
    pub fn open(dir: &Path, digest: &str, dim: usize) -> Result<Self, CacheError> {
        let path = dir.join(format!("{digest}.emb"));
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let header = MAGIC.len() + 4;
        let mut entries = HashMap::new();
        if bytes.is_empty() {
            file.write_all(MAGIC).map_err(io)?;
            file.write_all(&(dim as u32).to_le_bytes()).map_err(io)?;
        } else {
            let corrupt = |message: String| CacheError::Corrupt {
                path: path.clone(),
                message,
            };
            if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
                return Err(corrupt("not a headstream embedding cache".into()));
            }
            let mut width = [0u8; 4];
            width.copy_from_slice(&bytes[MAGIC.len()..header]);
            let width = u32::from_le_bytes(width) as usize;
            if width != dim {
                return Err(corrupt(format!("holds {width}-wide embeddings, not {dim}")));
            }
            let record = 32 + 4 * dim;
            let whole = (bytes.len() - header) / record;
            for r in bytes[header..header + whole * record].chunks_exact(record) {
                let mut key = [0u8; 32];
                key.copy_from_slice(&r[..32]);
                let values = r[32..]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                entries.insert(key, values);
            }
            // Drop a torn last record so appends stay aligned.
            let end = (header + whole * record) as u64;
            file.set_len(end).map_err(io)?;
            file.seek(SeekFrom::Start(end)).map_err(io)?;
        }
        Ok(Self {
            path,
            dim,
            file,
            entries,
            hits: 0,
            misses: 0,
        })
    }

    /// The cached embedding of `text`, if any.
    pub fn get(&mut self, text: &str) -> Option<&[f32]> {
        match self.entries.get(&text_key(text)) {
            Some(v) => {
                self.hits += 1;
                Some(v)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Stores the embeddings of `texts` (appended to the file at once).
    pub fn insert_all(
        &mut self,
        texts: &[&str],
        embeddings: &[Vec<f32>],
    ) -> Result<(), CacheError> {
        let mut buf = Vec::with_capacity(texts.len() * (32 + 4 * self.dim));
        for (text, embedding) in texts.iter().zip(embeddings) {
            if embedding.len() != self.dim {
                continue;
            }
            let key = text_key(text);
            if self.entries.contains_key(&key) {
                continue;
            }
            buf.extend_from_slice(&key);
            embedding
                .iter()
                .for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
            self.entries.insert(key, embedding.clone());
        }
        self.file.write_all(&buf).map_err(|source| CacheError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Lookups answered from the cache, and lookups that were not, since opening.
    pub fn hits_and_misses(&self) -> (usize, usize) {
        (self.hits, self.misses)
    }

    /// Embeddings held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The on-disk feature caches of one encoder: sentence embeddings, and every layer's
/// mean-pooled states side by side (layers 0..=N, one record per text), opened when first
/// needed (a head over the embedding never reads the larger file).
#[derive(Debug)]
pub struct FeatureCache {
    dir: PathBuf,
    digest: String,
    layers_width: usize,
    /// Sentence embeddings.
    pub embeddings: EmbeddingCache,
    layers: Option<EmbeddingCache>,
    hits: usize,
    misses: usize,
}

impl FeatureCache {
    /// Opens the caches under `dir` of the encoder whose fingerprint digest is `digest`, with
    /// `hidden`-wide states and `layers` layers (the embedding layer's output included).
    pub fn open(
        dir: &Path,
        digest: &str,
        hidden: usize,
        layers: usize,
    ) -> Result<Self, CacheError> {
        Ok(Self {
            dir: dir.to_owned(),
            digest: digest.to_owned(),
            layers_width: hidden * layers,
            embeddings: EmbeddingCache::open(dir, digest, hidden)?,
            layers: None,
            hits: 0,
            misses: 0,
        })
    }

    /// The cached embedding of `text` and, with `layers`, its layers' pooled states (empty
    /// without); `None` unless all of it is cached. Counts one hit or miss per text.
    #[allow(clippy::type_complexity)]
    pub fn get(
        &mut self,
        text: &str,
        layers: bool,
    ) -> Result<Option<(Vec<f32>, Vec<f32>)>, CacheError> {
        let embedding = self.embeddings.get(text).map(<[f32]>::to_vec);
        let found = match (embedding, layers) {
            (Some(e), false) => Some((e, Vec::new())),
            (Some(e), true) => self.layers()?.get(text).map(|l| (e, l.to_vec())),
            (None, _) => None,
        };
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        Ok(found)
    }

    /// The cache of every layer's pooled states (`hidden × layers` wide records).
    pub fn layers(&mut self) -> Result<&mut EmbeddingCache, CacheError> {
        match &mut self.layers {
            Some(cache) => Ok(cache),
            empty => Ok(empty.insert(EmbeddingCache::open(
                &self.dir,
                &format!("{}-pooled-layers", self.digest),
                self.layers_width,
            )?)),
        }
    }

    /// Texts [`FeatureCache::get`] found, and texts it did not, since opening.
    pub fn hits_and_misses(&self) -> (usize, usize) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening_and_torn_records_are_dropped()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let mut cache = EmbeddingCache::open(dir.path(), "abc", 3)?;
            cache.insert_all(&["a", "b"], &[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]])?;
        }
        // A crash halfway through a record.
        let path = dir.path().join("abc.emb");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        f.write_all(&[7u8; 20])?;
        drop(f);
        let mut cache = EmbeddingCache::open(dir.path(), "abc", 3)?;
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("b"), Some(&[4.0, 5.0, 6.0][..]));
        assert_eq!(cache.get("c"), None);
        assert_eq!(cache.hits_and_misses(), (1, 1));
        cache.insert_all(&["c"], &[vec![0.5, 0.5, 0.5]])?;
        drop(cache);
        let mut cache = EmbeddingCache::open(dir.path(), "abc", 3)?;
        assert_eq!(cache.get("c"), Some(&[0.5, 0.5, 0.5][..]));
        let err = EmbeddingCache::open(dir.path(), "abc", 4)
            .map(|_| ())
            .err()
            .ok_or("opened")?;
        assert!(
            err.to_string().contains("holds 3-wide embeddings, not 4"),
            "{err}"
        );
        Ok(())
    }
}
