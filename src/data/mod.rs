//! Text-side inputs: fairseq dictionaries ([`dict`]), binarized test sets
//! ([`indexed`]), finding test sets and dictionaries ([`locate`]) and BPE removal plus Python-compatible whitespace ([`text`]).
//! fairseq's behaviour is specified in `shared/spec/fairseq.md`.

pub mod dict;
pub mod indexed;
pub mod locate;
pub mod text;

pub use dict::{DictError, Dictionary};
pub use indexed::{IndexedDataset, IndexedError};
pub use text::{remove_bpe, BpeMode};
