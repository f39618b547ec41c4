//! Measuring that two models compute the same thing: teacher-forced
//! log-probabilities of both on the same probe batch, on the native engine
//! (no ONNX round trip), compared position by position (pads excluded).
//! This is how `fold`, `average --fold` and `export --fold` prove
//! themselves (`shared/spec/fold.md` §4).

use crate::native::{ComputeType, NativeBackend};
use crate::runtime::ModelEngine;
use crate::spec::{Model, EOS, PAD};
use anyhow::Result;
use ndarray::{Array2, Array3};

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

/// Teacher-forced log-probs `[n, T, vocab]` of `probe` on `backend`.
pub fn lprobs(backend: &mut dyn ModelEngine, probe: &Probe) -> Result<Array3<f32>> {
    backend.forced(probe.src_tokens().view(), probe.prev_output_tokens().view())
}

/// Sentence pairs decoded side by side by the check (all of a usual probe
/// set): each step's `[rows, vocab]` log-probs are consumed before the
/// next, so the batch costs its caches, not `[n, T, vocab]`.
const GROUP: usize = 128;

/// Teacher forcing of `probe` on `engine`, one incremental step at a time
/// over up to [`GROUP`] sentences at once: longest target first, and a
/// sentence leaves the batch when its target ends, so no step computes a
/// pad and every weight matrix is read once per step for all sentences.
/// Calls `each(sentence, position, log-probs)` for every real target
/// position, positions of a sentence in order.
fn forced_rows(
    engine: &mut dyn ModelEngine,
    probe: &Probe,
    mut each: impl FnMut(usize, usize, &[f32]),
) -> Result<()> {
    let mut order: Vec<usize> = (0..probe.targets.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(probe.targets[i].len()));
    for group in order.chunks(GROUP) {
        let sub = Probe {
            sources: group.iter().map(|&i| probe.sources[i].clone()).collect(),
            targets: group.iter().map(|&i| probe.targets[i].clone()).collect(),
        };
        let mut session = engine.begin(sub.src_tokens().view())?;
        let live = |t: usize| sub.targets.iter().take_while(|x| x.len() > t).count();
        let mut t = 0;
        while live(t) > 0 {
            let prev: Vec<i64> = sub.targets[..live(t)]
                .iter()
                .map(|x| if t == 0 { EOS as i64 } else { x[t - 1] })
                .collect();
            let lp = session.step(ndarray::ArrayView1::from(&prev))?;
            for (r, row) in lp.rows().into_iter().enumerate() {
                let row = row.to_slice().expect("log-prob rows are contiguous");
                each(group[r], t, row);
            }
            let next: Vec<usize> = (0..live(t + 1)).collect();
            session.reorder(&next, next.len() != prev.len())?;
            t += 1;
        }
    }
    Ok(())
}

/// The log-probs of every real target position of `probe` on `model`, run
/// on the native engine, one `[len · vocab]` vector per sentence.
fn real_lprobs(model: &Model, probe: &Probe, threads: Option<usize>) -> Result<Vec<Vec<f32>>> {
    let mut engine = NativeBackend::new(model, threads)?;
    let mut out: Vec<Vec<f32>> = vec![vec![]; probe.targets.len()];
    forced_rows(&mut engine, probe, |i, _, row| {
        out[i].extend_from_slice(row)
    })?;
    Ok(out)
}

/// Max |Δ log-prob| between two models over the real target positions
/// (NaN counts as infinite). Both run on the native engine, one after the
/// other: the first model's engine is freed before the second is built, so
/// only one engine and the first model's log-probs are held at a time.
pub fn max_lprob_diff(a: &Model, b: &Model, probe: &Probe) -> Result<f32> {
    let kept = reference_lprobs(a, probe)?;
    max_diff_against(kept, b, probe)
}

/// The first half of [`max_lprob_diff`]: `model`'s log-probs over the real
/// target positions of `probe` (its engine is freed on return), so that a
/// caller can drop `model` before building the one it compares it with.
pub fn reference_lprobs(model: &Model, probe: &Probe) -> Result<Vec<Vec<f32>>> {
    real_lprobs(model, probe, None)
}

/// The second half of [`max_lprob_diff`]: max |Δ log-prob| of `model`
/// against `kept` ([`reference_lprobs`] of the same `probe`).
pub fn max_diff_against(kept: Vec<Vec<f32>>, model: &Model, probe: &Probe) -> Result<f32> {
    diff_on(NativeBackend::new(model, None)?, kept, probe)
}

/// As [`max_diff_against`], consuming `model`: its float32 layers are freed
/// as they are packed, so the check holds one copy of the weights.
pub fn max_diff_against_owned(kept: Vec<Vec<f32>>, model: Model, probe: &Probe) -> Result<f32> {
    let engine = NativeBackend::from_model(model, None, ComputeType::Float32)?;
    diff_on(engine, kept, probe)
}

fn diff_on(mut engine: NativeBackend, kept: Vec<Vec<f32>>, probe: &Probe) -> Result<f32> {
    let mut max = 0f32;
    forced_rows(&mut engine, probe, |i, t, row| {
        let want = &kept[i][t * row.len()..(t + 1) * row.len()];
        for (x, y) in want.iter().zip(row) {
            let d = (x - y).abs();
            max = max.max(if d.is_nan() { f32::INFINITY } else { d });
        }
    })?;
    Ok(max)
}

/// The result of [`check_fold`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct FoldCheck {
    pub max_abs_diff: f32,
    pub tolerance: f32,
    pub probe_sentences: usize,
    pub passed: bool,
}

/// The check every folding command runs: original and folded model on the
/// native engine over `probe`, within `tolerance` (`shared/spec/fold.md` §4).
pub fn check_fold(
    original: &Model,
    folded: &Model,
    probe: &Probe,
    tolerance: f32,
) -> Result<FoldCheck> {
    let d = max_lprob_diff(original, folded, probe)?;
    Ok(FoldCheck {
        max_abs_diff: d,
        tolerance,
        probe_sentences: probe.sources.len(),
        passed: d <= tolerance,
    })
}

/// [`check_fold`] on `n` random probe sentence pairs (seed 1), as `fold`
/// does without test data.
pub fn check_fold_random(
    original: &Model,
    folded: &Model,
    n: usize,
    tolerance: f32,
) -> Result<FoldCheck> {
    let c = &original.config;
    let probe = Probe::random(n.max(1), c.src_vocab, c.tgt_vocab, 24, 1);
    check_fold(original, folded, &probe, tolerance)
}
