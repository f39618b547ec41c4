//! The integration tests, one binary (one link for CI): each module is one
//! area of the tool, exercised through the library API or the real binary.

mod average;
mod bad_input;
mod beam;
mod cast;
mod common;
mod config;
mod data;
mod deploy;
mod edge;
mod eval;
mod export;
mod export_cli;
mod fold;
mod fork_layouts;
mod fuzz;
mod hostile;
mod inspect;
mod limits;
mod memory;
mod metrics;
mod outputs;
mod parity;
mod pt_out;
mod quickstart;
mod ray;
mod read;
mod read_torch;
mod score;
mod shard;
mod tol;
