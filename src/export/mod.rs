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
//! fused). The output projection is a `Gemm` with `transB = 1` over the
//! `[vocab, d]` table, so a tied projection reads the decoder token table
//! itself (onnxruntime pre-packs Gemm's constant B either way; tract gets
//! its own transposed copy at load, see `runtime/tract.rs`). fp16 graphs
//! keep LayerNorm, softmax, GELU and log-softmax in float32.
//!
//! Weights: [`write_dir`] streams every initializer once, tensor by tensor
//! from the model's arrays (fp16 converted a chunk at a time), into one
//! ONNX external-data file per precision, `weights.onnx.data` /
//! `weights_fp16.onnx.data`, that the three graphs refer to by
//! `location`, `offset`, `length` (4 KiB-aligned for tensors of a page or
//! more); equal token tables (shared embeddings) are one initializer. The
//! `.onnx` files hold only the graph structure and its small constants
//! (tens of kB). Small models use the same layout: one code path. Graphs
//! built in memory by [`export`] (for `eval` on a checkpoint, the fold
//! self-check) carry their weights inline instead, each graph its own copy;
//! onnxruntime spills graphs over the protobuf limit to a temporary
//! directory in the same layout ([`write_graphs`]).
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
use onnx::{DataFile, WeightStore};
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

    /// The weights of this precision's graphs: `weights.onnx.data`,
    /// `weights_fp16.onnx.data`.
    pub fn data_file_name(self) -> String {
        format!("weights{}.onnx.data", self.suffix())
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
}

/// The graphs of one precision, as protobuf messages with their weights
/// inline (see [`export`]).
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

/// Builds one graph of `model` in `precision`, with its metadata; its
/// weights go to `store`.
pub fn export_graph(
    model: &Model,
    kind: GraphKind,
    precision: Precision,
    opts: &ExportOptions,
    store: &mut WeightStore,
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
        GraphKind::Encoder => fairseq::encoder(model, fp16, store)?,
        GraphKind::Decoder => fairseq::decoder_step(model, fp16, store)?,
        GraphKind::DecoderFull => fairseq::decoder_full(model, fp16, store)?,
    };
    Ok(onnx::model(graph, &doc, &meta))
}

/// Builds the three graphs of `model` in `precision` in memory, each
/// carrying its own copy of the weights it reads (for running without a
/// directory: `eval` on a checkpoint, the fold self-check, tests).
pub fn export(model: &Model, precision: Precision, opts: &ExportOptions) -> Result<Graphs> {
    let mut inline = WeightStore::Inline;
    let mut graph = |kind| export_graph(model, kind, precision, opts, &mut inline);
    Ok(Graphs {
        precision,
        info: GraphInfo::of(model),
        encoder: graph(GraphKind::Encoder)?,
        decoder: graph(GraphKind::Decoder)?,
        decoder_full: graph(GraphKind::DecoderFull)?,
    })
}

/// Writes in-memory `graphs` into `dir` (created if missing) as
/// [`write_dir`] lays it out: their inline weights move to the shared data
/// file, each name once. Returns the files written.
pub fn write_graphs(graphs: &Graphs, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut data = DataFile::create(&dir.join(graphs.precision.data_file_name()))?;
    let protos: Vec<ModelProto> = GraphKind::ALL
        .iter()
        .map(|&k| {
            let mut proto = graphs.get(k).clone();
            if let Some(g) = proto.graph.as_mut() {
                g.initializer.iter_mut().for_each(|t| data.externalize(t));
            }
            proto
        })
        .collect();
    publish(data, &protos, graphs.precision, dir)
}

/// Writes the data file, then the graphs that refer to it.
fn publish(
    data: DataFile,
    protos: &[ModelProto],
    precision: Precision,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut written = vec![data.finish()?];
    for (kind, proto) in GraphKind::ALL.iter().zip(protos) {
        let path = dir.join(kind.file_name(precision));
        written.push(onnx::write_model(proto, &path)?);
        // A per-graph data file of an older export would mislead: remove it.
        let stale = path.with_extension("onnx.data");
        if stale.exists() {
            std::fs::remove_file(&stale)
                .with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    Ok(written)
}

/// Exports `model` into `dir` (created if missing): `encoder.onnx`,
/// `decoder.onnx`, `decoder_full.onnx` and their weights,
/// `weights.onnx.data`, and the `_fp16` set when `opts.fp16`. Each weight
/// is streamed to the data file once, straight from the model's arrays;
/// the graphs hold only their structure. Every file is written atomically
/// (the data file before the graphs that refer to it). Returns the files
/// written.
pub fn write_dir(model: &Model, opts: &ExportOptions, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = vec![];
    let mut precisions = vec![Precision::Fp32];
    if opts.fp16 {
        precisions.push(Precision::Fp16);
    }
    for p in precisions {
        let mut store = WeightStore::File(DataFile::create(&dir.join(p.data_file_name()))?);
        let protos = GraphKind::ALL
            .iter()
            .map(|&kind| export_graph(model, kind, p, opts, &mut store))
            .collect::<Result<Vec<_>>>()?;
        let WeightStore::File(data) = store else {
            unreachable!("a file store stays one")
        };
        written.extend(publish(data, &protos, p, dir)?);
    }
    Ok(written)
}
