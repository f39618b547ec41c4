//! Python-compatible text helpers and fairseq's `--remove-bpe` / `--post-process`.
//! Whitespace follows Python's `str.isspace` (what `split()` and `strip()` use),
//! so results match fairseq byte for byte; see `shared/spec/fairseq.md`.

use std::fmt;
use std::str::FromStr;

/// Python's `str.isspace`: Unicode White_Space plus the separators
/// U+001C..U+001F, which Rust's `char::is_whitespace` does not include.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()` (no argument): split on runs of whitespace, no empty pieces.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// How subword units are joined back into words: the values of fairseq's
/// `--remove-bpe` (0.8) / `--post-process` (0.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpeMode {
    /// `subword_nmt` or `@@ ` (the default of a bare `--remove-bpe`):
    /// `(s + " ").replace("@@ ", "").rstrip()`.
    SubwordNmt,
    /// `@@`: like [`BpeMode::SubwordNmt`] but removes `@@` without the space.
    SubwordNmtNoSpace,
    /// `sentencepiece`: drop spaces, `▁` → space, strip.
    SentencePiece,
    /// `wordpiece`: drop spaces, `_` → space, strip.
    Wordpiece,
    /// `letter`: drop spaces, `|` → space, strip.
    Letter,
    /// `_EOW`: drop spaces, `_EOW` → space, strip.
    Eow,
    /// `silence`: remove `<SIL>`, squeeze runs of spaces, strip.
    Silence,
    /// `none`: leave the string as it is.
    None,
}

/// An unknown `--remove-bpe` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown BPE mode {0:?} (expected subword_nmt, '@@ ', '@@', sentencepiece, wordpiece, letter, _EOW, silence or none)")]
pub struct UnknownBpeMode(pub String);

impl FromStr for BpeMode {
    type Err = UnknownBpeMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "subword_nmt" | "@@ " => BpeMode::SubwordNmt,
            "@@" => BpeMode::SubwordNmtNoSpace,
            "sentencepiece" => BpeMode::SentencePiece,
            "wordpiece" => BpeMode::Wordpiece,
            "letter" => BpeMode::Letter,
            "_EOW" => BpeMode::Eow,
            "silence" => BpeMode::Silence,
            "none" => BpeMode::None,
            other => return Err(UnknownBpeMode(other.to_string())),
        })
    }
}

impl fmt::Display for BpeMode {
    /// The canonical fairseq 0.12 `--post-process` spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BpeMode::SubwordNmt => "subword_nmt",
            BpeMode::SubwordNmtNoSpace => "@@",
            BpeMode::SentencePiece => "sentencepiece",
            BpeMode::Wordpiece => "wordpiece",
            BpeMode::Letter => "letter",
            BpeMode::Eow => "_EOW",
            BpeMode::Silence => "silence",
            BpeMode::None => "none",
        })
    }
}

/// fairseq's `data_utils.post_process(s, mode)`: join subword units back into words.
pub fn remove_bpe(s: &str, mode: BpeMode) -> String {
    // "drop spaces, marker -> space, strip"
    let respace = |marker: &str| py_strip(&s.replace(' ', "").replace(marker, " ")).to_string();
    match mode {
        BpeMode::SubwordNmt => py_rstrip(&format!("{s} ").replace("@@ ", "")).to_string(),
        BpeMode::SubwordNmtNoSpace => py_rstrip(&format!("{s} ").replace("@@", "")).to_string(),
        BpeMode::SentencePiece => respace("\u{2581}"),
        BpeMode::Wordpiece => respace("_"),
        BpeMode::Letter => respace("|"),
        BpeMode::Eow => respace("_EOW"),
        BpeMode::Silence => {
            let no_sil = s.replace("<SIL>", "");
            let mut out = String::with_capacity(no_sil.len());
            for c in no_sil.chars() {
                if !(c == ' ' && out.ends_with(' ')) {
                    out.push(c);
                }
            }
            py_strip(&out).to_string()
        }
        BpeMode::None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subword_nmt() {
        assert_eq!(
            remove_bpe("quie@@ t@@ l@@ y now", BpeMode::SubwordNmt),
            "quietly now"
        );
        // A trailing "@@" is removed because fairseq appends a space first.
        assert_eq!(remove_bpe("a b@@", BpeMode::SubwordNmt), "a b");
        assert_eq!(remove_bpe("a b@@\t", BpeMode::SubwordNmt), "a b@@");
        assert_eq!(remove_bpe("a@@b c", BpeMode::SubwordNmtNoSpace), "ab c");
    }

    #[test]
    fn sentencepiece() {
        assert_eq!(
            remove_bpe("\u{2581}Hel lo \u{2581}world", BpeMode::SentencePiece),
            "Hello world"
        );
    }

    #[test]
    fn others() {
        assert_eq!(remove_bpe("h e | w o", BpeMode::Letter), "he wo");
        assert_eq!(remove_bpe("<SIL> a   <SIL> b ", BpeMode::Silence), "a b");
        assert_eq!(remove_bpe(" a@@ b ", BpeMode::None), " a@@ b ");
    }

    #[test]
    fn parse() {
        assert_eq!("@@ ".parse::<BpeMode>(), Ok(BpeMode::SubwordNmt));
        assert_eq!(
            "sentencepiece".parse::<BpeMode>(),
            Ok(BpeMode::SentencePiece)
        );
        assert!("bpe".parse::<BpeMode>().is_err());
    }

    #[test]
    fn python_whitespace() {
        assert_eq!(
            py_split(" a\u{1f}b\u{a0}c  ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(py_strip("\u{1c} x \u{3000}"), "x");
    }
}
