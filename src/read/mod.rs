//! Reading checkpoint files without executing any code.
//! (in progress)
