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

use super::beam::{BeamOptions, Hypothesis};
use crate::runtime::ModelEngine;
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

/// One shard of a sharded run (fairseq's `--num-shards N --shard-id I`).
///
/// fairseq's rule (`data/iterators.py`, `ShardedIterator`): the batches are
/// cut from the whole test set as an unsharded run cuts them, and shard `I`
/// decodes batches `I, I+N, I+2N, …`. Each sentence is thus decoded in the
/// very batch an unsharded run puts it in, so the shards' hypotheses merged
/// by sentence id equal the unsharded run's, even where the batch matters
/// (`max_len_a ≠ 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub num_shards: usize,
    pub shard_id: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            num_shards: 1,
            shard_id: 0,
        }
    }
}

impl Shard {
    /// Checks `shard_id < num_shards`, as fairseq does.
    pub fn new(num_shards: usize, shard_id: usize) -> Result<Shard> {
        if num_shards == 0 || shard_id >= num_shards {
            bail!("--shard-id must be below --num-shards (got {shard_id} of {num_shards})");
        }
        Ok(Shard {
            num_shards,
            shard_id,
        })
    }

    /// True when batch number `batch` (0-based, counted over the whole run)
    /// belongs to this shard.
    pub fn owns(&self, batch: usize) -> bool {
        batch % self.num_shards == self.shard_id
    }

    /// True when this is more than one shard of a run.
    pub fn is_sharded(&self) -> bool {
        self.num_shards > 1
    }
}

/// Decodes the given batches (indices into `src`, ids ending with EOS) in
/// order; returns `(sentence index, hypotheses)` sorted by index.
/// `on_batch` is called after each batch (progress).
pub fn decode_batches(
    engine: &mut dyn ModelEngine,
    src: &[Vec<i64>],
    batches: &[Vec<usize>],
    opts: &BeamOptions,
    on_batch: &mut OnBatch,
) -> Result<Vec<(usize, Vec<Hypothesis>)>> {
    let mut out = Vec::with_capacity(batches.iter().map(Vec::len).sum());
    for batch in batches {
        let sources: Vec<Vec<i64>> = batch.iter().map(|&i| src[i].clone()).collect();
        let hyps = engine.translate(&sources, opts)?;
        on_batch(batch, &hyps);
        out.extend(batch.iter().copied().zip(hyps));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

/// Decodes every sentence of `src` (ids ending with EOS) in fairseq's
/// batches; returns the hypotheses in input order. `on_batch` is called
/// after each batch with its sentence indices and hypotheses (progress).
pub fn decode_all(
    engine: &mut dyn ModelEngine,
    src: &[Vec<i64>],
    tgt_lens: Option<&[usize]>,
    opts: &BeamOptions,
    batching: &Batching,
    on_batch: &mut OnBatch,
) -> Result<Vec<Vec<Hypothesis>>> {
    let src_lens: Vec<usize> = src.iter().map(Vec::len).collect();
    let batches = plan(&src_lens, tgt_lens, batching)?;
    let out = decode_batches(engine, src, &batches, opts, on_batch)?;
    debug_assert_eq!(out.len(), src.len());
    Ok(out.into_iter().map(|(_, h)| h).collect())
}

/// The batches of a test set that `shard` decodes: [`plan`], then every
/// `num_shards`-th batch from `shard_id` on.
pub fn plan_shard(
    src_lens: &[usize],
    tgt_lens: Option<&[usize]>,
    batching: &Batching,
    shard: Shard,
) -> Result<Vec<Vec<usize>>> {
    Ok(plan(src_lens, tgt_lens, batching)?
        .into_iter()
        .enumerate()
        .filter(|(k, _)| shard.owns(*k))
        .map(|(_, b)| b)
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
