//! sacreBLEU corpus BLEU as sacreBLEU [`SACREBLEU_VERSION`] computes it: by
//! default 13a tokenization, exp smoothing, mixed case, one reference; the
//! `13a` tokenizer is a hand port of `tokenizer_13a.py`. See `shared/spec/fairseq.md`.

use std::collections::HashMap;

use crate::data::text::{py_rstrip, py_split};

/// The sacreBLEU release whose behaviour (scores, formatting, signature) this
/// module reproduces; it is the `version:` field of the signature.
pub const SACREBLEU_VERSION: &str = "2.6.0";

const ORDER: usize = 4;

/// sacreBLEU's `--tokenize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tokenizer {
    /// `13a`: mteval-v13a's tokenization (the default).
    #[default]
    V13a,
    /// `none`: split on whitespace only.
    None,
}

impl Tokenizer {
    /// The name used in the signature.
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::V13a => "13a",
            Tokenizer::None => "none",
        }
    }

    pub fn tokenize(self, line: &str) -> String {
        match self {
            Tokenizer::V13a => tokenize_13a(line),
            Tokenizer::None => line.to_string(),
        }
    }
}

/// sacreBLEU's `--smooth-method` (with `--smooth-value` for floor and add-k).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Smooth {
    /// `exp`: NIST geometric smoothing of zero counts (the default).
    #[default]
    Exp,
    None,
    /// `floor` with its value (sacreBLEU's default is 0.1).
    Floor(f64),
    /// `add-k` with its value (sacreBLEU's default is 1).
    AddK(f64),
}

/// The settings that change a sacreBLEU score. `Default` is sacreBLEU's default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SacreBleuConfig {
    pub lowercase: bool,
    pub tokenizer: Tokenizer,
    pub smooth: Smooth,
}

impl SacreBleuConfig {
    /// The reproducibility signature, e.g.
    /// `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    pub fn signature(&self) -> String {
        let smooth = match self.smooth {
            Smooth::Exp => "exp".to_string(),
            Smooth::None => "none".to_string(),
            Smooth::Floor(v) => format!("floor[{v:.2}]"),
            Smooth::AddK(v) => format!("add-k[{v:.2}]"),
        };
        format!(
            "nrefs:1|case:{}|eff:no|tok:{}|smooth:{smooth}|version:{SACREBLEU_VERSION}",
            if self.lowercase { "lc" } else { "mixed" },
            self.tokenizer.name()
        )
    }
}

/// Accumulates sacreBLEU statistics segment by segment (one reference each).
#[derive(Debug, Clone, Default)]
pub struct SacreBleu {
    config: SacreBleuConfig,
    sys_len: u64,
    ref_len: u64,
    correct: [u64; ORDER],
    total: [u64; ORDER],
}

/// A corpus sacreBLEU score with what sacreBLEU prints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SacreBleuScore {
    /// BLEU in 0..=100.
    pub score: f64,
    /// Matched and total n-grams (after add-k smoothing, if any).
    pub counts: [f64; ORDER],
    pub totals: [f64; ORDER],
    /// Smoothed n-gram precisions, in 0..=100.
    pub precisions: [f64; ORDER],
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
    /// `sys_len / ref_len` (0 when ref_len is 0).
    pub ratio: f64,
}

impl SacreBleu {
    /// sacreBLEU's default settings.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_config(config: SacreBleuConfig) -> Self {
        SacreBleu {
            config,
            ..Self::default()
        }
    }

    pub fn config(&self) -> &SacreBleuConfig {
        &self.config
    }

    /// See [`SacreBleuConfig::signature`].
    pub fn signature(&self) -> String {
        self.config.signature()
    }

    /// Adds one segment: the (detokenized) reference and hypothesis.
    pub fn add(&mut self, reference: &str, hypothesis: &str) {
        let reference = self.preprocess(reference);
        let hypothesis = self.preprocess(hypothesis);
        let ref_tokens: Vec<&str> = py_split(&reference).collect();
        let hyp_tokens: Vec<&str> = py_split(&hypothesis).collect();
        self.sys_len += hyp_tokens.len() as u64;
        self.ref_len += ref_tokens.len() as u64;
        for n in 1..=ORDER {
            let mut ref_counts: HashMap<&[&str], u64> = HashMap::new();
            for gram in ref_tokens.windows(n) {
                *ref_counts.entry(gram).or_default() += 1;
            }
            let mut hyp_counts: HashMap<&[&str], u64> = HashMap::new();
            for gram in hyp_tokens.windows(n) {
                *hyp_counts.entry(gram).or_default() += 1;
            }
            for (gram, count) in hyp_counts {
                self.total[n - 1] += count;
                self.correct[n - 1] += count.min(ref_counts.get(gram).copied().unwrap_or(0));
            }
        }
    }

    /// `_preprocess_segment`: lowercase (optionally), right-strip, tokenize.
    fn preprocess(&self, sentence: &str) -> String {
        let sentence = if self.config.lowercase {
            sentence.to_lowercase()
        } else {
            sentence.to_string()
        };
        self.config.tokenizer.tokenize(py_rstrip(&sentence))
    }

    /// sacreBLEU's `compute_bleu` on the statistics so far.
    pub fn result(&self) -> SacreBleuScore {
        let mut correct = self.correct.map(|c| c as f64);
        let mut total = self.total.map(|t| t as f64);
        let (sys_len, ref_len) = (self.sys_len, self.ref_len);
        let bp = if sys_len < ref_len {
            if sys_len > 0 {
                (1.0 - ref_len as f64 / sys_len as f64).exp()
            } else {
                0.0
            }
        } else {
            1.0
        };
        let mut precisions = [0.0; ORDER];
        let make = |score, correct, total, precisions| SacreBleuScore {
            score,
            counts: correct,
            totals: total,
            precisions,
            bp,
            sys_len,
            ref_len,
            ratio: if ref_len > 0 {
                sys_len as f64 / ref_len as f64
            } else {
                0.0
            },
        };
        // Early stop if there are no matches (sacreBLEU #141).
        if correct.iter().all(|&c| c == 0.0) {
            return make(0.0, correct, total, precisions);
        }
        let mut smooth_mteval = 1.0;
        for n in 0..ORDER {
            if let Smooth::AddK(k) = self.config.smooth {
                if n > 0 {
                    correct[n] += k;
                    total[n] += k;
                }
            }
            if total[n] == 0.0 {
                break;
            }
            if correct[n] == 0.0 {
                match self.config.smooth {
                    Smooth::Exp => {
                        smooth_mteval *= 2.0;
                        precisions[n] = 100.0 / (smooth_mteval * total[n]);
                    }
                    Smooth::Floor(v) => precisions[n] = 100.0 * v / total[n],
                    Smooth::None | Smooth::AddK(_) => {}
                }
            } else {
                precisions[n] = 100.0 * correct[n] / total[n];
            }
        }
        let log_sum: f64 = precisions.iter().map(|&p| my_log(p)).sum();
        make(
            bp * (log_sum / ORDER as f64).exp(),
            correct,
            total,
            precisions,
        )
    }
}

/// sacreBLEU's `my_log`: log, floored at -9999999999 for 0.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

impl SacreBleuScore {
    /// sacreBLEU's `format()`, e.g.
    /// `BLEU = 98.80 99.8/99.2/98.7/98.1 (BP = 0.998 ratio = 0.998 hyp_len = 1728 ref_len = 1731)`.
    pub fn format(&self) -> String {
        let p = self.precisions.map(|p| format!("{p:.1}")).join("/");
        format!(
            "BLEU = {:.2} {p} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score, self.bp, self.ratio, self.sys_len, self.ref_len
        )
    }

    /// `format(signature=...)`, as the sacrebleu command prints it:
    /// `BLEU|nrefs:1|…|version:2.6.0 = 98.80 …`.
    pub fn format_with_signature(&self, signature: &str) -> String {
        let plain = self.format();
        let rest = plain.strip_prefix("BLEU").unwrap_or(&plain);
        format!("BLEU|{signature}{rest}")
    }
}

/// sacreBLEU's `Tokenizer13a` (mteval-v13a): drop `<skipped>`, join `-\n`,
/// `\n` → space, unescape `&quot; &amp; &lt; &gt;`, then split off
/// punctuation, periods and commas not next to digits, and dashes after digits.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let line: Vec<char> = format!(" {line} ").chars().collect();

    // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) → " \1 "
    let mut spaced = Vec::with_capacity(line.len() * 2);
    for c in line {
        if is_13a_punct(c) {
            spaced.extend([' ', c, ' ']);
        } else {
            spaced.push(c);
        }
    }
    let is_digit = |c: char| c.is_ascii_digit();
    let is_period_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) → "\1 \2 "
    let s = sub_pairs(
        &spaced,
        |a| !is_digit(a),
        is_period_comma,
        |a, b| [a, ' ', b, ' '].to_vec(),
    );
    // ([\.,])([^0-9]) → " \1 \2"
    let s = sub_pairs(
        &s,
        is_period_comma,
        |b| !is_digit(b),
        |a, b| [' ', a, ' ', b].to_vec(),
    );
    // ([0-9])(-) → "\1 \2 "
    let s = sub_pairs(&s, is_digit, |b| b == '-', |a, b| [a, ' ', b, ' '].to_vec());

    let s: String = s.into_iter().collect();
    py_split(&s).collect::<Vec<_>>().join(" ")
}

/// The first 13a class: `{|}~`, `[\]^_` and a backtick, space to `&`,
/// `(` to `+`, `:` to `@`, and `/`.
fn is_13a_punct(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Python's `re.sub` for a two-character pattern `(A)(B)`: leftmost,
/// non-overlapping matches, scanning on after each match.
fn sub_pairs(
    s: &[char],
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    replace: impl Fn(char, char) -> Vec<char>,
) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + s.len() / 2);
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && first(s[i]) && second(s[i + 1]) {
            out.extend(replace(s[i], s[i + 1]));
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}
