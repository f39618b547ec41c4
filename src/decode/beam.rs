//! Batched beam search with the exact semantics of fairseq's
//! `SequenceGenerator` (0.8 and 0.12), as written down in
//! `shared/spec/fairseq.md` § Beam search.
//!
//! One call decodes one batch: the sources are left-padded to the batch's
//! widest source `S` (which fixes `max_len` when `max_len_a ≠ 0`, as in
//! fairseq), encoded once, and the decoder is stepped on `sentences × beam`
//! rows. After every step the self-attention cache is reordered to the
//! chosen beams, and sentences that are done are dropped from the batch so
//! the work shrinks as the batch finishes.
//!
//! Sessions that can ([`crate::runtime::Session::step_top`]: the native
//! engine) return per row only the best candidates, the log-probs of PAD,
//! EOS and UNK and a bound on the rest ([`super::top`]); the selection
//! below runs on those and falls back to the sentence's full rows when the
//! bound cannot rule out a left-out token, so the result is the one the
//! full `[rows, vocab]` log-probs give.
//!
//! Numbers follow fairseq's float32 arithmetic: cumulative scores are
//! float32 sums of the step log-probabilities, a finished hypothesis scores
//! `cumulative / (len)^lenpen` in float32 (the length counts the EOS), and
//! the per-token scores are float32 differences of consecutive cumulative
//! scores.
//!
//! Two places where fairseq leaves the order to `torch.topk` / `torch.sort`:
//! * exactly tied candidate scores are ranked by their index in the
//!   flattened `beam × vocab` scores, lower first (`torch.topk` on CPU
//!   makes no promise; in practice exact ties only happen between `-inf`
//!   candidates);
//! * finished hypotheses with equal scores keep the order in which they
//!   were finalized (a stable sort, as 0.8's `sorted`).
//!
//! Differences that cannot change any output: the first step runs the
//! decoder on one row per sentence instead of `beam` identical rows (fairseq
//! only reads the first beam at step 0), and the encoder output is
//! expanded to the beams after that step.
//!
//! Batching: the search itself treats every sentence independently, so the
//! hypotheses do not depend on how sentences are batched (checked against
//! a plain one-sentence transcription of fairseq in `tests/beam.rs`, and on
//! the fixtures with `--batch-size` 1, 7 and 64). The float32 log-probs a
//! runtime returns for a row may differ in their last bits with the batch
//! (left padding moves the keys to other SIMD lanes, and tract rounds
//! some rows differently by their position in the batch), as fairseq's do;
//! scores then agree to about 1e-7, not bit for bit.

use super::top::{TopRequest, TopStep};
use crate::runtime::{ModelEngine, Session};
use crate::spec::{EOS, PAD, UNK};
use anyhow::{bail, ensure, Result};
use ndarray::{Array1, Array2};

/// fairseq-generate's search options (its defaults in [`Default`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BeamOptions {
    /// `--beam`: hypotheses kept per sentence.
    pub beam: usize,
    /// `--nbest`: finished hypotheses returned per sentence (≤ beam).
    pub nbest: usize,
    /// `--lenpen`: the score of a finished hypothesis is `sum / len^lenpen`.
    pub lenpen: f64,
    /// `--unkpen`: subtracted from the `<unk>` log-probability at every step.
    pub unkpen: f64,
    /// `--max-len-a`, `--max-len-b`: at most `a·S + b` tokens before EOS,
    /// `S` the padded source width of the batch (EOS included). Negative
    /// values are accepted, as by fairseq.
    pub max_len_a: f64,
    pub max_len_b: i64,
    /// `--min-len`: EOS is forbidden before this step (≤ 0: from the start).
    /// Above the batch's `max_len`, fairseq-generate stops with "min_len
    /// cannot be larger than max_len"; so does [`beam_search`], as an error.
    pub min_len: i64,
    /// Divide by `len^lenpen` (`--unnormalized` turns it off).
    pub normalize_scores: bool,
}

impl Default for BeamOptions {
    fn default() -> Self {
        BeamOptions {
            beam: 5,
            nbest: 1,
            lenpen: 1.0,
            unkpen: 0.0,
            max_len_a: 0.0,
            max_len_b: 200,
            min_len: 1,
            normalize_scores: true,
        }
    }
}

/// One finished hypothesis.
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    /// Target token ids, ending with EOS (2).
    pub tokens: Vec<i64>,
    /// Sentence score, natural log; normalized by `len^lenpen` unless
    /// `normalize_scores` is off. float32 like fairseq's.
    pub score: f32,
    /// Log-probability of each token (natural log), EOS included.
    pub positional_scores: Vec<f32>,
}

impl BeamOptions {
    /// Checks the options make sense.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.beam >= 1, "--beam must be at least 1");
        ensure!(
            self.nbest >= 1 && self.nbest <= self.beam,
            "--nbest ({}) must be between 1 and --beam ({})",
            self.nbest,
            self.beam
        );
        ensure!(
            self.lenpen.is_finite() && self.unkpen.is_finite() && self.max_len_a.is_finite(),
            "--lenpen, --unkpen and --max-len-a must be finite numbers"
        );
        Ok(())
    }

    /// fairseq's `max_len` for a batch whose padded source width is `src_width`:
    /// `min(int(a·S + b), max_decoder_positions − 1)` (negative when a or b is).
    /// EOS is forced at step `max_len`.
    pub fn max_len(&self, src_width: usize, max_decoder_positions: Option<usize>) -> i64 {
        // Python's int() truncates toward zero; `as` saturates at the i64 range.
        let len = (self.max_len_a * src_width as f64 + self.max_len_b as f64).trunc() as i64;
        match max_decoder_positions {
            Some(m) => len.min(i64::try_from(m).unwrap_or(i64::MAX) - 1),
            None => len,
        }
    }

    /// [`BeamOptions::max_len`], checked as fairseq-generate checks it: an
    /// error when `--min-len` is above it (fairseq: "min_len cannot be larger
    /// than max_len") or it is negative (fairseq runs no step at all).
    pub fn checked_max_len(
        &self,
        src_width: usize,
        max_decoder_positions: Option<usize>,
    ) -> Result<usize> {
        let max_len = self.max_len(src_width, max_decoder_positions);
        let how = || {
            let limit = max_decoder_positions
                .map(|m| format!(", at most the model's {m} target positions − 1"))
                .unwrap_or_default();
            format!(
                "int(--max-len-a {} × source width {src_width} + --max-len-b {}){limit}",
                self.max_len_a, self.max_len_b
            )
        };
        ensure!(
            self.min_len <= max_len,
            "--min-len {} is larger than the length limit {max_len} = {}; fairseq-generate \
             refuses this too (min_len cannot be larger than max_len)",
            self.min_len,
            how()
        );
        usize::try_from(max_len).map_err(|_| {
            anyhow::anyhow!(
                "the length limit {max_len} = {} is negative: no hypothesis can be made",
                how()
            )
        })
    }
}

/// A live hypothesis: tokens so far (without the leading EOS) and the
/// cumulative score after each of them.
#[derive(Clone, Debug, Default)]
struct Beam {
    tokens: Vec<i64>,
    cumulative: Vec<f32>,
}

struct Sentence {
    /// Position in the caller's batch.
    index: usize,
    beams: Vec<Beam>,
    finalized: Vec<Hypothesis>,
}

/// A candidate continuation: its cumulative score and its index in the
/// flattened `rows × vocab` scores of its sentence.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    score: f32,
    flat: usize,
}

/// The `k` best of the scores pushed, highest first, ties by lower flat
/// index when pushed in increasing flat index order (what `torch.topk`
/// gives in practice, see the module docs).
struct Selector {
    k: usize,
    best: Vec<Candidate>,
}

impl Selector {
    fn new(k: usize) -> Selector {
        Selector {
            k,
            best: Vec::with_capacity(k + 1),
        }
    }

    #[inline]
    fn push(&mut self, score: f32, flat: usize) {
        let k = self.k;
        if k == 0 {
            return;
        }
        // NaN never wins (fairseq 0.12 turns NaN into -inf).
        let score = if score.is_nan() {
            f32::NEG_INFINITY
        } else {
            score
        };
        if self.best.len() == k {
            // Equal scores keep the earlier (lower) index: strictly
            // better only (no NaN here: mapped to -inf above).
            if score <= self.best[k - 1].score {
                return;
            }
            self.best.pop();
        }
        // Insert after every candidate scoring >= this one.
        let pos = self.best.partition_point(|c| c.score >= score);
        self.best.insert(pos, Candidate { score, flat });
    }
}

/// The `k` best of `scores` (flattened `rows × vocab`, `rows[j] + offset[j]`
/// for row `j`), highest score first, ties by lower flat index.
fn top_k(
    lprobs: &Array2<f32>,
    rows: std::ops::Range<usize>,
    offsets: &[f32],
    k: usize,
) -> Vec<Candidate> {
    let vocab = lprobs.ncols();
    let mut sel = Selector::new(k);
    for (j, row) in rows.enumerate() {
        let offset = offsets[j];
        let lp = lprobs.row(row);
        let lp = lp.as_slice().expect("lprobs rows are contiguous");
        for (v, &x) in lp.iter().enumerate() {
            sel.push(x + offset, j * vocab + v);
        }
    }
    sel.best
}

/// Candidates each row returns besides PAD, EOS and UNK (which fairseq's
/// rules adjust): two more than the `2·beam` a sentence keeps, so that
/// near-ties rarely send beam search back to the full rows.
fn top_request(beam: usize) -> TopRequest {
    let mut always = vec![PAD, EOS, UNK];
    always.sort_unstable();
    TopRequest {
        k: 2 * beam + 2,
        always,
    }
}

/// [`adjust`] for one log-prob of token `v`.
fn adjust_one(v: usize, x: f32, step: usize, max_len: usize, opts: &BeamOptions) -> f32 {
    if v == PAD || (step >= max_len && v != EOS) || (v == EOS && (step as i64) < opts.min_len) {
        f32::NEG_INFINITY
    } else if v == UNK && opts.unkpen != 0.0 {
        x - opts.unkpen as f32
    } else {
        x
    }
}

/// [`top_k`] on the candidates a step returned for rows `rows` (a
/// sentence's), after fairseq's adjustments; `None` when a token some row
/// left out could be among the `k` best (beam search then takes the full
/// rows), see [`crate::decode::top`].
#[allow(clippy::too_many_arguments)]
fn top_k_sparse(
    top: &TopStep,
    rows: std::ops::Range<usize>,
    offsets: &[f32],
    k: usize,
    vocab: usize,
    step: usize,
    max_len: usize,
    opts: &BeamOptions,
) -> Option<Vec<Candidate>> {
    let mut sel = Selector::new(k);
    let mut row: Vec<(usize, f32)> = Vec::with_capacity(top.width);
    for (j, r) in rows.clone().enumerate() {
        row.clear();
        row.extend(
            top.row(r)
                .filter(|&(v, _)| v < vocab)
                .map(|(v, x)| (v, adjust_one(v, x, step, max_len, opts))),
        );
        row.sort_unstable_by_key(|e| e.0);
        for &(v, x) in &row {
            sel.push(x + offsets[j], j * vocab + v);
        }
    }
    let cands = sel.best;
    if step >= max_len {
        // Every left-out token is -inf and the sentence ends here: only
        // EOS candidates (all returned) matter.
        return Some(cands);
    }
    let last = cands.get(k.checked_sub(1)?)?.score;
    // A left-out token scores at most bound + offset (float addition is
    // monotonic); strictly below the last selected it cannot enter.
    let safe = rows
        .enumerate()
        .all(|(j, r)| top.bound[r] + offsets[j] < last);
    safe.then_some(cands)
}

/// Applies fairseq's per-step rules to the log-probabilities.
fn adjust(lprobs: &mut Array2<f32>, step: usize, max_len: usize, opts: &BeamOptions) {
    let (pad, unk, eos) = (PAD, UNK, EOS);
    let unkpen = opts.unkpen as f32;
    let vocab = lprobs.ncols();
    for mut row in lprobs.rows_mut() {
        if pad < vocab {
            row[pad] = f32::NEG_INFINITY;
        }
        if unk < vocab && opts.unkpen != 0.0 {
            row[unk] -= unkpen;
        }
        if step >= max_len {
            for (v, x) in row.iter_mut().enumerate() {
                if v != eos {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        // Also at step max_len: fairseq masks EOS there too, which is why it
        // refuses min_len > max_len up front (see `checked_max_len`).
        if (step as i64) < opts.min_len && eos < vocab {
            row[eos] = f32::NEG_INFINITY;
        }
    }
}

/// Rows `rows` of the last step's full log-probs, `[rows, vocab]`.
fn full_rows(
    session: &mut dyn Session,
    rows: std::ops::Range<usize>,
    vocab: usize,
) -> Result<Array2<f32>> {
    let n = rows.len();
    let mut out = Vec::with_capacity(n * vocab);
    for r in rows {
        let row = session.row_lprobs(r)?;
        ensure!(row.len() == vocab, "internal error: row of {}", row.len());
        out.extend_from_slice(&row);
    }
    Ok(Array2::from_shape_vec((n, vocab), out)?)
}

/// Beam search over one batch. `src[i]` are source token ids ending with
/// EOS; returns for each sentence its `nbest` best finished hypotheses,
/// best first.
pub fn beam_search<E: ModelEngine + ?Sized>(
    backend: &mut E,
    src: &[Vec<i64>],
    opts: &BeamOptions,
) -> Result<Vec<Vec<Hypothesis>>> {
    opts.validate()?;
    if src.is_empty() {
        return Ok(vec![]);
    }
    let beam = opts.beam;
    let width = src.iter().map(Vec::len).max().unwrap_or(0);
    ensure!(width > 0, "an empty source (every source ends with EOS)");
    let bsz = src.len();
    let mut tokens = Array2::from_elem((bsz, width), PAD as i64);
    for (i, s) in src.iter().enumerate() {
        ensure!(
            !s.is_empty(),
            "source {i} is empty (every source ends with EOS)"
        );
        for (j, &t) in s.iter().enumerate() {
            tokens[[i, width - s.len() + j]] = t;
        }
    }
    let info = *backend.info();
    let max_len = opts.checked_max_len(width, info.max_target_positions)?;

    let vocab = info.tgt_vocab;
    ensure!(
        vocab > EOS,
        "the target vocabulary has only {vocab} entries"
    );
    let request = top_request(beam);
    // Per-row candidates when they leave some tokens out.
    let use_top = vocab > request.always.len() + request.k;
    let mut session = backend.begin(tokens.view())?;
    let mut sentences: Vec<Sentence> = (0..bsz)
        .map(|index| Sentence {
            index,
            beams: vec![Beam::default()],
            finalized: Vec::with_capacity(beam),
        })
        .collect();
    let mut prev: Array1<i64> = Array1::from_elem(bsz, EOS as i64);
    let mut done: Vec<Option<Vec<Hypothesis>>> = vec![None; bsz];

    for step in 0..=max_len {
        // Rows per sentence in this step's decoder batch: 1 at step 0.
        let per = if step == 0 { 1 } else { beam };
        let rows_now = sentences.len() * per;
        let mut step_out = if use_top {
            session.step_top(prev.view(), &request)?
        } else {
            None
        };
        let mut dense = match step_out {
            Some(_) => None,
            None => Some(session.step(prev.view())?),
        };
        if let Some(top) = &step_out {
            ensure!(
                top.rows() == rows_now,
                "the decoder returned {} rows for {rows_now} hypotheses",
                top.rows()
            );
        }
        if let Some(lprobs) = &mut dense {
            ensure!(
                lprobs.nrows() == rows_now,
                "the decoder returned {} rows for {rows_now} hypotheses",
                lprobs.nrows()
            );
            ensure!(
                lprobs.ncols() == vocab,
                "the decoder returned {} log-probs per row for a vocabulary of {vocab}",
                lprobs.ncols()
            );
            adjust(lprobs, step, max_len, opts);
        }
        // fairseq: k = min(2·beam, rows·vocab − 1), "-1 so we never select pad".
        let k = (2 * beam).min(per * vocab - 1);
        let length_norm = if opts.normalize_scores {
            (((step + 1) as f64).powf(opts.lenpen)) as f32
        } else {
            1.0
        };

        // Per sentence: candidates, finalize EOS within the top `beam`.
        let mut next: Vec<(usize, Vec<Candidate>)> = Vec::with_capacity(sentences.len());
        for (si, sent) in sentences.iter_mut().enumerate() {
            let offsets: Vec<f32> = sent
                .beams
                .iter()
                .map(|b| b.cumulative.last().copied().unwrap_or(0.0))
                .collect();
            debug_assert_eq!(offsets.len(), per);
            let rows = si * per..(si + 1) * per;
            let cands = match (&dense, &mut step_out) {
                (Some(lprobs), _) => top_k(lprobs, rows, &offsets, k),
                (None, Some(top)) => {
                    match top_k_sparse(top, rows.clone(), &offsets, k, vocab, step, max_len, opts) {
                        Some(c) => c,
                        None => {
                            let mut full = full_rows(session.as_mut(), rows, vocab)?;
                            adjust(&mut full, step, max_len, opts);
                            top_k(&full, 0..per, &offsets, k)
                        }
                    }
                }
                (None, None) => unreachable!("one of the two step outputs"),
            };
            let is_eos = |c: &Candidate| c.flat % vocab == EOS && c.score != f32::NEG_INFINITY;
            for c in cands.iter().take(beam) {
                if !is_eos(c) || sent.finalized.len() >= beam {
                    continue;
                }
                let parent = &sent.beams[c.flat / vocab];
                let mut toks = parent.tokens.clone();
                toks.push(EOS as i64);
                let mut cum = parent.cumulative.clone();
                cum.push(c.score);
                let mut positional = Vec::with_capacity(cum.len());
                for (i, &s) in cum.iter().enumerate() {
                    positional.push(if i == 0 { s } else { s - cum[i - 1] });
                }
                let score = if opts.normalize_scores {
                    c.score / length_norm
                } else {
                    c.score
                };
                sent.finalized.push(Hypothesis {
                    tokens: toks,
                    score,
                    positional_scores: positional,
                });
            }
            // fairseq's is_finished: `beam` hypotheses, or the step at
            // max_len, where every live beam was forced to EOS (at step 0 that
            // is one hypothesis: the single row's EOS).
            if sent.finalized.len() >= beam || step >= max_len {
                let mut hyps = std::mem::take(&mut sent.finalized);
                // Stable: equal scores keep finalization order.
                hyps.sort_by(|a, b| b.score.total_cmp(&a.score));
                hyps.truncate(opts.nbest);
                done[sent.index] = Some(hyps);
            } else {
                let active: Vec<Candidate> = cands
                    .iter()
                    .filter(|c| !is_eos(c))
                    .take(beam)
                    .copied()
                    .collect();
                if active.len() < beam {
                    bail!(
                        "beam {beam} is too wide for a target vocabulary of {vocab} (step {step})"
                    );
                }
                next.push((si, active));
            }
        }
        if next.is_empty() {
            break;
        }
        ensure!(
            step < max_len,
            "internal error: hypotheses still open after max_len"
        );

        // New beams, the decoder rows they continue and their last tokens.
        let dropped = next.len() < sentences.len();
        let mut rows = Vec::with_capacity(next.len() * beam);
        let mut prev_tokens = Vec::with_capacity(next.len() * beam);
        let mut old: Vec<Option<Sentence>> = std::mem::take(&mut sentences)
            .into_iter()
            .map(Some)
            .collect();
        for (si, active) in next {
            let mut sent = old[si].take().expect("each sentence once");
            sent.beams = active
                .iter()
                .map(|c| {
                    let j = c.flat / vocab;
                    let token = (c.flat % vocab) as i64;
                    rows.push(si * per + j);
                    prev_tokens.push(token);
                    let mut b = sent.beams[j].clone();
                    b.tokens.push(token);
                    b.cumulative.push(c.score);
                    b
                })
                .collect();
            sentences.push(sent);
        }
        // Sentences change at step 0 (expanded to their beams) and when
        // finished ones leave the batch.
        session.reorder(&rows, step == 0 || dropped)?;
        prev = Array1::from(prev_tokens);
    }
    done.into_iter()
        .enumerate()
        .map(|(i, d)| {
            d.ok_or_else(|| anyhow::anyhow!("internal error: sentence {i} never finished"))
        })
        .collect()
}
