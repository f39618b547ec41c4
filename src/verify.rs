//! Measuring that two models compute the same thing: teacher-forced
//! log-probabilities of both on the same probe batch, through the exported
//! graphs on tract, compared position by position (pads excluded). This is
//! how `fold` proves itself (`shared/spec/fold.md` §4).

use crate::export::{self, ExportOptions, Precision};
use crate::runtime::tract::TractBackend;
use crate::runtime::{Backend, GraphSource};
use crate::spec::{Model, EOS, PAD};
use anyhow::Result;
use ndarray::{Array2, Array3};
use std::sync::Arc;

/// Source and target sentences as token ids (each ending in EOS).
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub sources: Vec<Vec<i64>>,
    pub targets: Vec<Vec<i64>>,
}

impl Probe {
    /// `n` random sentence pairs of 3..=max_len tokens from ids 4..vocab,
    /// deterministic in `seed`.
    pub fn random(
        n: usize,
        src_vocab: usize,
        tgt_vocab: usize,
        max_len: usize,
        seed: u64,
    ) -> Probe {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |m: usize| -> usize {
            // xorshift64*: small, deterministic, good enough for probes
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % m.max(1)
        };
        let mut sent = |vocab: usize| -> Vec<i64> {
            let len = 3 + next(max_len.saturating_sub(2).max(1));
            let mut v: Vec<i64> = (0..len - 1)
                .map(|_| (4 + next(vocab.saturating_sub(4).max(1))) as i64)
                .collect();
            v.push(EOS as i64);
            v
        };
        let mut p = Probe::default();
        for _ in 0..n {
            p.sources.push(sent(src_vocab));
            p.targets.push(sent(tgt_vocab));
        }
        p
    }

    /// Left-padded sources `[n, S]`.
    pub fn src_tokens(&self) -> Array2<i64> {
        let w = self.sources.iter().map(Vec::len).max().unwrap_or(1);
        let mut a = Array2::from_elem((self.sources.len(), w), PAD as i64);
        for (i, s) in self.sources.iter().enumerate() {
            for (j, &t) in s.iter().enumerate() {
                a[[i, w - s.len() + j]] = t;
            }
        }
        a
    }

    /// Right-padded decoder inputs `[n, T]`: EOS then the target without its EOS.
    pub fn prev_output_tokens(&self) -> Array2<i64> {
        let w = self.targets.iter().map(Vec::len).max().unwrap_or(1);
        let mut a = Array2::from_elem((self.targets.len(), w), PAD as i64);
        for (i, t) in self.targets.iter().enumerate() {
            a[[i, 0]] = EOS as i64;
            for (j, &x) in t.iter().take(t.len().saturating_sub(1)).enumerate() {
                a[[i, j + 1]] = x;
            }
        }
        a
    }
}

/// A tract backend running `model`'s fp32 graphs, exported in memory.
pub fn backend(model: &Model) -> Result<TractBackend> {
    let graphs = export::export(model, Precision::Fp32, &ExportOptions::default())?;
    TractBackend::new(GraphSource::Memory(Arc::new(graphs)))
}

/// Teacher-forced log-probs `[n, T, vocab]` of `probe` on `backend`.
pub fn lprobs(backend: &mut dyn Backend, probe: &Probe) -> Result<Array3<f32>> {
    let enc = backend.encode(probe.src_tokens().view())?;
    backend.teacher_forced(&enc, probe.prev_output_tokens().view())
}

/// Max |Δ log-prob| between two models over the real target positions,
/// in batches of 32 sentence pairs.
pub fn max_lprob_diff(a: &Model, b: &Model, probe: &Probe) -> Result<f32> {
    let (mut ba, mut bb) = (backend(a)?, backend(b)?);
    let mut max = 0f32;
    for (s, t) in probe.sources.chunks(32).zip(probe.targets.chunks(32)) {
        let chunk = Probe {
            sources: s.to_vec(),
            targets: t.to_vec(),
        };
        let la = lprobs(&mut ba, &chunk)?;
        let lb = lprobs(&mut bb, &chunk)?;
        for (i, t) in chunk.targets.iter().enumerate() {
            for j in 0..t.len() {
                for (x, y) in la
                    .slice(ndarray::s![i, j, ..])
                    .iter()
                    .zip(lb.slice(ndarray::s![i, j, ..]).iter())
                {
                    let d = (x - y).abs();
                    max = max.max(if d.is_nan() { f32::INFINITY } else { d });
                }
            }
        }
    }
    Ok(max)
}
