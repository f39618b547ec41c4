//! Corpus metrics: fairseq's tokenized BLEU ([`bleu`], `--scoring bleu`) and
//! sacreBLEU ([`sacrebleu`]), both reproducing the reference tools' numbers
//! and printed strings. fairseq's side is specified in `shared/spec/fairseq.md`.

pub mod bleu;
pub mod sacrebleu;

pub use bleu::{BleuResult, BleuScorer};
pub use sacrebleu::{SacreBleu, SacreBleuConfig, SacreBleuScore, SACREBLEU_VERSION};
