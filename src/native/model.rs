//! The model in the native engine's layout: every linear map packed for
//! [`super::gemm`], fused q|k|v (self-attention) and k|v (cross-attention)
//! projections, position tables materialised, and the row-wise operations
//! (LayerNorm, residual scales, activations, attention, log-softmax) that
//! follow `shared/spec/fairseq.md` exactly as the exported graphs do.

use super::gemm::Packed;
use super::quant::{BPacked, QPacked};
use super::ComputeType;
use crate::export::GraphInfo;
use crate::spec::LN_EPS;
use crate::spec::{self, Activation, Body, Model, Positions, SublayerRef};
use anyhow::{ensure, Result};
use ndarray::{concatenate, ArcArray2, Array2, Axis};
use std::ops::Range;

/// LayerNorm affine parameters.
pub(crate) struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Norm {
    fn of(ln: &spec::LayerNorm) -> Norm {
        Norm {
            gamma: ln.gamma.to_vec(),
            beta: ln.beta.to_vec(),
        }
    }

    /// Normalises every row of `x` (`[rows, d]`) in place.
    pub(crate) fn apply(&self, x: &mut [f32]) {
        let d = self.gamma.len();
        for row in x.chunks_exact_mut(d) {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + LN_EPS).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

/// `x ⊙ ω + g · h`.
pub(crate) struct Residual {
    omega: Option<Vec<f32>>,
    gate: Option<f32>,
}

impl Residual {
    /// `x ← x ⊙ ω + g · h` over rows of width `d`.
    fn apply(&self, x: &mut [f32], h: &[f32], d: usize) {
        match (&self.omega, self.gate) {
            (None, None) => x.iter_mut().zip(h).for_each(|(x, h)| *x += h),
            (omega, gate) => {
                for (xr, hr) in x.chunks_exact_mut(d).zip(h.chunks_exact(d)) {
                    for (j, (x, &h)) in xr.iter_mut().zip(hr).enumerate() {
                        let xs = match omega {
                            Some(o) if o.len() == 1 => *x * o[0],
                            Some(o) => *x * o[j],
                            None => *x,
                        };
                        let hs = match gate {
                            Some(g) => h * g,
                            None => h,
                        };
                        *x = xs + hs;
                    }
                }
            }
        }
    }
}

/// A sublayer: its function, LayerNorm and residual scale.
pub(crate) struct Sub<F> {
    pub f: F,
    norm: Option<Norm>,
    res: Residual,
}

impl<F> Sub<F> {
    /// The sublayer `s` of the spec's walk, with its function packed as `f`.
    fn of(s: &SublayerRef, f: F) -> Sub<F> {
        Sub {
            f,
            norm: s.norm.as_ref().map(Norm::of),
            res: Residual {
                omega: s.residual.omega.clone(),
                gate: s.residual.gate,
            },
        }
    }

    /// Runs the sublayer on the stream `x` (`[rows, d]`) in place:
    /// Pre-LN `x + F(LN(x))`, else `LN(x ⊙ ω + g·F(x))` (LN when present).
    /// `body(input, output)` computes `F`; `tmp` holds the normalised input.
    pub(crate) fn run(
        &self,
        x: &mut [f32],
        d: usize,
        pre_ln: bool,
        tmp: &mut Vec<f32>,
        out: &mut Vec<f32>,
        body: impl FnOnce(&[f32], &mut Vec<f32>),
    ) {
        if pre_ln {
            let input: &[f32] = match &self.norm {
                Some(n) => {
                    tmp.clear();
                    tmp.extend_from_slice(x);
                    n.apply(tmp);
                    tmp
                }
                None => x,
            };
            body(input, out);
            self.res.apply(x, out, d);
        } else {
            body(x, out);
            self.res.apply(x, out, d);
            if let Some(n) = &self.norm {
                n.apply(x);
            }
        }
    }
}

/// A linear map packed for one [`ComputeType`].
pub(crate) enum Linear {
    F32(Packed),
    I8(QPacked),
    Bf16(BPacked),
}

impl Linear {
    /// Packs the rows of `ws` stacked along the output axis (fused
    /// projections), with `bias` (missing biases are zero).
    pub(crate) fn new(
        ws: &[ndarray::ArrayView2<f32>],
        bias: Option<Vec<f32>>,
        ct: ComputeType,
    ) -> Linear {
        if ct == ComputeType::Float32 {
            return Linear::F32(if ws.len() == 1 {
                Packed::new(ws[0], bias.as_deref())
            } else {
                let w = concatenate(Axis(0), ws).expect("validated shapes");
                Packed::new(w.view(), bias.as_deref())
            });
        }
        // Quantized straight from the model's rows: no packed float copy.
        let std: Vec<_> = ws.iter().map(|w| w.as_standard_layout()).collect();
        let k = ws[0].ncols();
        let rows: Vec<&[f32]> = std
            .iter()
            .flat_map(|w| {
                w.as_slice()
                    .expect("standard layout")
                    .chunks_exact(k.max(1))
            })
            .collect();
        match ct {
            ComputeType::Int8 => Linear::I8(QPacked::new(k, rows.into_iter(), bias)),
            _ => Linear::Bf16(BPacked::new(k, rows.into_iter(), bias)),
        }
    }

    /// `out[m × n] = x[m × k] · Wᵀ + b`.
    pub(crate) fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) {
        match self {
            Linear::F32(p) => p.forward(x, m, out),
            Linear::I8(p) => p.forward(x, m, out),
            Linear::Bf16(p) => p.forward(x, m, out),
        }
    }

    /// Columns `cols` of [`Linear::forward`] into `out[m × cols.len()]`
    /// (same bits); `cols` aligned to [`LOGIT_TILE`]-compatible panels.
    pub(crate) fn forward_cols(&self, x: &[f32], m: usize, cols: Range<usize>, out: &mut [f32]) {
        match self {
            Linear::F32(p) => p.forward_cols(x, m, cols, out),
            Linear::I8(p) => p.forward_cols(x, m, cols, out),
            Linear::Bf16(p) => p.forward_cols(x, m, cols, out),
        }
    }

    /// Output width.
    pub(crate) fn n(&self) -> usize {
        match self {
            Linear::F32(p) => p.n,
            Linear::I8(p) => p.n,
            Linear::Bf16(p) => p.n,
        }
    }

    /// Resident bytes of the packed weight.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Linear::F32(p) => p.bytes(),
            Linear::I8(p) => p.bytes(),
            Linear::Bf16(p) => p.bytes(),
        }
    }
}

/// Self-attention: fused `q|k|v` and the output projection.
pub(crate) struct SelfAttn {
    pub qkv: Linear,
    pub out: Linear,
}

/// Cross-attention: `q` on the decoder stream, fused `k|v` on the encoder
/// output, the output projection.
pub(crate) struct CrossAttn {
    pub q: Linear,
    pub kv: Linear,
    pub out: Linear,
}

pub(crate) struct Ffn {
    pub fc1: Linear,
    pub fc2: Linear,
}

pub(crate) struct EncoderLayer {
    pub attn: Sub<SelfAttn>,
    pub ffn: Sub<Ffn>,
}

pub(crate) struct DecoderLayer {
    pub attn: Sub<SelfAttn>,
    pub cross: Sub<CrossAttn>,
    pub ffn: Sub<Ffn>,
}

/// Sinusoidal rows kept precomputed; later rows are computed when used, so
/// a config's `max_*_positions` never sizes an allocation.
const CACHED_POSITION_ROWS: usize = 1024 + spec::PAD + 1;

/// Where position rows come from.
enum PosTable {
    /// A learned table (what the file holds).
    Learned(Array2<f32>),
    /// fairseq's sinusoidal table of `rows` rows: the first rows cached,
    /// the rest computed from `freqs`.
    Sinusoidal {
        rows: usize,
        cached: Array2<f32>,
        freqs: Vec<f32>,
    },
}

/// Token table (one table shared by both stacks when the model ties them;
/// none when it is the float32 output projection, whose packed rows hold
/// the same values), scale, position table, `layernorm_embedding`.
pub(crate) struct Embed {
    tokens: Option<ArcArray2<f32>>,
    rows: usize,
    scale: f32,
    positions: Option<PosTable>,
    norm: Option<Norm>,
}

impl Embed {
    /// `e` with `tokens` as its table (`e.tokens` is not read); `None`: the
    /// packed output projection's rows (`rows × d`).
    fn of(
        e: spec::Embedding,
        tokens: Option<ArcArray2<f32>>,
        (rows, d): (usize, usize),
        max_positions: usize,
    ) -> Embed {
        Embed {
            tokens,
            rows,
            scale: e.scale,
            positions: match e.positions {
                Positions::None => None,
                Positions::Sinusoidal => {
                    let rows = spec::position_rows(max_positions);
                    Some(PosTable::Sinusoidal {
                        rows,
                        cached: spec::sinusoidal_table(rows.min(CACHED_POSITION_ROWS), d),
                        freqs: spec::sinusoidal_freqs(d),
                    })
                }
                Positions::Learned(t) => Some(PosTable::Learned(t)),
            },
            norm: e.layernorm.as_ref().map(Norm::of),
        }
    }

    /// Appends the embedding of `token` at position row `pos` to `out`
    /// (`output`: the model's output projection, read when the table is it).
    pub(crate) fn push(&self, token: usize, pos: usize, out: &mut Vec<f32>, output: &Linear) {
        let start = out.len();
        let s = self.scale;
        match (&self.tokens, output) {
            (Some(t), _) => out.extend(
                t.row(token)
                    .iter()
                    .map(|v| if s != 1.0 { v * s } else { *v }),
            ),
            (None, Linear::F32(p)) => {
                out.extend(p.row(token).map(|v| if s != 1.0 { v * s } else { v }))
            }
            (None, _) => unreachable!("only a float32 projection stands for a token table"),
        }
        let add = |out: &mut [f32], row: &[f32]| {
            for (o, p) in out.iter_mut().zip(row) {
                *o += p;
            }
        };
        match &self.positions {
            None => {}
            Some(PosTable::Learned(t)) | Some(PosTable::Sinusoidal { cached: t, .. })
                if pos < t.nrows() =>
            {
                for (o, p) in out[start..].iter_mut().zip(t.row(pos)) {
                    *o += p;
                }
            }
            Some(PosTable::Learned(_)) => {}
            Some(PosTable::Sinusoidal { freqs, .. }) => {
                let mut row = vec![0f32; out.len() - start];
                spec::sinusoidal_row_with(freqs, pos, &mut row);
                add(&mut out[start..], &row);
            }
        }
    }

    /// Applies `layernorm_embedding` (if any) to rows of embeddings.
    pub(crate) fn finish(&self, x: &mut [f32]) {
        if let Some(n) = &self.norm {
            n.apply(x);
        }
    }

    /// Number of position rows (positions are `PAD + 1 + k`).
    pub(crate) fn position_rows(&self) -> Option<usize> {
        self.positions.as_ref().map(|p| match p {
            PosTable::Learned(t) => t.nrows(),
            PosTable::Sinusoidal { rows, .. } => *rows,
        })
    }
}

/// A model ready for the native engine.
pub struct NativeModel {
    pub(crate) info: GraphInfo,
    pub(crate) activation: Activation,
    pub(crate) enc_d: usize,
    pub(crate) enc_heads: usize,
    pub(crate) enc_pre: bool,
    pub(crate) dec_d: usize,
    pub(crate) dec_heads: usize,
    pub(crate) dec_pre: bool,
    pub(crate) enc_embed: Embed,
    pub(crate) enc_layers: Vec<EncoderLayer>,
    pub(crate) enc_final: Option<Norm>,
    pub(crate) dec_embed: Embed,
    pub(crate) dec_layers: Vec<DecoderLayer>,
    pub(crate) dec_final: Option<Norm>,
    pub(crate) output: Linear,
    pub(crate) compute_type: ComputeType,
}

/// Whether the encoder's and decoder's token tables are one tied table
/// (equal values: a folded model unties them), held once by the engine.
fn shares_tokens(m: &Model) -> bool {
    let w = &m.weights;
    m.tying.encoder_decoder && w.encoder_embed.tokens == w.decoder_embed.tokens
}

/// Whether `table` can be read from the packed output projection: float32
/// (the packed values are the weights themselves) and the projection is
/// this table (one allocation, or equal values).
fn is_projection(table: &ArcArray2<f32>, m: &Model, ct: ComputeType) -> bool {
    let out = &m.weights.output_projection;
    ct == ComputeType::Float32
        && table.dim() == out.dim()
        && (table.as_ptr() == out.as_ptr() || table == out)
}

/// For each stack, whether its token table is read from the projection.
fn tables_from_projection(m: &Model, ct: ComputeType) -> [bool; 2] {
    let w = &m.weights;
    [
        is_projection(&w.encoder_embed.tokens, m, ct),
        is_projection(&w.decoder_embed.tokens, m, ct),
    ]
}

/// `t`, leaving an empty table behind.
fn take_table(t: &mut ArcArray2<f32>) -> ArcArray2<f32> {
    std::mem::replace(t, Array2::zeros((0, 0)).into_shared())
}

/// `e`, leaving an empty table behind (the consuming constructor moves the
/// token tables into the engine instead of copying them).
fn take_embedding(e: &mut spec::Embedding) -> spec::Embedding {
    let empty = spec::Embedding {
        tokens: Array2::zeros((0, 0)).into_shared(),
        scale: e.scale,
        positions: Positions::None,
        layernorm: None,
    };
    std::mem::replace(e, empty)
}

/// Several linears fused along the output axis (missing biases are zero).
fn fused(ls: &[&spec::Linear], ct: ComputeType) -> Linear {
    let ws: Vec<_> = ls.iter().map(|l| l.weight.view()).collect();
    let bias: Option<Vec<f32>> = ls.iter().any(|l| l.bias.is_some()).then(|| {
        ls.iter()
            .flat_map(|l| match &l.bias {
                Some(b) => b.to_vec(),
                None => vec![0.0; l.weight.nrows()],
            })
            .collect()
    });
    Linear::new(&ws, bias, ct)
}

impl NativeModel {
    /// Builds the engine's layout from a recognised model (unfolded or
    /// folded: residual scales are applied as they are), in float32.
    pub fn new(m: &Model) -> Result<NativeModel> {
        NativeModel::with_compute_type(m, ComputeType::Float32)
    }

    /// As [`NativeModel::new`], with the linear maps in `ct` (a concrete
    /// type: resolve `auto` first with [`ComputeType::resolve`]). Packs
    /// from the borrowed weights: only the tables the engine keeps as they
    /// are (token and position tables, norms) are copied, never the model.
    pub fn with_compute_type(m: &Model, ct: ComputeType) -> Result<NativeModel> {
        let info = NativeModel::check(m, ct)?;
        let w = &m.weights;
        let shared = shares_tokens(m);
        let dec_embed = if shared {
            let e = &w.decoder_embed;
            spec::Embedding {
                tokens: Array2::zeros((0, 0)).into_shared(), // the encoder's is used
                scale: e.scale,
                positions: e.positions.clone(),
                layernorm: e.layernorm.clone(),
            }
        } else {
            w.decoder_embed.clone()
        };
        let embeds = (w.encoder_embed.clone(), dec_embed);
        let layers = (w.encoder_layers.iter(), w.decoder_layers.iter());
        let out = (None, tables_from_projection(m, ct));
        NativeModel::pack(m, info, (embeds, shared), layers, out, ct)
    }

    /// As [`NativeModel::with_compute_type`], consuming `m`: each layer's
    /// float32 weights are freed as soon as that layer is packed and the
    /// token tables move into the engine, so the load peak is the model
    /// plus one packed layer, not two models.
    pub fn from_model(mut m: Model, ct: ComputeType) -> Result<NativeModel> {
        let info = NativeModel::check(&m, ct)?;
        let shared = shares_tokens(&m);
        let from_projection = tables_from_projection(&m, ct);
        // Packed first only when it stands for the table (whose float32 copy
        // is then dropped); else last, once the layers' float32 are freed.
        let output = from_projection[1].then(|| {
            let o = Linear::new(&[m.weights.output_projection.view()], None, ct);
            m.weights.output_projection = Array2::zeros((0, 0)).into_shared();
            o
        });
        let w = &mut m.weights;
        let embeds = (
            take_embedding(&mut w.encoder_embed),
            take_embedding(&mut w.decoder_embed),
        );
        let layers = (
            std::mem::take(&mut w.encoder_layers).into_iter(),
            std::mem::take(&mut w.decoder_layers).into_iter(),
        );
        let out = (output, from_projection);
        NativeModel::pack(&m, info, (embeds, shared), layers, out, ct)
    }

    /// Refuses what the engine cannot run; the graph description of `m`.
    fn check(m: &Model, ct: ComputeType) -> Result<GraphInfo> {
        ensure!(
            ct != ComputeType::Auto,
            "internal error: compute type auto not resolved"
        );
        ensure!(
            ct != ComputeType::Bfloat16 || super::quant::bf16_kernel().is_some(),
            "--compute-type bfloat16 needs a CPU with AVX512_BF16 (this one has none)"
        );
        crate::spec::validate(m)?;
        let c = &m.config;
        let enc_d = m.weights.encoder_embed.tokens.ncols();
        let dec_d = m.weights.decoder_embed.tokens.ncols();
        ensure!(
            c.encoder_attention_heads > 0 && enc_d.is_multiple_of(c.encoder_attention_heads),
            "encoder width {enc_d} is not a multiple of {} heads",
            c.encoder_attention_heads
        );
        ensure!(
            c.decoder_attention_heads > 0 && dec_d.is_multiple_of(c.decoder_attention_heads),
            "decoder width {dec_d} is not a multiple of {} heads",
            c.decoder_attention_heads
        );
        Ok(GraphInfo::of(m))
    }

    /// Packs the layers one at a time as the iterators yield them (owned
    /// layers are freed once packed); config, final norms and the output
    /// projection come from `m` (the projection packed last, unless given
    /// already packed), embeddings and layers from the arguments (`shared`:
    /// the decoder uses the encoder's token table; `from_projection`: per
    /// stack, its table is read from the float32 projection's packed rows).
    fn pack<E, D>(
        m: &Model,
        info: GraphInfo,
        ((enc_embed, dec_embed), shared): ((spec::Embedding, spec::Embedding), bool),
        (enc, dec): (impl Iterator<Item = E>, impl Iterator<Item = D>),
        (output, from_projection): (Option<Linear>, [bool; 2]),
        ct: ComputeType,
    ) -> Result<NativeModel>
    where
        E: std::borrow::Borrow<spec::EncoderLayer>,
        D: std::borrow::Borrow<spec::DecoderLayer>,
    {
        let (c, w) = (&m.config, &m.weights);
        let (mut enc_embed, mut dec_embed) = (enc_embed, dec_embed);
        let enc_tokens = take_table(&mut enc_embed.tokens);
        let dec_tokens = if shared {
            dec_embed.tokens = Array2::zeros((0, 0)).into_shared(); // one table for both
            enc_tokens.clone()
        } else {
            take_table(&mut dec_embed.tokens)
        };
        let (enc_dim, dec_dim) = (enc_tokens.dim(), dec_tokens.dim());
        // A table the projection stands for is dropped here, before the
        // layers are packed.
        let enc_table = (!from_projection[0]).then_some(enc_tokens);
        let dec_table = (!from_projection[1]).then_some(dec_tokens);
        let packed = |l: &spec::Linear| fused(&[l], ct);
        let ffn = |s: &SublayerRef| match s.f {
            Body::FeedForward(f) => Sub::of(
                s,
                Ffn {
                    fc1: packed(&f.fc1),
                    fc2: packed(&f.fc2),
                },
            ),
            Body::Attention(_) => unreachable!("the walk's FFN slot holds an FFN"),
        };
        let attn = |s: &SublayerRef| match s.f {
            Body::Attention(a) => Sub::of(
                s,
                SelfAttn {
                    qkv: fused(&[&a.q, &a.k, &a.v], ct),
                    out: packed(&a.out),
                },
            ),
            Body::FeedForward(_) => unreachable!("the walk's attention slot holds attention"),
        };
        let cross = |s: &SublayerRef| match s.f {
            Body::Attention(a) => Sub::of(
                s,
                CrossAttn {
                    q: packed(&a.q),
                    kv: fused(&[&a.k, &a.v], ct),
                    out: packed(&a.out),
                },
            ),
            Body::FeedForward(_) => unreachable!("the walk's attention slot holds attention"),
        };
        // Each owned layer is consumed (its float32 weights freed) once packed.
        let encoder_layer = |(i, l): (usize, E)| {
            let [a, f] = l.borrow().sublayers(i);
            EncoderLayer {
                attn: attn(&a),
                ffn: ffn(&f),
            }
        };
        let decoder_layer = |(i, l): (usize, D)| {
            let [a, c, f] = l.borrow().sublayers(i);
            DecoderLayer {
                attn: attn(&a),
                cross: cross(&c),
                ffn: ffn(&f),
            }
        };
        Ok(NativeModel {
            info,
            activation: c.activation_fn,
            enc_d: enc_dim.1,
            enc_heads: c.encoder_attention_heads,
            enc_pre: c.encoder_normalize_before,
            dec_d: dec_dim.1,
            dec_heads: c.decoder_attention_heads,
            dec_pre: c.decoder_normalize_before,
            enc_embed: Embed::of(enc_embed, enc_table, enc_dim, c.max_source_positions),
            enc_layers: enc.enumerate().map(encoder_layer).collect(),
            enc_final: w.encoder_final_norm.as_ref().map(Norm::of),
            dec_embed: Embed::of(dec_embed, dec_table, dec_dim, c.max_target_positions),
            dec_layers: dec.enumerate().map(decoder_layer).collect(),
            dec_final: w.decoder_final_norm.as_ref().map(Norm::of),
            output: output.unwrap_or_else(|| Linear::new(&[w.output_projection.view()], None, ct)),
            compute_type: ct,
        })
    }

    pub fn info(&self) -> &GraphInfo {
        &self.info
    }

    pub fn compute_type(&self) -> ComputeType {
        self.compute_type
    }

    /// Resident bytes of the packed linear maps (embeddings excluded).
    pub fn linear_bytes(&self) -> usize {
        let attn = |a: &SelfAttn| a.qkv.bytes() + a.out.bytes();
        let ffn = |f: &Ffn| f.fc1.bytes() + f.fc2.bytes();
        let enc: usize = self
            .enc_layers
            .iter()
            .map(|l| attn(&l.attn.f) + ffn(&l.ffn.f))
            .sum();
        let dec: usize = self
            .dec_layers
            .iter()
            .map(|l| {
                let c = &l.cross.f;
                attn(&l.attn.f) + ffn(&l.ffn.f) + c.q.bytes() + c.kv.bytes() + c.out.bytes()
            })
            .sum();
        enc + dec + self.output.bytes()
    }

    pub(crate) fn dec_embed_rows(&self) -> usize {
        self.dec_embed.rows
    }
}

/// The feed-forward activation in place, in float32 as fairseq computes it.
pub(crate) fn activate(x: &mut [f32], act: Activation) {
    match act {
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Linear => {}
        Activation::Tanh => x.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Swish => x.iter_mut().for_each(|v| *v *= 1.0 / (1.0 + (-*v).exp())),
        Activation::Gelu => x.iter_mut().for_each(|v| {
            let e = libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2) + 1.0;
            *v = *v * e * 0.5;
        }),
        Activation::GeluAccurate => {
            let a = (2.0f64 / std::f64::consts::PI).sqrt() as f32;
            x.iter_mut().for_each(|v| {
                let x = *v;
                let inner = (x + x * x * x * 0.044715) * a;
                *v = x * 0.5 * (inner.tanh() + 1.0);
            })
        }
    }
}

super::multiversion! {
    /// Attention of one query row over every head in one pass:
    /// `out[h] = softmax(q[h] · kⱼ[h]) · vⱼ[h]` for the `heads` slices of width
    /// `d / heads` of `q`, of the key rows `key(j)` and value rows `value(j)`
    /// (`j < n`, whole `d`-wide rows, each fetched once for all heads).
    /// `probs` is scratch (`heads × n`). Each head's arithmetic is the same as
    /// one head at a time (same dot products, same order of sums over `j`):
    /// only the loops are exchanged.
    pub(crate) fn attend_heads<'a>(
        q: &[f32],
        heads: usize,
        n: usize,
        key: impl Fn(usize) -> &'a [f32],
        value: impl Fn(usize) -> &'a [f32],
        probs: &mut Vec<f32>,
        out: &mut [f32]
    ) {
        attend_body(q, heads, n, key, value, probs, out)
    }
}

#[inline(always)]
fn attend_body<'a>(
    q: &[f32],
    heads: usize,
    n: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    probs: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len() / heads;
    probs.clear();
    probs.resize(heads * n, 0.0);
    let mut max = vec![f32::NEG_INFINITY; heads];
    for j in 0..n {
        let k = key(j);
        for h in 0..heads {
            let s = dot(&q[h * hd..][..hd], &k[h * hd..][..hd]);
            max[h] = max[h].max(s);
            probs[h * n + j] = s;
        }
    }
    let mut sum = vec![0.0f32; heads];
    for h in 0..heads {
        for p in probs[h * n..][..n].iter_mut() {
            *p = (*p - max[h]).exp();
            sum[h] += *p;
        }
    }
    out.fill(0.0);
    for j in 0..n {
        let v = value(j);
        for h in 0..heads {
            let p = probs[h * n + j] / sum[h];
            for (o, v) in out[h * hd..][..hd].iter_mut().zip(&v[h * hd..][..hd]) {
                *o += p * v;
            }
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: vectorisable, and the same order for every row.
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b[..a.len()].split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// Width of the column tiles of the output projection and log-softmax: a
/// multiple of every packed panel width ([`super::gemm::NR`],
/// [`super::quant::NQ`]).
pub(crate) const LOGIT_TILE: usize = 1024;

/// A row's log-softmax normaliser, summed tile by tile over columns
/// `[LOGIT_TILE·t, LOGIT_TILE·(t+1))` so that the fused output projection
/// (which never holds a whole row, [`super::engine`]) and
/// [`log_softmax`] give the same bits: per tile its max `m_t` and
/// `s_t = Σ exp(v − m_t)` ([`tile_stats`]); then `M = max m_t`,
/// `S = Σ_t s_t · exp(m_t − M)` in tile order, and `log p(v) = v − M − ln S`.
pub(crate) fn normaliser(tiles: &[(f32, f32)]) -> (f32, f32) {
    let max = tiles.iter().fold(f32::NEG_INFINITY, |m, t| m.max(t.0));
    let sum: f32 = tiles.iter().map(|&(m, s)| s * (m - max).exp()).sum();
    (max, sum.ln())
}

/// One tile's `(max, Σ exp(v − max))` for [`normaliser`].
pub(crate) fn tile_stats(tile: &[f32]) -> (f32, f32) {
    let max = row_max(tile);
    let sum = if max.is_finite() {
        exp_sum(tile, max)
    } else if max == f32::NEG_INFINITY {
        0.0
    } else {
        f32::NAN // +inf: as exp(inf - inf)
    };
    (max, sum)
}

super::multiversion! {
fn row_max(x: &[f32]) -> f32 {
    lanes_max(x, |v| v, f32::NEG_INFINITY)
}
}

super::multiversion! {
/// `max |v|` over `x` (0 when empty), NaN ignored.
pub(crate) fn abs_max(x: &[f32]) -> f32 {
    lanes_max(x, f32::abs, 0.0)
}
}

/// `max(init, f(v) for v in x)`, NaN ignored (as `f32::max` does), over 16
/// lanes so that it vectorises (a `fold(f32::max)` does not).
#[inline(always)]
fn lanes_max(x: &[f32], f: impl Fn(f32) -> f32 + Copy, init: f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = x.chunks_exact(16);
    let mut m = chunks.remainder().iter().fold(init, |m, &v| m.max(f(v)));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let v = f(v);
            *a = if v > *a { v } else { *a };
        }
    }
    for a in acc {
        m = m.max(a);
    }
    m
}

/// `x ← log_softmax(x)` per row of width `n`, normalised as [`normaliser`]
/// says. The exponentials are [`exp_sum`]'s (vectorised, ≤ 2 ulp per
/// term): with libm's `expf` one value at a time they cost as much as the
/// output projection on a 32k vocabulary.
pub(crate) fn log_softmax(x: &mut [f32], n: usize) {
    let mut tiles = Vec::with_capacity(n.div_ceil(LOGIT_TILE));
    for row in x.chunks_exact_mut(n) {
        tiles.clear();
        tiles.extend(row.chunks(LOGIT_TILE).map(tile_stats));
        let (max, lse) = normaliser(&tiles);
        row.iter_mut().for_each(|v| *v = *v - max - lse);
    }
}

super::multiversion! {
/// `Σ exp(v − max)` over `row` (every `v − max ≤ 0`), with a branch-free
/// exponential the compiler vectorises: `2ⁿ · p(r)`, `r = x − n·ln 2`,
/// `p` the degree-6 Taylor polynomial (|r| ≤ ln2/2: relative error < 2⁻²³).
fn exp_sum(row: &[f32], max: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let exp = |v: f32| {
        // Not clamp(): NaN must become −87 here.
        #[allow(clippy::manual_clamp)]
        let x = (v - max).max(-87.0).min(0.0);
        // round(y) for y ≤ 0 (half away from zero) without a libm call or
        // a saturating conversion, so that the loop vectorises:
        // trunc(y − 0.5), exact here.
        // SAFETY: y − 0.5 is in [−126, −0.5] (x is clamped, NaN to −87).
        let n: i32 = unsafe { (x * std::f32::consts::LOG2_E - 0.5).to_int_unchecked() };
        let nf = n as f32;
        let r = x - nf * LN2_HI - nf * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        p * f32::from_bits(((n + 127) as u32) << 23)
    };
    let mut acc = [0.0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}
}

#[cfg(test)]
mod tests {
    /// Over several column tiles, each log-prob is within float32 error of
    /// a float64 log-softmax.
    #[test]
    fn tiled_log_softmax_matches_float64() {
        let n = 3 * super::LOGIT_TILE + 77;
        let row: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 4.0)
            .collect();
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let mut got = row.clone();
        super::log_softmax(&mut got, n);
        for (g, &v) in got.iter().zip(&row) {
            let want = v as f64 - lse;
            assert!((*g as f64 - want).abs() <= 1e-5, "{g} vs {want}");
        }
        let mut inf = vec![f32::NEG_INFINITY; n];
        inf[5] = 0.0;
        super::log_softmax(&mut inf, n);
        assert_eq!((inf[5], inf[6]), (0.0, f32::NEG_INFINITY));
    }

    #[test]
    fn fast_exp_sum_is_within_a_few_ulp_of_libm() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 1000) as f32 * -0.05 + 3.0)
            .collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let got = super::exp_sum(&row, max) as f64;
        assert!((got - want).abs() <= want * 1e-6, "{got} vs {want}");
    }
}
