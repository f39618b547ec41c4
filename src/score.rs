//! Teacher-forced scoring, like `fairseq-generate --score-reference`: the
//! log-probability of every reference token (EOS included) given the source
//! and the reference prefix, and the sentence score `sum / length`
//! (natural log). Sentences are scored in length-sorted batches; results
//! come back in input order.

use crate::decode::Shard;
use crate::runtime::Backend;
use crate::spec::{EOS, PAD};
use anyhow::{ensure, Result};
use ndarray::Array2;

/// One scored sentence.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Scored {
    /// `sum(positional) / len`, natural log.
    pub score: f64,
    /// Per-token log-probabilities (natural log), EOS last.
    pub positional: Vec<f32>,
}

/// Score `targets` given `sources` (token ids, each ending with EOS) in
/// batches of at most `batch_size` sentences.
pub fn score(
    backend: &mut dyn Backend,
    sources: &[Vec<i64>],
    targets: &[Vec<i64>],
    batch_size: usize,
) -> Result<Vec<Scored>> {
    let all = score_shard(backend, sources, targets, batch_size, Shard::default())?;
    Ok(all.into_iter().map(|(_, s)| s).collect())
}

/// [`score`] of one shard: the same batches, of which `shard` scores every
/// `num_shards`-th (fairseq's rule, [`Shard`]); `(sentence index, scores)`
/// in input order.
pub fn score_shard(
    backend: &mut dyn Backend,
    sources: &[Vec<i64>],
    targets: &[Vec<i64>],
    batch_size: usize,
    shard: Shard,
) -> Result<Vec<(usize, Scored)>> {
    ensure!(
        sources.len() == targets.len(),
        "{} sources but {} references",
        sources.len(),
        targets.len()
    );
    let mut order: Vec<usize> = (0..sources.len()).collect();
    // Like fairseq: batches of similar source length (stable for ties).
    order.sort_by_key(|&i| (sources[i].len(), targets[i].len()));
    let mut out: Vec<Option<Scored>> = vec![None; sources.len()];
    for (k, chunk) in order.chunks(batch_size.max(1)).enumerate() {
        if !shard.owns(k) {
            continue;
        }
        let sw = chunk.iter().map(|&i| sources[i].len()).max().unwrap_or(1);
        let tw = chunk.iter().map(|&i| targets[i].len()).max().unwrap_or(1);
        let mut src = Array2::from_elem((chunk.len(), sw), PAD as i64);
        let mut prev = Array2::from_elem((chunk.len(), tw), PAD as i64);
        for (r, &i) in chunk.iter().enumerate() {
            let s = &sources[i];
            for (j, &t) in s.iter().enumerate() {
                src[[r, sw - s.len() + j]] = t;
            }
            let t = &targets[i];
            ensure!(
                t.last() == Some(&(EOS as i64)),
                "reference {i} does not end with EOS"
            );
            prev[[r, 0]] = EOS as i64;
            for (j, &x) in t.iter().take(t.len() - 1).enumerate() {
                prev[[r, j + 1]] = x;
            }
        }
        let lp = backend.forced(src.view(), prev.view())?;
        for (r, &i) in chunk.iter().enumerate() {
            let t = &targets[i];
            let positional: Vec<f32> = t
                .iter()
                .enumerate()
                .map(|(j, &tok)| lp[[r, j, tok as usize]])
                .collect();
            let sum: f64 = positional.iter().map(|&x| x as f64).sum();
            out[i] = Some(Scored {
                score: sum / t.len() as f64,
                positional,
            });
        }
    }
    Ok(out
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s?)))
        .collect())
}
