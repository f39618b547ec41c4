//! Reading checkpoint files without executing any code.
//! (in progress)
pub mod pickle;
pub mod torch;
