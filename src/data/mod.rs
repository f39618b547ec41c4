//! Text-side inputs: fairseq dictionaries ([`dict`]), binarized test sets
//! ([`indexed`]) and BPE removal plus Python-compatible whitespace ([`text`]).
//! fairseq's behaviour is specified in `shared/spec/fairseq.md`.

pub mod dict;
pub mod indexed;
pub mod text;

pub use dict::{DictError, Dictionary};
pub use indexed::{IndexedDataset, IndexedError};
pub use text::{remove_bpe, BpeMode};
