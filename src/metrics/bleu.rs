//! fairseq's `--scoring bleu` (`fairseq/scoring/bleu.py` + C `libbleu`): corpus
//! BLEU-4 over dictionary ids of the whitespace tokens, ref `<unk>` never
//! matching, no smoothing; printed as fairseq prints it. See `shared/spec/fairseq.md`.

use std::collections::HashMap;

use crate::data::dict::{EOS, PAD, SPECIALS, UNK};
use crate::data::text::py_split;

/// What libbleu puts in place of a reference `<unk>` so that it never matches.
const REF_UNK: i64 = -999;
const ORDER: usize = 4;

/// Accumulates fairseq BLEU statistics sentence by sentence.
///
/// fairseq-generate maps the (de-BPE'd) reference and hypothesis strings to
/// ids with `tgt_dict.encode_line(s, add_if_not_exist=True)`: known symbols get
/// their dictionary id, new words get fresh ids, EOS is appended. Only the
/// specials' ids matter to the score (n-gram matching does not depend on
/// which id a word gets), so this scorer interns words itself and needs no
/// dictionary.
#[derive(Debug, Clone)]
pub struct BleuScorer {
    vocab: HashMap<String, i64>,
    stats: BleuStats,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BleuStats {
    reflen: u64,
    predlen: u64,
    matches: [u64; ORDER],
    counts: [u64; ORDER],
}

/// A corpus BLEU-4 result, with everything fairseq prints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BleuResult {
    /// BLEU in 0..=100.
    pub score: f64,
    /// Clipped n-gram precisions, in 0..=1 (fairseq prints them ×100).
    pub precisions: [f64; ORDER],
    /// Brevity penalty `min(1, exp(1 - reflen/syslen))` (0 when syslen is 0).
    pub bp: f64,
    /// `syslen / reflen` (0 when reflen is 0).
    pub ratio: f64,
    pub syslen: u64,
    pub reflen: u64,
    /// Matched and total n-grams for n = 1..=4.
    pub matches: [u64; ORDER],
    pub counts: [u64; ORDER],
}

impl Default for BleuScorer {
    fn default() -> Self {
        Self::new()
    }
}

impl BleuScorer {
    pub fn new() -> Self {
        let vocab = SPECIALS
            .iter()
            .enumerate()
            .map(|(id, s)| (s.to_string(), id as i64))
            .collect();
        BleuScorer {
            vocab,
            stats: BleuStats::default(),
        }
    }

    /// Adds one sentence pair given as text (after `--remove-bpe`), as
    /// fairseq-generate does for the first hypothesis of each sentence.
    pub fn add(&mut self, reference: &str, hypothesis: &str) {
        let reference = self.encode(reference);
        let hypothesis = self.encode(hypothesis);
        self.add_encoded(reference, &hypothesis);
    }

    /// Adds one sentence pair given as target-dictionary ids (what fairseq
    /// scores without `--remove-bpe`): leading pads and trailing EOS/pads are
    /// trimmed, a reference [`UNK`] never matches.
    pub fn add_ids(&mut self, reference: &[u32], hypothesis: &[u32]) {
        let reference = reference.iter().map(|&id| id as i64).collect();
        let hypothesis: Vec<i64> = hypothesis.iter().map(|&id| id as i64).collect();
        self.add_encoded(reference, &hypothesis);
    }

    /// `encode_line(s, add_if_not_exist=True)`.
    fn encode(&mut self, s: &str) -> Vec<i64> {
        let mut ids: Vec<i64> = py_split(s)
            .map(|w| {
                let next = self.vocab.len() as i64;
                *self.vocab.entry(w.to_string()).or_insert(next)
            })
            .collect();
        ids.push(EOS as i64);
        ids
    }

    /// fairseq's `Scorer.add` + libbleu's `bleu_add`.
    fn add_encoded(&mut self, mut reference: Vec<i64>, hypothesis: &[i64]) {
        for id in &mut reference {
            if *id == UNK as i64 {
                *id = REF_UNK;
            }
        }
        let reference = libbleu_trim(&reference);
        let hypothesis = libbleu_trim(hypothesis);
        let s = &mut self.stats;
        s.reflen += reference.len() as u64;
        s.predlen += hypothesis.len() as u64;
        for n in 1..=ORDER {
            if hypothesis.len() < n {
                continue;
            }
            s.counts[n - 1] += (hypothesis.len() + 1 - n) as u64;
            let mut available: HashMap<&[i64], u64> = HashMap::new();
            for gram in reference.windows(n) {
                *available.entry(gram).or_default() += 1;
            }
            for gram in hypothesis.windows(n) {
                if let Some(left) = available.get_mut(gram).filter(|left| **left > 0) {
                    *left -= 1;
                    s.matches[n - 1] += 1;
                }
            }
        }
    }

    /// The corpus score so far (fairseq's `score`, `precision`, `brevity`).
    pub fn result(&self) -> BleuResult {
        let s = &self.stats;
        let ratio_of = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        let precisions: [f64; ORDER] = std::array::from_fn(|i| ratio_of(s.matches[i], s.counts[i]));
        let bp = if s.predlen > 0 {
            let r = s.reflen as f64 / s.predlen as f64;
            (1.0 - r).exp().min(1.0)
        } else {
            0.0
        };
        let psum: f64 = precisions
            .iter()
            .map(|&p| if p > 0.0 { p.ln() } else { f64::NEG_INFINITY })
            .sum();
        BleuResult {
            score: bp * (psum / ORDER as f64).exp() * 100.0,
            precisions,
            bp,
            ratio: ratio_of(s.predlen, s.reflen),
            syslen: s.predlen,
            reflen: s.reflen,
            matches: s.matches,
            counts: s.counts,
        }
    }
}

impl BleuResult {
    /// fairseq's `result_string()`, e.g.
    /// `BLEU4 = 92.18, 98.2/93.8/90.5/86.6 (BP=1.000, ratio=1.013, syslen=1753, reflen=1731)`.
    pub fn fairseq_string(&self) -> String {
        let p = self
            .precisions
            .map(|p| format!("{:.1}", p * 100.0))
            .join("/");
        format!(
            "BLEU4 = {:.2}, {p} (BP={:.3}, ratio={:.3}, syslen={}, reflen={})",
            self.score, self.bp, self.ratio, self.syslen, self.reflen
        )
    }
}

/// libbleu's `bleu_trim`: drop leading pads, then trailing EOS/pads, but
/// never the first remaining token (an empty line keeps its EOS).
fn libbleu_trim(ids: &[i64]) -> &[i64] {
    let pad = PAD as i64;
    let eos = EOS as i64;
    let start = ids.iter().take_while(|&&id| id == pad).count();
    let ids = &ids[start..];
    let mut end = ids.len();
    while end > 1 && (ids[end - 1] == eos || ids[end - 1] == pad) {
        end -= 1;
    }
    &ids[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_like_libbleu() {
        assert_eq!(libbleu_trim(&[1, 1, 5, 6, 2, 1]), &[5, 6]);
        assert_eq!(libbleu_trim(&[2]), &[2]);
        assert_eq!(libbleu_trim(&[2, 2]), &[2]);
        assert_eq!(libbleu_trim(&[2, 5, 2]), &[2, 5]);
        assert_eq!(libbleu_trim(&[]), &[] as &[i64]);
    }

    #[test]
    fn perfect_and_empty() {
        let mut s = BleuScorer::new();
        s.add("a b c d e", "a b c d e");
        let r = s.result();
        assert_eq!(r.score, 100.0);
        assert_eq!(
            r.fairseq_string(),
            "BLEU4 = 100.00, 100.0/100.0/100.0/100.0 (BP=1.000, ratio=1.000, syslen=5, reflen=5)"
        );

        // An empty hypothesis still counts one token (its EOS), like libbleu.
        let mut s = BleuScorer::new();
        s.add("a b", "");
        let r = s.result();
        assert_eq!(
            (r.syslen, r.reflen, r.counts, r.matches),
            (1, 2, [1, 0, 0, 0], [0; 4])
        );
        assert_eq!(r.score, 0.0);
    }

    #[test]
    fn unk_never_matches() {
        let mut s = BleuScorer::new();
        s.add("<unk> b", "<unk> b");
        assert_eq!(s.result().matches, [1, 0, 0, 0]);
        let mut s = BleuScorer::new();
        s.add_ids(&[3, 7, 2], &[3, 7, 2]);
        assert_eq!(s.result().matches, [1, 0, 0, 0]);
    }

    #[test]
    fn clipped_counts() {
        let mut s = BleuScorer::new();
        s.add("the cat", "the the the");
        let r = s.result();
        assert_eq!((r.matches, r.counts), ([1, 0, 0, 0], [3, 2, 1, 0]));
    }
}
