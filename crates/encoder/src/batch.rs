//! Length-sorted, token-budget batching.

/// Limits for one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most texts in one batch.
    pub max_batch_size: usize,
    /// Most padded tokens (texts × longest length) in one batch. A single text longer than the
    /// budget still gets a batch of its own.
    pub max_batch_tokens: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 16_384,
        }
    }
}

/// Splits texts with the given token `lengths` into batches: longest first, each batch filled
/// while its padded size (count × longest) stays within the limits. Returns indices into
/// `lengths`; every index appears exactly once.
pub fn plan_batches(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable sort: equal lengths keep input order, so plans are deterministic.
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let max_size = limits.max_batch_size.max(1);
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        // Sorted longest first, so the batch's first text fixes its padded length.
        let padded_len = if current.is_empty() {
            lengths[i]
        } else {
            longest
        };
        let fits =
            current.len() < max_size && (current.len() + 1) * padded_len <= limits.max_batch_tokens;
        if !current.is_empty() && !fits {
            batches.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            longest = lengths[i];
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(lengths: &[usize], limits: BatchLimits) {
        let batches = plan_batches(lengths, limits);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..lengths.len()).collect::<Vec<_>>(),
            "every text exactly once"
        );
        for b in &batches {
            assert!(!b.is_empty());
            assert!(b.len() <= limits.max_batch_size);
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            assert!(
                b.len() == 1 || b.len() * longest <= limits.max_batch_tokens,
                "{b:?} over budget"
            );
            assert!(
                b.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]),
                "sorted longest first"
            );
        }
    }

    #[test]
    fn batches_respect_size_and_token_budget() {
        let lengths: Vec<usize> = (0..500).map(|i| (i * 7919) % 256 + 2).collect();
        check(
            &lengths,
            BatchLimits {
                max_batch_size: 32,
                max_batch_tokens: 2048,
            },
        );
        check(
            &lengths,
            BatchLimits {
                max_batch_size: 1,
                max_batch_tokens: 10,
            },
        );
        check(
            &lengths,
            BatchLimits {
                max_batch_size: 1000,
                max_batch_tokens: 1_000_000,
            },
        );
    }

    #[test]
    fn oversized_text_gets_its_own_batch() {
        let batches = plan_batches(
            &[5, 300, 5],
            BatchLimits {
                max_batch_size: 8,
                max_batch_tokens: 100,
            },
        );
        assert_eq!(batches, vec![vec![1], vec![0, 2]]);
    }

    #[test]
    fn batch_size_limits_before_budget() {
        let batches = plan_batches(
            &[3; 10],
            BatchLimits {
                max_batch_size: 4,
                max_batch_tokens: 1000,
            },
        );
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
    }

    #[test]
    fn empty_input_gives_no_batches() {
        assert!(plan_batches(&[], BatchLimits::default()).is_empty());
    }
}
