//! admin-convert: ship Transformer translation models trained with Admin
//! (and DeepNet, ReZero, admin-torch) as standard Post-LN / Pre-LN models.
//!
//! A checkpoint flows through the modules in this order:
//!
//! | step | module | what it does |
//! |---|---|---|
//! | read | [`read`] | torch `.pt` (zip and legacy pickle, never executed) and `.safetensors` → named [`tensor::RawTensor`]s + config values |
//! | recognise | [`recognise`] | names + shapes + config → one typed [`spec::Model`] (family, naming, hyper-parameters, weights) |
//! | inspect | [`inspect`] | a report on a recognised model (`admin-convert inspect`) |
//! | data | [`data`] | fairseq dictionaries, binarized test sets, BPE removal |
//! | metrics | [`metrics`] | fairseq BLEU and sacreBLEU |
//!
//! The maths of folding lives in `shared/spec/fold.md`, fairseq's behaviour
//! in `shared/spec/fairseq.md`; module docs point there instead of
//! repeating it.

pub mod cli;
pub mod data;
pub mod export;
pub mod inspect;
pub mod metrics;
pub mod read;
pub mod recognise;
pub mod runtime;
pub mod spec;
pub mod tensor;
pub mod transform;
pub mod write;
