//! Teacher-forced scoring, like `fairseq-generate --score-reference`: the
//! log-probability of every reference token (EOS included) given the source
//! and the reference prefix, and the sentence score `sum / length`
//! (natural log). Sentences are scored in length-sorted batches, each by
//! [`ModelEngine::score`] ([`score_batch`]); results come back in input order.

use crate::decode::Shard;
use crate::runtime::ModelEngine;
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
    backend: &mut dyn ModelEngine,
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
    backend: &mut dyn ModelEngine,
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
    for (i, t) in targets.iter().enumerate() {
        ensure!(
            t.last() == Some(&(EOS as i64)),
            "reference {i} does not end with EOS"
        );
    }
    let mut order: Vec<usize> = (0..sources.len()).collect();
    // Like fairseq: batches of similar source length (stable for ties).
    order.sort_by_key(|&i| (sources[i].len(), targets[i].len()));
    let mut out: Vec<Option<Scored>> = vec![None; sources.len()];
    for (k, chunk) in order.chunks(batch_size.max(1)).enumerate() {
        if !shard.owns(k) {
            continue;
        }
        let src: Vec<Vec<i64>> = chunk.iter().map(|&i| sources[i].clone()).collect();
        let tgt: Vec<Vec<i64>> = chunk.iter().map(|&i| targets[i].clone()).collect();
        let scored = backend.score(&src, &tgt)?;
        for (&i, s) in chunk.iter().zip(scored) {
            out[i] = Some(s);
        }
    }
    Ok(out
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s?)))
        .collect())
}

/// Scores one batch on `engine` (what [`ModelEngine::score`] does):
/// sources left-padded, decoder inputs `EOS` + reference, one teacher-forced
/// run; results in batch order.
pub fn score_batch<E: ModelEngine + ?Sized>(
    engine: &mut E,
    sources: &[Vec<i64>],
    targets: &[Vec<i64>],
) -> Result<Vec<Scored>> {
    ensure!(
        sources.len() == targets.len(),
        "{} sources but {} references",
        sources.len(),
        targets.len()
    );
    if sources.is_empty() {
        return Ok(vec![]);
    }
    let n = sources.len();
    let sw = sources.iter().map(Vec::len).max().unwrap_or(1);
    let tw = targets.iter().map(Vec::len).max().unwrap_or(1);
    let mut src = Array2::from_elem((n, sw), PAD as i64);
    let mut prev = Array2::from_elem((n, tw), PAD as i64);
    for (r, (s, t)) in sources.iter().zip(targets).enumerate() {
        for (j, &x) in s.iter().enumerate() {
            src[[r, sw - s.len() + j]] = x;
        }
        ensure!(
            t.last() == Some(&(EOS as i64)),
            "reference {r} of the batch does not end with EOS"
        );
        prev[[r, 0]] = EOS as i64;
        for (j, &x) in t.iter().take(t.len() - 1).enumerate() {
            prev[[r, j + 1]] = x;
        }
    }
    let lp = engine.forced(src.view(), prev.view())?;
    Ok(targets
        .iter()
        .enumerate()
        .map(|(r, t)| {
            let positional: Vec<f32> = t
                .iter()
                .enumerate()
                .map(|(j, &tok)| lp[[r, j, tok as usize]])
                .collect();
            let sum: f64 = positional.iter().map(|&x| x as f64).sum();
            Scored {
                score: sum / t.len() as f64,
                positional,
            }
        })
        .collect())
}
