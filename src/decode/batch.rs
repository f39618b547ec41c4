//! Length-grouped batching as fairseq-generate does it, and decoding a
//! whole test set batch by batch with results returned in input order.
//!
//! fairseq orders a test set by source length, ties by target length (two
//! stable sorts, `LanguagePairDataset.ordered_indices` without shuffling),
//! then cuts it with `data_utils.batch_by_size`: a batch is full at
//! `--batch-size` sentences or when `(n + 1) · longest` would exceed
//! `--max-tokens` (lengths with EOS, `max(src, tgt)`), and a full batch is
//! cut to a multiple of `required_batch_size_multiple` (8) when it can be.
//! Without either limit fairseq-generate uses `--max-tokens 12000`.
//!
//! The batches matter for the output only through `max_len` when
//! `max_len_a ≠ 0` (it depends on the batch's widest source).

use super::beam::{beam_search, BeamOptions, Hypothesis};
use crate::runtime::Backend;
use anyhow::{bail, Result};

/// fairseq-generate's `--max-tokens` when neither limit is given.
pub const DEFAULT_MAX_TOKENS: usize = 12000;

/// How to cut a test set into batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batching {
    /// `--batch-size` (`--max-sentences`).
    pub batch_size: Option<usize>,
    /// `--max-tokens`.
    pub max_tokens: Option<usize>,
    /// `--required-batch-size-multiple` (fairseq's default 8).
    pub required_batch_size_multiple: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            batch_size: None,
            max_tokens: None,
            required_batch_size_multiple: 8,
        }
    }
}

/// fairseq's order: indices sorted by source length, ties by target length,
/// ties by index.
pub fn ordered_indices(src_lens: &[usize], tgt_lens: Option<&[usize]>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..src_lens.len()).collect();
    if let Some(t) = tgt_lens {
        idx.sort_by_key(|&i| t[i]);
    }
    idx.sort_by_key(|&i| src_lens[i]);
    idx
}

/// Cuts the test set into batches of sentence indices (into `src_lens`), in
/// the order fairseq-generate decodes them. Lengths include the EOS;
/// `tgt_lens` (when references are known) count towards a sentence's size.
pub fn plan(
    src_lens: &[usize],
    tgt_lens: Option<&[usize]>,
    batching: &Batching,
) -> Result<Vec<Vec<usize>>> {
    if let Some(t) = tgt_lens {
        if t.len() != src_lens.len() {
            bail!("{} sources but {} targets", src_lens.len(), t.len());
        }
    }
    let (max_sentences, max_tokens) = match (batching.batch_size, batching.max_tokens) {
        (None, None) => (usize::MAX, DEFAULT_MAX_TOKENS),
        (b, t) => (b.unwrap_or(usize::MAX), t.unwrap_or(usize::MAX)),
    };
    if max_sentences == 0 || max_tokens == 0 {
        bail!("--batch-size and --max-tokens must be at least 1");
    }
    let mult = batching.required_batch_size_multiple.max(1);
    let size = |i: usize| src_lens[i].max(tgt_lens.map_or(0, |t| t[i]));

    let mut batches = vec![];
    let mut batch: Vec<usize> = vec![];
    let mut sample_lens: Vec<usize> = vec![];
    let mut sample_len = 0;
    for i in ordered_indices(src_lens, tgt_lens) {
        let len = size(i);
        if len > max_tokens {
            bail!("sentence {i} has {len} tokens, more than --max-tokens {max_tokens}");
        }
        sample_lens.push(len);
        sample_len = sample_len.max(len);
        let num_tokens = (batch.len() + 1) * sample_len;
        let full = !batch.is_empty() && (batch.len() == max_sentences || num_tokens > max_tokens);
        if full {
            let mod_len = (mult * (batch.len() / mult)).max(batch.len() % mult);
            let rest = batch.split_off(mod_len);
            batches.push(std::mem::replace(&mut batch, rest));
            sample_lens.drain(..mod_len);
            sample_len = sample_lens.iter().copied().max().unwrap_or(0);
        }
        batch.push(i);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    Ok(batches)
}

/// Progress callback of [`decode_all`]: a batch's sentence indices and hypotheses.
pub type OnBatch<'a> = dyn FnMut(&[usize], &[Vec<Hypothesis>]) + 'a;

/// Decodes every sentence of `src` (ids ending with EOS) in fairseq's
/// batches; returns the hypotheses in input order. `on_batch` is called
/// after each batch with its sentence indices and hypotheses (progress).
pub fn decode_all(
    backend: &mut dyn Backend,
    src: &[Vec<i64>],
    tgt_lens: Option<&[usize]>,
    opts: &BeamOptions,
    batching: &Batching,
    on_batch: &mut OnBatch,
) -> Result<Vec<Vec<Hypothesis>>> {
    let src_lens: Vec<usize> = src.iter().map(Vec::len).collect();
    let mut out: Vec<Option<Vec<Hypothesis>>> = vec![None; src.len()];
    for batch in plan(&src_lens, tgt_lens, batching)? {
        let sources: Vec<Vec<i64>> = batch.iter().map(|&i| src[i].clone()).collect();
        let hyps = beam_search(backend, &sources, opts)?;
        on_batch(&batch, &hyps);
        for (&i, h) in batch.iter().zip(hyps) {
            out[i] = Some(h);
        }
    }
    Ok(out
        .into_iter()
        .map(|h| h.expect("every sentence is in one batch"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_like_fairseq() {
        let src = [5, 3, 5, 2, 3, 9];
        let b = Batching {
            batch_size: Some(2),
            max_tokens: None,
            required_batch_size_multiple: 1,
        };
        assert_eq!(
            plan(&src, None, &b).unwrap(),
            vec![vec![3, 1], vec![4, 0], vec![2, 5]]
        );
        let tgt = [1, 1, 0, 1, 1, 1];
        let order = ordered_indices(&src, Some(&tgt));
        assert_eq!(order, vec![3, 1, 4, 2, 0, 5]);
        // max tokens: (n+1)·longest > 10 closes the batch.
        let b = Batching {
            batch_size: None,
            max_tokens: Some(10),
            required_batch_size_multiple: 1,
        };
        assert_eq!(
            plan(&src, None, &b).unwrap(),
            vec![vec![3, 1, 4], vec![0, 2], vec![5]]
        );
        // required multiple 2: a full batch of 3 is cut to 2.
        let b = Batching {
            batch_size: None,
            max_tokens: Some(10),
            required_batch_size_multiple: 2,
        };
        assert_eq!(
            plan(&src, None, &b).unwrap(),
            vec![vec![3, 1], vec![4, 0], vec![2], vec![5]]
        );
    }
}
