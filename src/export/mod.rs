//! ONNX export of a [`spec::Model`](crate::spec::Model) as three graphs an
//! ordinary runtime can run: the encoder, one incremental decoder step, and
//! the teacher-forced decoder. Semantics: `shared/spec/fairseq.md`.
//!
//! Graph interfaces (`F` = float32, or float16 in the `_fp16` graphs;
//! `H` heads and `hd` head width of the decoder, `L` decoder layers):
//!
//! * `encoder.onnx`
//!   - in  `src_tokens` int64 `[batch, src_len]`, left-padded with 1
//!   - out `encoder_out` F `[batch, src_len, d]` (batch-first)
//!   - out `encoder_padding_mask` bool `[batch, src_len]`, **true at pads**
//!     (fairseq's convention)
//!   - out `cross_k_i`, `cross_v_i` F `[batch, H, src_len, hd]`, i < L: the
//!     encoder-decoder attention keys and values, computed once
//! * `decoder.onnx` (one step)
//!   - in  `prev_token` int64 `[batch, 1]`, `step` int64 `[1]` (0-based: the
//!     position row is `step + 2`), `encoder_padding_mask`, `cross_k_i`,
//!     `cross_v_i`, and the cache `self_k_i`, `self_v_i` F
//!     `[batch, H, past_len, hd]` (`past_len` = step, 0 at the first step)
//!   - out `lprobs` float32 `[batch, vocab]` (log-softmax in float32),
//!     `new_self_k_i`, `new_self_v_i` F `[batch, H, past_len + 1, hd]`
//! * `decoder_full.onnx` (teacher forcing)
//!   - in  `prev_output_tokens` int64 `[batch, tgt_len]` (right-padded with
//!     1, starting with EOS 2), `encoder_padding_mask`, `cross_k_i`, `cross_v_i`
//!   - out `lprobs` float32 `[batch, tgt_len, vocab]`
//!
//! Inside, the residual stream is 2-D (`[batch·len, d]`) so every linear map
//! is one GEMM; weights are stored `[in, out]` (q|k|v and the cross k|v
//! fused); the output projection is stored transposed even when tied to the
//! decoder table (a second copy: both runtimes then pre-pack it). fp16
//! graphs keep LayerNorm, softmax, GELU and log-softmax in float32.
//! Initializers of graphs over 1 GiB go to `<file>.onnx.data` (ONNX external
//! data).
//!
//! Metadata props: `admin_convert.config` (JSON [`Config`](crate::spec::Config)),
//! `admin_convert.family`, `admin_convert.graph` (`encoder` / `decoder` /
//! `decoder_full`), `admin_convert.precision` (`fp32` / `fp16`),
//! `admin_convert.info` (JSON [`GraphInfo`]) and, when given,
//! `fairseq.dict.src` / `fairseq.dict.tgt` (the dictionary files' text).

pub mod fairseq;
pub mod graph;
pub mod onnx;

pub use fairseq::GraphInfo;

use crate::spec::Model;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tract_onnx::pb::ModelProto;

/// Numeric precision of a set of graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Precision::Fp32 => "",
            Precision::Fp16 => "_fp16",
        }
    }
}

/// The three graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GraphKind {
    Encoder,
    Decoder,
    DecoderFull,
}

impl GraphKind {
    /// Position in [`GraphKind::ALL`]: where runtimes keep this graph.
    pub fn index(self) -> usize {
        match self {
            GraphKind::Encoder => 0,
            GraphKind::Decoder => 1,
            GraphKind::DecoderFull => 2,
        }
    }

    pub const ALL: [GraphKind; 3] = [
        GraphKind::Encoder,
        GraphKind::Decoder,
        GraphKind::DecoderFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GraphKind::Encoder => "encoder",
            GraphKind::Decoder => "decoder",
            GraphKind::DecoderFull => "decoder_full",
        }
    }

    /// `encoder.onnx`, `decoder_fp16.onnx`, ...
    pub fn file_name(self, precision: Precision) -> String {
        format!("{}{}.onnx", self.name(), precision.suffix())
    }
}

/// What to export besides the fp32 graphs.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Also write the `_fp16` graphs.
    pub fp16: bool,
    /// Source and target `dict.txt` contents, stored as metadata.
    pub dictionaries: Option<(String, String)>,
    /// Store initializers as external data even under the 2 GB limit.
    pub external_data: bool,
}

/// The graphs of one precision, as protobuf messages.
#[derive(Clone)]
pub struct Graphs {
    pub precision: Precision,
    pub info: GraphInfo,
    pub encoder: ModelProto,
    pub decoder: ModelProto,
    pub decoder_full: ModelProto,
}

impl std::fmt::Debug for Graphs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |k| onnx::initializer_bytes(self.get(k)) as f64 / 1e6;
        write!(
            f,
            "Graphs({}, encoder {:.1} MB, decoder {:.1} MB, decoder_full {:.1} MB)",
            self.precision.name(),
            mb(GraphKind::Encoder),
            mb(GraphKind::Decoder),
            mb(GraphKind::DecoderFull)
        )
    }
}

impl Graphs {
    pub fn get(&self, kind: GraphKind) -> &ModelProto {
        match kind {
            GraphKind::Encoder => &self.encoder,
            GraphKind::Decoder => &self.decoder,
            GraphKind::DecoderFull => &self.decoder_full,
        }
    }
}

/// Builds one graph of `model` in `precision`, with its metadata.
pub fn export_graph(
    model: &Model,
    kind: GraphKind,
    precision: Precision,
    opts: &ExportOptions,
) -> Result<ModelProto> {
    crate::spec::validate(model).context("the model cannot be exported")?;
    let fp16 = precision == Precision::Fp16;
    let info = GraphInfo::of(model);
    let mut meta = vec![
        (
            "admin_convert.config".to_string(),
            serde_json::to_string(&model.config)?,
        ),
        ("admin_convert.family".into(), model.family.name().into()),
        ("admin_convert.graph".into(), kind.name().into()),
        ("admin_convert.precision".into(), precision.name().into()),
        ("admin_convert.info".into(), serde_json::to_string(&info)?),
    ];
    if let Some((src, tgt)) = &opts.dictionaries {
        meta.push(("fairseq.dict.src".into(), src.clone()));
        meta.push(("fairseq.dict.tgt".into(), tgt.clone()));
    }
    let doc = format!(
        "{} of a fairseq Transformer ({}), {}, exported by admin-convert",
        kind.name(),
        model.family.describe(),
        precision.name()
    );
    let graph = match kind {
        GraphKind::Encoder => fairseq::encoder(model, fp16)?,
        GraphKind::Decoder => fairseq::decoder_step(model, fp16)?,
        GraphKind::DecoderFull => fairseq::decoder_full(model, fp16)?,
    };
    Ok(onnx::model(graph, &doc, &meta))
}

/// Builds the three graphs of `model` in `precision`.
pub fn export(model: &Model, precision: Precision, opts: &ExportOptions) -> Result<Graphs> {
    Ok(Graphs {
        precision,
        info: GraphInfo::of(model),
        encoder: export_graph(model, GraphKind::Encoder, precision, opts)?,
        decoder: export_graph(model, GraphKind::Decoder, precision, opts)?,
        decoder_full: export_graph(model, GraphKind::DecoderFull, precision, opts)?,
    })
}

/// Writes `graphs` into `dir` (created if missing), each file atomically.
pub fn write_graphs(graphs: &Graphs, dir: &Path, external_data: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = vec![];
    for kind in GraphKind::ALL {
        let path = dir.join(kind.file_name(graphs.precision));
        written.extend(onnx::write_model(graphs.get(kind), &path, external_data)?);
    }
    Ok(written)
}

/// Exports `model` into `dir` (created if missing): `encoder.onnx`,
/// `decoder.onnx`, `decoder_full.onnx`, and the `_fp16` variants when
/// `opts.fp16`; one graph in memory at a time, each file written
/// atomically. Returns the files written.
pub fn write_dir(model: &Model, opts: &ExportOptions, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = vec![];
    let mut precisions = vec![Precision::Fp32];
    if opts.fp16 {
        precisions.push(Precision::Fp16);
    }
    for p in precisions {
        for kind in GraphKind::ALL {
            let proto = export_graph(model, kind, p, opts)?;
            let path = dir.join(kind.file_name(p));
            written.extend(onnx::write_model(&proto, &path, opts.external_data)?);
        }
    }
    Ok(written)
}
