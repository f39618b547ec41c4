//! admin-convert: ship Transformer translation models trained with Admin
//! (and DeepNet, ReZero, admin-torch) as standard Post-LN / Pre-LN models.
//!
//! A checkpoint flows through the modules in this order:
//!
//! | step | module | what it does |
//! |---|---|---|
//! | read | [`read`] | torch `.pt` (zip and legacy pickle, never executed) and `.safetensors` → named [`tensor::RawTensor`]s + config values |
//! | model | [`spec`] | the typed [`spec::Model`] and its rules (`spec/rules.rs`: validation, LayerNorm ε, position tables, the walk over sublayers that fold, export and the native engine use) |
//! | recognise | [`recognise`] | names + shapes + config → one [`spec::Model`]: `tensors` (by name and shape), `hparams` (flags, presets, validated config), `naming` (one table entry per attention naming), `family` (one table entry per residual family), `weights` (tables, layers) |
//! | transform | [`transform`] | fold residual scales (`fold`), dtype conversion with accounting (`cast`), streaming `average` |
//! | write | [`write`] | fairseq 0.12 state dicts, safetensors, atomic output files; where outputs go and what they may never touch ([`write::output`]) |
//! | export | [`export`] | ONNX encoder / incremental decoder / teacher-forced graphs, fp32 and fp16 |
//! | run | [`runtime`], [`native`] | [`runtime::ModelEngine`]: translate / score a batch; the native engine (pure Rust, straight from the weights, the fastest on the CPU) implements it, the graphs on tract (pure Rust) or onnxruntime (CPU, CUDA) through one adapter ([`runtime::GraphEngine`]) over the graph-level [`runtime::Backend`] |
//! | decode | [`decode`] | beam search with fairseq-generate's semantics (once, over any engine), length-grouped batching |
//! | score | [`score`], [`verify`] | teacher-forced log-probs; the fold self-check (original, then folded, on the native engine) |
//! | text | [`data`], [`metrics`] | dictionaries, binarized datasets, finding test sets and dictionaries for every command ([`data::locate`]), BPE removal; fairseq BLEU and sacreBLEU |
//! | report | [`inspect`], [`cli`] | `admin-convert inspect` and the command line |
//!
//! The maths of folding lives in `shared/spec/fold.md`, fairseq's behaviour
//! in `shared/spec/fairseq.md`; module docs point there instead of
//! repeating it.

pub mod cli;
pub mod data;
pub mod decode;
pub mod export;
pub mod inspect;
pub mod metrics;
pub mod native;
pub mod read;
pub mod recognise;
pub mod runtime;
pub mod score;
pub mod spec;
pub mod tensor;
pub mod transform;
pub mod verify;
pub mod write;
