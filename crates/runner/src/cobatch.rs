//! One encoder pass for several pipelines: every pipeline served by a process sends its batch
//! here, and the batches that queue up while the encoder is busy are merged into one call (the
//! encoder then length-sorts and token-budgets the merged texts). A bounded queue gives
//! backpressure: when it is full, pipelines wait instead of piling up work.

use std::sync::Arc;
use std::sync::mpsc;

use headstream_encoder::{EncodedText, Encoder, EncoderError, States};

/// An encoding function: texts and the states wanted besides embeddings, results in order.
pub type EncodeFn =
    dyn Fn(&[&str], States) -> Result<Vec<EncodedText>, EncoderError> + Send + Sync + 'static;

struct Job {
    texts: Vec<String>,
    states: States,
    reply: mpsc::Sender<Result<Vec<EncodedText>, String>>,
}

/// The shared front of the encoder (see the module docs).
#[derive(Clone)]
pub struct CoBatcher {
    jobs: mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for CoBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoBatcher").finish_non_exhaustive()
    }
}

/// Why a co-batched encode failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoBatchError {
    /// The encoder failed on the merged batch.
    #[error("encoder: {0}")]
    Encoder(String),
    /// The encoder thread is gone.
    #[error("the encoder thread has stopped")]
    Stopped,
}

impl CoBatcher {
    /// Starts the encoder thread for `encoder`, merging up to `max_texts` texts per call and
    /// queueing at most `queue` batches.
    pub fn new(encoder: Arc<Encoder>, max_texts: usize, queue: usize) -> Self {
        Self::with_fn(
            Arc::new(move |texts: &[&str], states: States| encoder.encode_with(texts, states)),
            max_texts,
            queue,
            None,
        )
    }

    /// Like [`CoBatcher::new`] over any encoding function; `on_pass` hears (batches merged,
    /// texts) after every call.
    pub fn with_fn(
        encode: Arc<EncodeFn>,
        max_texts: usize,
        queue: usize,
        on_pass: Option<Box<dyn Fn(usize, usize) + Send>>,
    ) -> Self {
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue.max(1));
        std::thread::Builder::new()
            .name("headstream-encoder".into())
            .spawn(move || run(&rx, &*encode, max_texts.max(1), on_pass.as_deref()))
            .map_err(|e| tracing::error!("cannot start the encoder thread: {e}"))
            .ok();
        Self { jobs }
    }

    /// Encodes `texts` (blocking), possibly in one pass with other pipelines' texts; each
    /// caller gets the `states` it asked for and nothing a merged pass made for another.
    pub fn encode(
        &self,
        texts: Vec<String>,
        states: States,
    ) -> Result<Vec<EncodedText>, CoBatchError> {
        let (reply, answer) = mpsc::channel();
        self.jobs
            .send(Job {
                texts,
                states,
                reply,
            })
            .map_err(|_| CoBatchError::Stopped)?;
        answer
            .recv()
            .map_err(|_| CoBatchError::Stopped)?
            .map_err(CoBatchError::Encoder)
    }
}

fn run(
    rx: &mpsc::Receiver<Job>,
    encode: &EncodeFn,
    max_texts: usize,
    on_pass: Option<&(dyn Fn(usize, usize) + Send)>,
) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut jobs = vec![first];
        let mut total = jobs[0].texts.len();
        while total < max_texts {
            match rx.try_recv() {
                Ok(job) if total + job.texts.len() <= max_texts => {
                    total += job.texts.len();
                    jobs.push(job);
                }
                Ok(job) => {
                    carried = Some(job);
                    break;
                }
                Err(_) => break,
            }
        }
        let states = jobs
            .iter()
            .fold(States::default(), |all, j| all.union(j.states));
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let outcome = encode(&texts, states);
        if let Some(hear) = on_pass {
            hear(jobs.len(), texts.len());
        }
        match outcome {
            Ok(encoded) => {
                let mut encoded = encoded.into_iter();
                for job in jobs {
                    let mut mine: Vec<EncodedText> =
                        encoded.by_ref().take(job.texts.len()).collect();
                    if job.states != states {
                        mine.iter_mut().for_each(|e| job.states.narrow(e));
                    }
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    fn fake(text: &str) -> EncodedText {
        EncodedText {
            embedding: vec![text.len() as f32],
            input_ids: Vec::new(),
            offsets: Vec::new(),
            truncated: false,
            token_states: None,
            layers: Vec::new(),
        }
    }

    #[test]
    fn batches_queued_while_encoding_share_the_next_pass() {
        let passes = Arc::new(Mutex::new(Vec::new()));
        let seen = passes.clone();
        let batcher = CoBatcher::with_fn(
            Arc::new(|texts: &[&str], _| {
                std::thread::sleep(Duration::from_millis(100));
                Ok(texts.iter().map(|t| fake(t)).collect())
            }),
            64,
            8,
            Some(Box::new(move |jobs, texts| {
                if let Ok(mut p) = seen.lock() {
                    p.push((jobs, texts));
                }
            })),
        );
        let first = {
            let b = batcher.clone();
            std::thread::spawn(move || b.encode(vec!["a".into()], States::default()))
        };
        std::thread::sleep(Duration::from_millis(30));
        // Two pipelines submit while the first pass runs.
        let others: Vec<_> = [
            vec!["bb".to_owned(), "ccc".to_owned()],
            vec!["dddd".to_owned()],
        ]
        .into_iter()
        .map(|texts| {
            let b = batcher.clone();
            std::thread::spawn(move || b.encode(texts, States::default()))
        })
        .collect();
        let widths = |r: Result<Vec<EncodedText>, CoBatchError>| -> Vec<f32> {
            r.unwrap_or_default()
                .iter()
                .map(|e| e.embedding[0])
                .collect()
        };
        assert_eq!(
            widths(first.join().unwrap_or(Err(CoBatchError::Stopped))),
            [1.0]
        );
        let answers: Vec<Vec<f32>> = others
            .into_iter()
            .map(|h| widths(h.join().unwrap_or(Err(CoBatchError::Stopped))))
            .collect();
        assert_eq!(answers, [vec![2.0, 3.0], vec![4.0]]);
        let passes = passes.lock().map(|p| p.clone()).unwrap_or_default();
        assert_eq!(
            passes,
            [(1, 1), (2, 3)],
            "the second pass merges both pipelines' batches"
        );
    }

    #[test]
    fn an_encoder_failure_reaches_every_merged_batch() {
        let batcher = CoBatcher::with_fn(
            Arc::new(|_: &[&str], _| Err(EncoderError::Tokenizer("boom".into()))),
            64,
            8,
            None,
        );
        let err = batcher
            .encode(vec!["x".into()], States::default())
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("boom")));
    }
}
