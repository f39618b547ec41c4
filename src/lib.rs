//! admin-convert: ship Transformer translation models trained with Admin
//! (and DeepNet, ReZero, admin-torch) as standard Post-LN / Pre-LN models.
//! (module index in progress)

pub mod data;
pub mod export;
pub mod metrics;
pub mod runtime;
pub mod spec;
pub mod tensor;
