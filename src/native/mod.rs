//! The native engine (`--backend native`): the model run straight from its
//! [`crate::spec::Model`] weights on the CPU, without ONNX, built for beam
//! search speed.
//!
//! * [`gemm`]: weights packed once, an AVX2/FMA micro-kernel, a summation
//!   order that does not depend on the batch.
//! * [`model`]: the model in the engine's layout and the row-wise
//!   operations (LayerNorm, residual ω / gates, activations, attention,
//!   log-softmax), following `shared/spec/fairseq.md` like the graphs of
//!   [`crate::export`].
//! * [`engine`]: encoding and incremental decoding, data-parallel over
//!   sentences / decoder rows; the self-attention cache is never copied
//!   (rows keep their ancestry), cross-attention keys and values are kept
//!   once per sentence instead of once per beam.
//!
//! It implements [`crate::runtime::Backend`] through [`Backend::begin`]
//! (beam search) and [`Backend::forced`] (scoring); it runs no ONNX graphs,
//! float32 only.

pub mod engine;
pub mod gemm;
pub mod model;

use crate::export::{GraphInfo, GraphKind, Precision};
use crate::runtime::{Backend, EncoderState, Outputs, Session, Value};
use crate::spec::PAD;
use anyhow::{bail, Result};
pub use model::NativeModel;
use ndarray::{Array2, Array3, ArrayView1, ArrayView2};

/// The native engine as a [`Backend`].
pub struct NativeBackend {
    model: NativeModel,
    threads: usize,
}

impl NativeBackend {
    /// Prepares `model` (packs its weights); `threads` defaults to the
    /// number of CPUs.
    pub fn new(model: &crate::spec::Model, threads: Option<usize>) -> Result<NativeBackend> {
        let threads = threads
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
            .max(1);
        Ok(NativeBackend {
            model: NativeModel::new(model)?,
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// The real tokens of each left-padded row.
fn unpad(src_tokens: ArrayView2<i64>, vocab: usize) -> Result<Vec<Vec<usize>>> {
    src_tokens
        .rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .filter(|&&t| t != PAD as i64)
                .map(|&t| {
                    if t < 0 || t as usize >= vocab {
                        bail!("source token id {t} is outside the vocabulary of {vocab}");
                    }
                    Ok(t as usize)
                })
                .collect()
        })
        .collect()
}

struct NativeSession<'a>(engine::Session<'a>);

impl Session for NativeSession<'_> {
    fn step(&mut self, prev_tokens: ArrayView1<i64>) -> Result<Array2<f32>> {
        let prev: Vec<i64> = prev_tokens.to_vec();
        self.0.step(&prev)
    }

    fn reorder(&mut self, rows: &[usize], _sentences_changed: bool) -> Result<()> {
        self.0.reorder(rows)
    }
}

impl Backend for NativeBackend {
    fn name(&self) -> String {
        format!("native ({} threads)", self.threads)
    }

    fn info(&self) -> &GraphInfo {
        self.model.info()
    }

    fn precision(&self) -> Precision {
        Precision::Fp32
    }

    fn run(&mut self, kind: GraphKind, _: &[(&str, &Value)]) -> Result<Outputs> {
        bail!(
            "the native engine runs no ONNX graphs (asked for the {} graph): use --backend tract or ort",
            kind.name()
        )
    }

    fn begin<'a>(&'a mut self, src_tokens: ArrayView2<i64>) -> Result<Box<dyn Session + 'a>> {
        let sources = unpad(src_tokens, self.model.info.src_vocab)?;
        Ok(Box::new(NativeSession(engine::Session::new(
            &self.model,
            &sources,
            self.threads,
        )?)))
    }

    fn forced(
        &mut self,
        src_tokens: ArrayView2<i64>,
        prev_output_tokens: ArrayView2<i64>,
    ) -> Result<Array3<f32>> {
        let sources = unpad(src_tokens, self.model.info.src_vocab)?;
        engine::forced(&self.model, &sources, prev_output_tokens, self.threads)
    }

    fn encode(&mut self, _: ArrayView2<i64>) -> Result<EncoderState> {
        bail!("the native engine keeps its encoder state to itself: use begin() or forced()")
    }
}
