//! Decoding: fairseq-generate's beam search ([`beam`]) over length-grouped
//! batches ([`batch`]). The model is any [`crate::runtime::ModelEngine`]
//! (native engine, or the exported graphs on tract or onnxruntime), whose
//! `translate` runs [`beam_search`]; the semantics are those of
//! `shared/spec/fairseq.md` § Beam search.

pub mod batch;
pub mod beam;
pub mod top;

pub use batch::{decode_all, decode_batches, plan, plan_shard, Batching, Shard};
pub use beam::{beam_search, BeamOptions, Hypothesis};
