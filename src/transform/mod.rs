//! Transformations of a checkpoint: [`fold`] residual scales into a
//! standard model (on the typed [`crate::spec::Model`]) and [`cast`]
//! between float dtypes with overflow accounting; [`average`] checkpoints
//! as fairseq does, streaming.

pub mod average;
pub mod cast;
pub mod fold;
