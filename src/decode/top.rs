//! A decoding step's best continuations without its `[rows, vocab]`
//! log-probs: what a [`crate::runtime::Session`] may return instead of the
//! full distribution when the vocabulary is large
//! ([`crate::runtime::Session::step_top`]), and the per-row selection the
//! engine runs while it produces the output projection tile by tile.
//!
//! Beam search needs, per sentence, the `2·beam` best of
//! `cumulative[j] + lprobs[j, v]` over its rows `j` after fairseq's per-step
//! adjustments (which only touch PAD, UNK and EOS, or every token but EOS
//! at `max_len`). So a row returns the log-probs of the tokens the
//! adjustments touch ([`TopRequest::always`]), the `k` best of the others,
//! and a bound: the log-prob of the best token it left out. Beam search
//! ([`super::beam`]) selects on these candidates exactly as on the full
//! rows, and checks that no left-out token could have entered the
//! selection (its bound below the last selected score); when the check
//! fails (near-ties in float32, NaN) it asks for the sentence's full rows
//! ([`crate::runtime::Session::row_lprobs`]) and selects on them, so the
//! output is the same as with the full log-probs, ties included.

/// What beam search asks of a step.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRequest {
    /// Best tokens per row besides `always`.
    pub k: usize,
    /// Tokens whose log-probs every row returns (sorted, distinct).
    pub always: Vec<usize>,
}

/// One step's candidates: per row `width` entries (the `always` tokens
/// first, then the best others, best first).
#[derive(Clone, Debug, Default)]
pub struct TopStep {
    pub width: usize,
    /// `[rows, width]` token ids.
    pub tokens: Vec<u32>,
    /// `[rows, width]` log-probs, the same float32 values the full rows hold.
    pub lprobs: Vec<f32>,
    /// Per row: the largest log-prob among the tokens left out (−∞ when
    /// none is left out; NaN when the row's log-probs are not numbers).
    pub bound: Vec<f32>,
}

impl TopStep {
    pub fn rows(&self) -> usize {
        self.bound.len()
    }

    /// Row `j`'s `(token, log-prob)` entries.
    pub fn row(&self, j: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = j * self.width..(j + 1) * self.width;
        self.tokens[r.clone()]
            .iter()
            .zip(&self.lprobs[r])
            .map(|(&t, &l)| (t as usize, l))
    }
}

/// The `k + 1` largest values of one row seen so far (the last one is the
/// bound of the `k` kept), larger first, equal values by lower index.
#[derive(Clone, Debug, Default)]
pub(crate) struct RowBest {
    keep: usize,
    best: Vec<(f32, u32)>,
}

impl RowBest {
    /// Starts a row that keeps `k` values and their bound.
    pub(crate) fn reset(&mut self, k: usize) {
        self.keep = k + 1;
        self.best.clear();
    }

    /// Offers `value` for token `index` (offered in increasing index
    /// order). NaN is never kept (the caller's normaliser turns the whole
    /// row into NaN then, and the bound says so).
    #[inline]
    pub(crate) fn offer(&mut self, value: f32, index: u32) {
        if self.best.len() == self.keep {
            // Not NaN, and strictly better than the worst kept.
            if value.is_nan() || value <= self.best[self.keep - 1].0 {
                return;
            }
            self.best.pop();
        } else if value.is_nan() {
            return;
        }
        let pos = self.best.partition_point(|b| b.0 >= value);
        self.best.insert(pos, (value, index));
    }

    /// The worst value kept: an offer at or below it changes nothing once
    /// `k + 1` are kept (−∞ before).
    #[inline]
    pub(crate) fn floor(&self) -> f32 {
        if self.best.len() == self.keep {
            self.best[self.keep - 1].0
        } else {
            f32::NEG_INFINITY
        }
    }

    /// The kept values, best first: the first `k` are the row's best, the
    /// `k + 1`-th (if any) bounds every value not kept.
    pub(crate) fn best(&self) -> &[(f32, u32)] {
        &self.best
    }
}

#[cfg(test)]
mod tests {
    use super::RowBest;

    #[test]
    fn keeps_the_best_and_their_bound_ties_by_lower_index() {
        let vals = [1.0, 3.0, 3.0, f32::NAN, 2.0, 3.0, -1.0, 2.0];
        let mut b = RowBest::default();
        b.reset(3);
        for (i, &v) in vals.iter().enumerate() {
            if v > b.floor() {
                b.offer(v, i as u32);
            }
        }
        assert_eq!(b.best(), &[(3.0, 1), (3.0, 2), (3.0, 5), (2.0, 4)]);
    }
}
