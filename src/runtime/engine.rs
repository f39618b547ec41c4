//! The model-level interface every command runs a model through:
//! [`ModelEngine`] translates a batch (beam search with fairseq-generate's
//! options → hypotheses with scores) and scores a batch (teacher-forced
//! log-probabilities), whatever runs the model underneath.
//!
//! Two implementations:
//! * the native engine ([`crate::native::NativeBackend`]) implements it
//!   directly, straight from the weights;
//! * tract and onnxruntime run the exported graphs through one adapter,
//!   [`GraphEngine`], over their graph-level [`Backend`] (encoder, one
//!   decoder step, teacher-forced decoder).
//!
//! Beam search ([`crate::decode::beam_search`]) and scoring
//! ([`crate::score::score_batch`]) are written once against this trait; an
//! engine only provides [`ModelEngine::begin`] (an incremental decoding
//! [`Session`]) and [`ModelEngine::forced`] (teacher forcing).

use super::{Backend, DecoderState, EncoderState, Session};
use crate::decode::{BeamOptions, Hypothesis};
use crate::export::{GraphInfo, Precision};
use crate::score::Scored;
use anyhow::Result;
use ndarray::{Array2, Array3, ArrayView1, ArrayView2};

/// A model that can translate and score batches of sentences.
pub trait ModelEngine {
    /// Name for messages (`native (4 threads)`, `tract`, `onnxruntime-cpu`, ...).
    fn name(&self) -> String;
    /// The model's dimensions, vocabularies and position limits.
    fn info(&self) -> &GraphInfo;
    /// Precision of what it runs (the native engine: fp32 activations).
    fn precision(&self) -> Precision;

    /// Starts incremental decoding of left-padded `src_tokens` `[batch,
    /// src_len]`: one decoder row per sentence (beam search reorders and
    /// expands them).
    fn begin<'a>(&'a mut self, src_tokens: ArrayView2<i64>) -> Result<Box<dyn Session + 'a>>;

    /// Teacher forcing: float32 log-probs `[batch, tgt_len, vocab]` of every
    /// position of right-padded `prev_output_tokens` (positions past a row's
    /// end are unspecified).
    fn forced(
        &mut self,
        src_tokens: ArrayView2<i64>,
        prev_output_tokens: ArrayView2<i64>,
    ) -> Result<Array3<f32>>;

    /// Translates one batch (`src[i]`: token ids ending with EOS) with
    /// fairseq-generate's beam search: each sentence's `nbest` best
    /// hypotheses, best first.
    fn translate(&mut self, src: &[Vec<i64>], opts: &BeamOptions) -> Result<Vec<Vec<Hypothesis>>> {
        crate::decode::beam_search(self, src, opts)
    }

    /// Scores one batch: the log-probability of every token of `targets[i]`
    /// (ending with EOS) given `sources[i]`, like `--score-reference`.
    fn score(&mut self, sources: &[Vec<i64>], targets: &[Vec<i64>]) -> Result<Vec<Scored>> {
        crate::score::score_batch(self, sources, targets)
    }
}

/// The adapter that makes a graph [`Backend`] (tract, onnxruntime) a
/// [`ModelEngine`]: encoder once, then decoder steps over a self-attention
/// cache that is reordered by copying rows.
pub struct GraphEngine<B>(pub B);

impl<B: Backend> ModelEngine for GraphEngine<B> {
    fn name(&self) -> String {
        self.0.name()
    }

    fn info(&self) -> &GraphInfo {
        self.0.info()
    }

    fn precision(&self) -> Precision {
        self.0.precision()
    }

    fn begin<'a>(&'a mut self, src_tokens: ArrayView2<i64>) -> Result<Box<dyn Session + 'a>> {
        let enc = self.0.encode(src_tokens)?;
        let dec = self.0.start(&enc)?;
        Ok(Box::new(GraphSession {
            backend: &mut self.0,
            enc,
            dec,
        }))
    }

    fn forced(
        &mut self,
        src_tokens: ArrayView2<i64>,
        prev_output_tokens: ArrayView2<i64>,
    ) -> Result<Array3<f32>> {
        let enc = self.0.encode(src_tokens)?;
        self.0.teacher_forced(&enc, prev_output_tokens)
    }
}

/// [`Session`] on the exported graphs: the encoder state and the
/// self-attention cache, reordered by copying rows.
struct GraphSession<'a, B: Backend + ?Sized> {
    backend: &'a mut B,
    enc: EncoderState,
    dec: DecoderState,
}

impl<B: Backend + ?Sized> Session for GraphSession<'_, B> {
    fn step(&mut self, prev_tokens: ArrayView1<i64>) -> Result<Array2<f32>> {
        self.backend.step(&self.enc, &mut self.dec, prev_tokens)
    }

    fn reorder(&mut self, rows: &[usize], sentences_changed: bool) -> Result<()> {
        self.dec.reorder(rows)?;
        // All encoder rows of a sentence are equal: the same row list
        // expands or drops them.
        if sentences_changed {
            self.enc = self.enc.select(rows)?;
        }
        Ok(())
    }
}
