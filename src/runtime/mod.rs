//! Running a model. Two levels:
//!
//! * [`ModelEngine`] ([`engine`]): translate a batch (beam search) and
//!   score a batch (teacher forcing). Every command (`eval`, `score`,
//!   `translate`, the fold self-check) runs a model through it. The native
//!   engine ([`crate::native::NativeBackend`]) implements it directly;
//!   the exported graphs get it from one adapter, [`GraphEngine`].
//! * [`Backend`]: runs the three graphs of [`crate::export`] — on tract
//!   ([`tract::TractBackend`], pure Rust) or onnxruntime
//!   ([`ort::OrtBackend`], CPU or CUDA). The cached state between calls
//!   ([`EncoderState`], [`DecoderState`]) is backend-neutral and can be
//!   reordered by batch row (beam search reorders beams and drops finished
//!   sentences).
//!
//! State tensors live in host memory: onnxruntime's outputs are passed back
//! as its own values (no copy on the CPU), tract's as reference-counted
//! tensors; with CUDA they cross the bus at every step.

pub mod engine;
pub mod ort;
pub mod tract;

pub use engine::{GraphEngine, ModelEngine};

use crate::export::{GraphInfo, GraphKind, Graphs, Precision};
use anyhow::{bail, ensure, Context, Result};
use half::f16;
use ndarray::{Array2, Array3, ArrayD, ArrayView1, ArrayView2, Ix2, Ix3};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::prelude::{DatumType, TValue, Tensor};

/// Where a backend takes its graphs from.
#[derive(Clone, Debug)]
pub enum GraphSource {
    /// Graphs exported in memory.
    Memory(Arc<Graphs>),
    /// A directory written by [`crate::export::write_dir`], and the
    /// precision of the files to load from it.
    Dir(PathBuf, Precision),
}

impl GraphSource {
    pub fn precision(&self) -> Precision {
        match self {
            GraphSource::Memory(g) => g.precision,
            GraphSource::Dir(_, p) => *p,
        }
    }

    pub(crate) fn path(&self, kind: GraphKind) -> Option<PathBuf> {
        match self {
            GraphSource::Memory(_) => None,
            GraphSource::Dir(d, p) => Some(d.join(kind.file_name(*p))),
        }
    }
}

/// Reads the `admin_convert.info` metadata entry of an exported graph.
pub(crate) fn parse_info(json: Option<String>, what: &Path) -> Result<GraphInfo> {
    let json = json.with_context(|| {
        format!(
            "{} has no admin_convert.info metadata: not written by admin-convert export",
            what.display()
        )
    })?;
    serde_json::from_str(&json)
        .with_context(|| format!("{}: malformed admin_convert.info metadata", what.display()))
}

/// A tensor passed between graph runs: owned by tract or by onnxruntime,
/// cheap to clone (reference counted).
#[derive(Clone)]
pub struct Value(pub(crate) Repr);

#[derive(Clone)]
pub(crate) enum Repr {
    Tract(TValue),
    Ort(Arc<::ort::value::DynValue>),
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value({:?} {:?})", self.datum_type(), self.shape())
    }
}

impl Value {
    pub fn from_tensor(t: Tensor) -> Value {
        Value(Repr::Tract(t.into()))
    }

    pub fn from_array<T: tract_onnx::prelude::Datum, D: ndarray::Dimension>(
        a: ndarray::Array<T, D>,
    ) -> Value {
        Value::from_tensor(Tensor::from(a))
    }

    pub fn shape(&self) -> Vec<usize> {
        match &self.0 {
            Repr::Tract(t) => t.shape().to_vec(),
            Repr::Ort(v) => v.shape().iter().map(|&d| d.max(0) as usize).collect(),
        }
    }

    pub fn datum_type(&self) -> DatumType {
        match &self.0 {
            Repr::Tract(t) => t.datum_type(),
            Repr::Ort(v) => self::ort::datum_type(v),
        }
    }

    /// The value as a tract tensor (no copy when tract owns it).
    pub(crate) fn to_tract(&self) -> Result<TValue> {
        match &self.0 {
            Repr::Tract(t) => Ok(t.clone()),
            Repr::Ort(v) => Ok(self::ort::to_tract_tensor(v)?.into()),
        }
    }

    /// Copies the value to an `f32` array (`f16` is widened).
    pub fn to_f32(&self) -> Result<ArrayD<f32>> {
        let t = self.to_tract()?;
        match t.datum_type() {
            DatumType::F32 => Ok(t.to_plain_array_view::<f32>()?.to_owned()),
            DatumType::F16 => Ok(t.to_plain_array_view::<f16>()?.mapv(f16::to_f32)),
            dt => bail!("expected a float tensor, got {dt:?}"),
        }
    }

    /// Copies the value to a `bool` array.
    pub fn to_bool(&self) -> Result<ArrayD<bool>> {
        Ok(self.to_tract()?.to_plain_array_view::<bool>()?.to_owned())
    }

    /// Rows `rows` of the first (batch) axis, in that order (repeats allowed).
    pub fn select_rows(&self, rows: &[usize]) -> Result<Value> {
        let t = self.to_tract()?;
        let shape = t.shape();
        ensure!(!shape.is_empty(), "cannot select rows of a scalar");
        let n = shape[0];
        let plain = t.try_as_plain_ram()?;
        let bytes = plain.as_bytes();
        let row = bytes.len().checked_div(n).unwrap_or(0);
        let mut out = Vec::with_capacity(row * rows.len());
        for &r in rows {
            ensure!(r < n, "row {r} out of range: batch has {n} rows");
            out.extend_from_slice(&bytes[r * row..(r + 1) * row]);
        }
        let mut new_shape = shape.to_vec();
        new_shape[0] = rows.len();
        // SAFETY: `out` holds rows.len() whole rows of the source tensor's
        // datum type, exactly the bytes `new_shape` describes.
        let t = unsafe { Tensor::from_raw_dt(t.datum_type(), &new_shape, &out)? };
        Ok(Value::from_tensor(t))
    }
}

/// The encoder's outputs, reused by every decoder call.
#[derive(Clone, Debug)]
pub struct EncoderState {
    /// `[batch, src_len, d]`.
    pub encoder_out: Value,
    /// bool `[batch, src_len]`, true at pads.
    pub padding_mask: Value,
    /// Cross-attention keys and values per decoder layer, `[batch, H, src_len, hd]`.
    pub cross: Vec<(Value, Value)>,
}

impl EncoderState {
    pub fn batch(&self) -> usize {
        self.padding_mask.shape()[0]
    }

    pub fn src_len(&self) -> usize {
        self.padding_mask.shape()[1]
    }

    /// The state of batch rows `rows` (in order; repeats allowed, e.g. to
    /// expand each sentence to its beams).
    pub fn select(&self, rows: &[usize]) -> Result<EncoderState> {
        Ok(EncoderState {
            encoder_out: self.encoder_out.select_rows(rows)?,
            padding_mask: self.padding_mask.select_rows(rows)?,
            cross: self
                .cross
                .iter()
                .map(|(k, v)| Ok((k.select_rows(rows)?, v.select_rows(rows)?)))
                .collect::<Result<_>>()?,
        })
    }
}

/// The self-attention cache of incremental decoding.
#[derive(Clone, Debug)]
pub struct DecoderState {
    /// Number of tokens already fed (the next step's index).
    pub step: usize,
    /// Keys and values per decoder layer, `[batch, H, step, hd]`.
    pub cache: Vec<(Value, Value)>,
}

impl DecoderState {
    pub fn batch(&self) -> usize {
        self.cache.first().map(|(k, _)| k.shape()[0]).unwrap_or(0)
    }

    /// The state of batch rows `rows` (in order; repeats allowed).
    pub fn select(&self, rows: &[usize]) -> Result<DecoderState> {
        Ok(DecoderState {
            step: self.step,
            cache: self
                .cache
                .iter()
                .map(|(k, v)| Ok((k.select_rows(rows)?, v.select_rows(rows)?)))
                .collect::<Result<_>>()?,
        })
    }

    /// Replaces the state by its rows `rows` (beam reordering).
    pub fn reorder(&mut self, rows: &[usize]) -> Result<()> {
        *self = self.select(rows)?;
        Ok(())
    }
}

/// Incremental decoding of one batch, as beam search drives it.
pub trait Session {
    /// Feeds one token per row (`[rows]`); returns the float32 log-probs of
    /// the next token, `[rows, vocab]`.
    fn step(&mut self, prev_tokens: ArrayView1<i64>) -> Result<Array2<f32>>;

    /// Row `i` of the next step continues row `rows[i]` of the last one
    /// (beams reordered; repeats expand a sentence to its beams; missing
    /// rows drop finished sentences). `sentences_changed` is true when the
    /// rows of some sentence were added or dropped, not only reordered.
    fn reorder(&mut self, rows: &[usize], sentences_changed: bool) -> Result<()>;

    /// As [`Session::step`], but returns only each row's best candidates
    /// ([`crate::decode::top`]); `None` (the default) when the session
    /// has no such path: nothing was fed, call [`Session::step`].
    fn step_top(
        &mut self,
        _prev_tokens: ArrayView1<i64>,
        _req: &crate::decode::top::TopRequest,
    ) -> Result<Option<crate::decode::top::TopStep>> {
        Ok(None)
    }

    /// The full log-probs of row `row` of the last [`Session::step_top`]
    /// (the same values it returned for its candidates).
    fn row_lprobs(&mut self, _row: usize) -> Result<Vec<f32>> {
        anyhow::bail!("internal error: this session has no step_top")
    }
}

/// Graph outputs by name.
pub struct Outputs(pub Vec<(String, Value)>);

impl Outputs {
    pub fn take(&mut self, name: &str) -> Result<Value> {
        let i = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("graph has no output {name}"))?;
        Ok(self.0.swap_remove(i).1)
    }
}

/// Runs the exported graphs (tract, onnxruntime). Implementors provide
/// [`Backend::run`]; encoding, a decoder step and teacher forcing are
/// provided on top of it. Commands do not use it directly: they run a
/// [`ModelEngine`], which [`GraphEngine`] makes of any `Backend`.
pub trait Backend {
    /// Name for messages (`tract`, `onnxruntime-cpu`, ...).
    fn name(&self) -> String;
    fn info(&self) -> &GraphInfo;
    fn precision(&self) -> Precision;

    /// Runs one graph on named inputs; returns its outputs by name.
    fn run(&mut self, kind: GraphKind, inputs: &[(&str, &Value)]) -> Result<Outputs>;

    /// Encodes left-padded `src_tokens` `[batch, src_len]`.
    fn encode(&mut self, src_tokens: ArrayView2<i64>) -> Result<EncoderState> {
        let info = *self.info();
        check_tokens(src_tokens.iter(), info.src_vocab, "source")?;
        if let Some(max) = info.max_source_positions {
            let longest = src_tokens
                .rows()
                .into_iter()
                .map(|r| r.iter().filter(|&&t| t != crate::spec::PAD as i64).count())
                .max()
                .unwrap_or(0);
            ensure!(
                longest <= max,
                "a source has {longest} tokens, the model takes at most {max}"
            );
        }
        let src = Value::from_array(src_tokens.to_owned());
        let mut out = self.run(GraphKind::Encoder, &[("src_tokens", &src)])?;
        let cross = (0..info.decoder_layers)
            .map(|i| {
                Ok((
                    out.take(&format!("cross_k_{i}"))?,
                    out.take(&format!("cross_v_{i}"))?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(EncoderState {
            encoder_out: out.take("encoder_out")?,
            padding_mask: out.take("encoder_padding_mask")?,
            cross,
        })
    }

    /// An empty self-attention cache for the batch of `enc`.
    fn start(&self, enc: &EncoderState) -> Result<DecoderState> {
        let info = self.info();
        let shape = [enc.batch(), info.decoder_heads, 0, info.decoder_head_dim];
        let dt = match self.precision() {
            Precision::Fp32 => DatumType::F32,
            Precision::Fp16 => DatumType::F16,
        };
        let empty = || -> Result<Value> { Ok(Value::from_tensor(Tensor::zero_dt(dt, &shape)?)) };
        Ok(DecoderState {
            step: 0,
            cache: (0..info.decoder_layers)
                .map(|_| Ok((empty()?, empty()?)))
                .collect::<Result<_>>()?,
        })
    }

    /// Feeds the last token of every row (`[batch]`), returns the float32
    /// log-probs of the next token `[batch, vocab]` and advances `dec`.
    fn step(
        &mut self,
        enc: &EncoderState,
        dec: &mut DecoderState,
        prev_tokens: ArrayView1<i64>,
    ) -> Result<Array2<f32>> {
        let info = *self.info();
        let b = prev_tokens.len();
        ensure!(
            enc.batch() == b && dec.batch() == b,
            "batch mismatch: {b} tokens, encoder state {}, decoder state {}",
            enc.batch(),
            dec.batch()
        );
        check_tokens(prev_tokens.iter(), info.tgt_vocab, "target")?;
        if let Some(max) = info.max_target_positions {
            ensure!(
                dec.step < max,
                "step {} is past the model's {max} target positions",
                dec.step
            );
        }
        let tokens = Value::from_array(prev_tokens.to_owned().into_shape_with_order((b, 1))?);
        let step = Value::from_array(ndarray::arr1(&[dec.step as i64]));
        let names = io_names(info.decoder_layers);
        let mut inputs: Vec<(&str, &Value)> = vec![
            ("prev_token", &tokens),
            ("step", &step),
            ("encoder_padding_mask", &enc.padding_mask),
        ];
        for (i, n) in names.iter().enumerate() {
            inputs.push((&n.cross_k, &enc.cross[i].0));
            inputs.push((&n.cross_v, &enc.cross[i].1));
            inputs.push((&n.self_k, &dec.cache[i].0));
            inputs.push((&n.self_v, &dec.cache[i].1));
        }
        let mut out = self.run(GraphKind::Decoder, &inputs)?;
        for (i, n) in names.iter().enumerate() {
            dec.cache[i] = (out.take(&n.new_k)?, out.take(&n.new_v)?);
        }
        dec.step += 1;
        Ok(out.take("lprobs")?.to_f32()?.into_dimensionality::<Ix2>()?)
    }

    /// Teacher forcing: float32 log-probs `[batch, tgt_len, vocab]` of every
    /// position of right-padded `prev_output_tokens`.
    fn teacher_forced(
        &mut self,
        enc: &EncoderState,
        prev_output_tokens: ArrayView2<i64>,
    ) -> Result<Array3<f32>> {
        let info = *self.info();
        ensure!(
            enc.batch() == prev_output_tokens.nrows(),
            "batch mismatch: {} target rows, encoder state {}",
            prev_output_tokens.nrows(),
            enc.batch()
        );
        check_tokens(prev_output_tokens.iter(), info.tgt_vocab, "target")?;
        if let Some(max) = info.max_target_positions {
            ensure!(
                prev_output_tokens.ncols() <= max,
                "targets of {} tokens, the model takes at most {max}",
                prev_output_tokens.ncols()
            );
        }
        let tokens = Value::from_array(prev_output_tokens.to_owned());
        let names = io_names(info.decoder_layers);
        let mut inputs: Vec<(&str, &Value)> = vec![
            ("prev_output_tokens", &tokens),
            ("encoder_padding_mask", &enc.padding_mask),
        ];
        for (i, n) in names.iter().enumerate() {
            inputs.push((&n.cross_k, &enc.cross[i].0));
            inputs.push((&n.cross_v, &enc.cross[i].1));
        }
        let mut out = self.run(GraphKind::DecoderFull, &inputs)?;
        Ok(out.take("lprobs")?.to_f32()?.into_dimensionality::<Ix3>()?)
    }
}

struct LayerIo {
    cross_k: String,
    cross_v: String,
    self_k: String,
    self_v: String,
    new_k: String,
    new_v: String,
}

fn io_names(layers: usize) -> Vec<LayerIo> {
    (0..layers)
        .map(|i| LayerIo {
            cross_k: format!("cross_k_{i}"),
            cross_v: format!("cross_v_{i}"),
            self_k: format!("self_k_{i}"),
            self_v: format!("self_v_{i}"),
            new_k: format!("new_self_k_{i}"),
            new_v: format!("new_self_v_{i}"),
        })
        .collect()
}

fn check_tokens<'a>(tokens: impl Iterator<Item = &'a i64>, vocab: usize, what: &str) -> Result<()> {
    for &t in tokens {
        ensure!(
            t >= 0 && (t as usize) < vocab,
            "{what} token id {t} is outside the vocabulary of {vocab}"
        );
    }
    Ok(())
}
