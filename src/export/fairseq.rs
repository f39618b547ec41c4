//! The three graphs of a fairseq encoder-decoder Transformer, built from a
//! [`spec::Model`]: `encoder`, `decoder` (one incremental step with a
//! self-attention K/V cache) and `decoder_full` (teacher forcing).
//!
//! Semantics follow `shared/spec/fairseq.md` (fairseq 0.12: pad embeddings
//! zeroed in the encoder, decoder pads masked as keys) and the residual forms
//! of `shared/spec/fold.md` §1. The names and shapes of inputs and outputs
//! are listed in [`super`].

use super::graph::{Graph, V};
use super::onnx::{Dim, Elem, WeightStore};
use crate::spec::{
    self, Activation, Body, Embedding, FeedForward, LayerNorm, Linear, Model, Positions, Residual,
    Stack, SublayerKind, SublayerRef,
};
use anyhow::Result;
use ndarray::{concatenate, Array2, Axis};
use std::borrow::Cow;
use tract_onnx::pb;

/// Re-exported from [`crate::spec`], which owns the model's rules.
pub use crate::spec::{validate, LN_EPS};

const B: Dim = Dim::Sym("batch");
const S: Dim = Dim::Sym("src_len");
const T: Dim = Dim::Sym("tgt_len");
const P: Dim = Dim::Sym("past_len");

/// Dimensions of the decoder a runtime needs to build its caches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GraphInfo {
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_embed_dim: usize,
    pub decoder_embed_dim: usize,
    pub decoder_heads: usize,
    pub decoder_head_dim: usize,
    pub src_vocab: usize,
    pub tgt_vocab: usize,
    pub max_source_positions: Option<usize>,
    pub max_target_positions: Option<usize>,
}

/// The most sinusoidal positions an exported graph carries rows for (its
/// table is a weight): a config's larger `max_*_positions` is capped here,
/// and the runtimes refuse longer inputs with a message.
pub const GRAPH_SINUSOIDAL_POSITIONS: usize = 16384;

impl GraphInfo {
    pub fn of(m: &Model) -> GraphInfo {
        let w = &m.weights;
        let dd = w.decoder_embed.tokens.ncols();
        let hd = m.config.decoder_attention_heads.max(1);
        let max = |e: &Embedding| match &e.positions {
            Positions::None => None,
            Positions::Sinusoidal => Some(GRAPH_SINUSOIDAL_POSITIONS),
            Positions::Learned(t) => Some(t.nrows().saturating_sub(spec::PAD + 1)),
        };
        GraphInfo {
            encoder_layers: w.encoder_layers.len(),
            decoder_layers: w.decoder_layers.len(),
            encoder_embed_dim: w.encoder_embed.tokens.ncols(),
            decoder_embed_dim: dd,
            decoder_heads: hd,
            decoder_head_dim: dd / hd,
            src_vocab: w.encoder_embed.tokens.nrows(),
            tgt_vocab: w.output_projection.nrows(),
            max_source_positions: max(&w.encoder_embed)
                .map(|n| n.min(m.config.max_source_positions)),
            max_target_positions: max(&w.decoder_embed)
                .map(|n| n.min(m.config.max_target_positions)),
        }
    }
}

// ---- building blocks ----------------------------------------------------

/// `[out, in]` weights stored transposed (`[in, out]`) so `x · W` is a plain MatMul.
fn linear_init(g: &mut Graph, name: &str, lins: &[&Linear]) -> (V, Option<V>) {
    let i = lins[0].weight.ncols();
    let o: usize = lins.iter().map(|l| l.weight.nrows()).sum();
    let f = g.float;
    let wn = g.weight_with(&format!("{name}.weight_t"), &[i, o], f, || {
        let ts: Vec<_> = lins.iter().map(|l| l.weight.t()).collect();
        let w = concatenate(Axis(1), &ts).expect("validated shapes");
        Cow::Owned(
            w.as_standard_layout()
                .into_owned()
                .into_raw_vec_and_offset()
                .0,
        )
    });
    let bn = lins.iter().any(|l| l.bias.is_some()).then(|| {
        g.weight_with(&format!("{name}.bias"), &[o], f, || {
            let b = lins.iter().flat_map(|l| match &l.bias {
                Some(b) => b.to_vec(),
                None => vec![0.0; l.weight.nrows()],
            });
            Cow::Owned(b.collect())
        })
    });
    (wn, bn)
}

/// The values of a row-major array, borrowed when it is contiguous.
fn values<'a, D: ndarray::Dimension>(a: &'a ndarray::Array<f32, D>) -> Cow<'a, [f32]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

/// `x Wᵀ + b` for one or several linears fused along the output axis.
fn linear(g: &mut Graph, x: &str, name: &str, lins: &[&Linear]) -> V {
    let (w, b) = linear_init(g, name, lins);
    let y = g.matmul(x, &w);
    match b {
        Some(b) => g.add(&y, &b),
        None => y,
    }
}

fn layer_norm(g: &mut Graph, x: &str, ln: &LayerNorm, name: &str) -> V {
    let d = ln.gamma.len();
    let gamma = g.weight_with(&format!("{name}.weight"), &[d], Elem::F32, || {
        values(&ln.gamma)
    });
    let beta = g.weight_with(&format!("{name}.bias"), &[d], Elem::F32, || {
        values(&ln.beta)
    });
    let f = g.float;
    g.layer_norm_f32(x, f, &gamma, &beta, LN_EPS)
}

/// `x ⊙ ω + g · h` (a Mul is skipped when ω or g is absent).
fn residual(g: &mut Graph, x: &str, h: &str, r: &Residual, name: &str) -> V {
    let x = match &r.omega {
        Some(o) => {
            let w = g.weight(&format!("{name}.omega"), &[o.len()], o);
            g.mul(x, &w)
        }
        None => x.to_string(),
    };
    let h = match r.gate {
        Some(a) => {
            let w = g.weight(&format!("{name}.gate"), &[1], &[a]);
            g.mul(h, &w)
        }
        None => h.to_string(),
    };
    g.add(&x, &h)
}

/// One sublayer of the walk ([`SublayerRef`]) in its Post-LN, Pre-LN or
/// no-LN form; `body` computes its function on the (normalised) input.
fn sublayer(
    g: &mut Graph,
    x: &str,
    sub: &SublayerRef,
    pre_ln: bool,
    body: impl FnOnce(&mut Graph, &str) -> V,
) -> V {
    let (name, norm_name) = (sub.module_name(), sub.norm_name());
    if pre_ln {
        let h_in = match sub.norm {
            Some(ln) => layer_norm(g, x, ln, &norm_name),
            None => x.to_string(),
        };
        let h = body(g, &h_in);
        residual(g, x, &h, sub.residual, &name)
    } else {
        let h = body(g, x);
        let y = residual(g, x, &h, sub.residual, &name);
        match sub.norm {
            Some(ln) => layer_norm(g, &y, ln, &norm_name),
            None => y,
        }
    }
}

fn activation(g: &mut Graph, x: &str, act: Activation) -> V {
    let f = g.float;
    match act {
        Activation::Relu => g.op("Relu", &[x], vec![]),
        Activation::Tanh => g.op("Tanh", &[x], vec![]),
        Activation::Linear => x.to_string(),
        Activation::Swish => {
            let s = g.op("Sigmoid", &[x], vec![]);
            g.mul(x, &s)
        }
        Activation::Gelu => {
            // fairseq: F.gelu(x.float()) = 0.5·x·(1 + erf(x/√2)), in float32.
            let x32 = g.cast_if(x, f, Elem::F32);
            let c = g.float_scalar(std::f32::consts::FRAC_1_SQRT_2, Elem::F32);
            let one = g.float_scalar(1.0, Elem::F32);
            let half = g.float_scalar(0.5, Elem::F32);
            let t = g.mul(&x32, &c);
            let e = g.op("Erf", &[&t], vec![]);
            let e1 = g.add(&e, &one);
            let y = g.mul(&x32, &e1);
            let y = g.mul(&y, &half);
            g.cast_if(&y, Elem::F32, f)
        }
        Activation::GeluAccurate => {
            // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in float32.
            let x32 = g.cast_if(x, f, Elem::F32);
            let a = g.float_scalar((2.0f64 / std::f64::consts::PI).sqrt() as f32, Elem::F32);
            let k = g.float_scalar(0.044715, Elem::F32);
            let one = g.float_scalar(1.0, Elem::F32);
            let half = g.float_scalar(0.5, Elem::F32);
            let x2 = g.mul(&x32, &x32);
            let x3 = g.mul(&x2, &x32);
            let kx3 = g.mul(&x3, &k);
            let inner = g.add(&x32, &kx3);
            let inner = g.mul(&inner, &a);
            let th = g.op("Tanh", &[&inner], vec![]);
            let th1 = g.add(&th, &one);
            let y = g.mul(&x32, &half);
            let y = g.mul(&y, &th1);
            g.cast_if(&y, Elem::F32, f)
        }
    }
}

fn feed_forward(g: &mut Graph, x: &str, ffn: &FeedForward, act: Activation, name: &str) -> V {
    let h = linear(g, x, &format!("{name}.fc1"), &[&ffn.fc1]);
    let h = activation(g, &h, act);
    linear(g, &h, &format!("{name}.fc2"), &[&ffn.fc2])
}

/// `softmax(q kᵀ + bias) v` on `[B, H, Tq, hd]` / `[B, H, Tk, hd]`; the
/// scores, bias and softmax are float32.
fn attend(g: &mut Graph, q: &str, k: &str, v: &str, bias: Option<&str>) -> V {
    let f = g.float;
    let kt = g.transpose(k, &[0, 1, 3, 2]);
    let s = g.matmul(q, &kt);
    let s = g.cast_if(&s, f, Elem::F32);
    let s = match bias {
        Some(b) => g.add(&s, b),
        None => s,
    };
    let p = g.softmax_f32(&s, Elem::F32);
    let p = g.cast_if(&p, Elem::F32, f);
    g.matmul(&p, v)
}

/// How the residual stream is laid out. It is always 2-D, `[tokens, d]`,
/// so every linear map is one plain GEMM over all tokens of the batch.
#[derive(Clone, Copy)]
enum Layout<'a> {
    /// `[B·T, d]`; `bt` is the int64 `[2]` shape `[B, T]` of the tokens.
    Flat { bt: &'a str },
    /// One position per row: `[B, d]`.
    Step,
}

/// `[B·T, H·hd]` → `[B, H, T, hd]`.
fn split_heads(g: &mut Graph, x: &str, heads: usize, hd: usize, layout: Layout) -> V {
    match layout {
        Layout::Step => g.reshape(x, &[0, heads as i64, 1, hd as i64]),
        Layout::Flat { bt } => {
            let hh = g.ints(&[heads as i64, hd as i64]);
            let shape = g.concat(&[bt, &hh], 0);
            let y = g.op("Reshape", &[x, &shape], vec![]);
            g.transpose(&y, &[0, 2, 1, 3])
        }
    }
}

/// `[B, H, T, hd]` → `[B·T, H·hd]`.
fn merge_heads(g: &mut Graph, x: &str, d: usize, layout: Layout) -> V {
    match layout {
        Layout::Step => g.reshape(x, &[0, d as i64]),
        Layout::Flat { .. } => {
            let y = g.transpose(x, &[0, 2, 1, 3]);
            g.reshape(&y, &[-1, d as i64])
        }
    }
}

/// `[B·T, n]` → `[B, T, n]`.
fn unflatten(g: &mut Graph, x: &str, bt: &str, n: usize) -> V {
    let last = g.ints(&[n as i64]);
    let shape = g.concat(&[bt, &last], 0);
    g.op("Reshape", &[x, &shape], vec![])
}

/// Self-attention inputs of a sublayer: one fused q|k|v projection, q
/// scaled by head_dim^-½ (after its bias, as fairseq), all split into heads.
fn self_qkv(
    g: &mut Graph,
    h: &str,
    p: &str,
    a: &crate::spec::Attention,
    (d, heads, hd): (usize, usize, usize),
    layout: Layout,
) -> (V, V, V) {
    let qkv = linear(
        g,
        h,
        &format!("{p}.self_attn.qkv_proj"),
        &[&a.q, &a.k, &a.v],
    );
    let parts = g.split_last(&qkv, d, 3);
    let q = scale_q(g, &parts[0], hd);
    let q = split_heads(g, &q, heads, hd, layout);
    let k = split_heads(g, &parts[1], heads, hd, layout);
    let v = split_heads(g, &parts[2], heads, hd, layout);
    (q, k, v)
}

fn scale_q(g: &mut Graph, q: &str, hd: usize) -> V {
    let s = g.float_scalar((hd as f64).powf(-0.5) as f32, g.float);
    g.mul(q, &s)
}

/// `Where(mask, -inf, 0)` as float32.
fn mask_to_bias(g: &mut Graph, mask: &str) -> V {
    let ninf = g.float_scalar(f32::NEG_INFINITY, Elem::F32);
    let zero = g.float_scalar(0.0, Elem::F32);
    g.where_(mask, &ninf, &zero)
}

/// fairseq `make_positions`: pads get row 1, the k-th real token row 1 + k.
fn make_positions(g: &mut Graph, pad_mask: &str) -> V {
    // int32: tract evaluates int64 arithmetic on shapes symbolically.
    let real = g.op("Not", &[pad_mask], vec![]);
    let real = g.cast(&real, Elem::I32);
    let axis = g.int_scalar(1);
    let c = g.op("CumSum", &[&real, &axis], vec![]);
    let c = g.mul(&c, &real);
    let pad = g.i32_scalar(spec::PAD as i32);
    g.add(&c, &pad)
}

/// Position table to gather from: sinusoidal rows for `max_positions`, or the learned table.
fn position_table(g: &mut Graph, e: &Embedding, max_positions: usize, name: &str) -> Option<V> {
    let d = e.tokens.ncols();
    let name = format!("{name}.embed_positions.weight");
    match &e.positions {
        Positions::None => None,
        Positions::Sinusoidal => {
            let rows = spec::position_rows(max_positions.min(GRAPH_SINUSOIDAL_POSITIONS));
            let f = g.float;
            Some(g.weight_with(&name, &[rows, d], f, || {
                Cow::Owned(spec::sinusoidal_table(rows, d).into_raw_vec_and_offset().0)
            }))
        }
        Positions::Learned(t) => Some(table_init(g, t, &name)),
    }
}

/// `s·E[tokens] + P[positions]`, then `layernorm_embedding`.
fn embed(
    g: &mut Graph,
    e: &Embedding,
    table: &str,
    tokens: &str,
    positions: Option<(&str, &str)>,
    name: &str,
) -> V {
    let x = g.gather(table, tokens, 0);
    let x = if e.scale != 1.0 {
        let s = g.float_scalar(e.scale, g.float);
        g.mul(&x, &s)
    } else {
        x
    };
    let x = match positions {
        Some((ptable, idx)) => {
            let p = g.gather(ptable, idx, 0);
            g.add(&x, &p)
        }
        None => x,
    };
    match &e.layernorm {
        Some(ln) => layer_norm(g, &x, ln, &format!("{name}.layernorm_embedding")),
        None => x,
    }
}

fn table_init(g: &mut Graph, t: &Array2<f32>, name: &str) -> V {
    let f = g.float;
    g.weight_with(name, &[t.nrows(), t.ncols()], f, || values(t))
}

/// Initializer names of the token tables and the output projection: a
/// table equal to the one before it (shared embeddings, a tied output
/// projection) takes its name, so a data file stores it once.
struct TableNames {
    encoder: &'static str,
    decoder: &'static str,
    projection: &'static str,
}

impl TableNames {
    fn of(m: &Model) -> TableNames {
        let w = &m.weights;
        let encoder = "encoder.embed_tokens.weight";
        let decoder = if w.decoder_embed.tokens == w.encoder_embed.tokens {
            encoder
        } else {
            "decoder.embed_tokens.weight"
        };
        let projection = if w.output_projection == w.decoder_embed.tokens {
            decoder
        } else {
            "decoder.output_projection.weight"
        };
        TableNames {
            encoder,
            decoder,
            projection,
        }
    }
}

/// The decoder token table and the output projection, both `[vocab, d]`
/// (the projection is applied by a Gemm with `transB = 1`, so a tied
/// table is one initializer).
fn decoder_tables(g: &mut Graph, m: &Model) -> (V, V) {
    let w = &m.weights;
    let names = TableNames::of(m);
    let table = table_init(g, &w.decoder_embed.tokens, names.decoder);
    let proj = if names.projection == names.decoder {
        table.clone()
    } else {
        table_init(g, &w.output_projection, names.projection)
    };
    (table, proj)
}

fn float_elem(fp16: bool) -> Elem {
    if fp16 {
        Elem::F16
    } else {
        Elem::F32
    }
}

// ---- encoder ------------------------------------------------------------

pub fn encoder(m: &Model, fp16: bool, store: &mut WeightStore) -> Result<pb::GraphProto> {
    let f = float_elem(fp16);
    let mut g = Graph::new("encoder", f, store);
    let w = &m.weights;
    let c = &m.config;
    let d = w.encoder_embed.tokens.ncols();
    let heads = c.encoder_attention_heads;
    let hd = d / heads;
    let dd = w.decoder_embed.tokens.ncols();
    let dheads = c.decoder_attention_heads;
    let dhd = dd / dheads;

    let tokens = g.input("src_tokens", Elem::I64, &[B, S]);
    let pad_id = g.int_scalar(spec::PAD as i64);
    let pad = g.op("Equal", &[&tokens, &pad_id], vec![]);
    let table = table_init(&mut g, &w.encoder_embed.tokens, TableNames::of(m).encoder);
    let ptable = position_table(&mut g, &w.encoder_embed, c.max_source_positions, "encoder");
    let pos = ptable.as_ref().map(|_| make_positions(&mut g, &pad));
    let x = embed(
        &mut g,
        &w.encoder_embed,
        &table,
        &tokens,
        ptable.as_deref().zip(pos.as_deref()),
        "encoder",
    );
    // fairseq 0.12 zeroes the embeddings of padding positions.
    let pad3 = g.unsqueeze(&pad, &[2]);
    let zero = g.float_scalar(0.0, f);
    let x = g.where_(&pad3, &zero, &x);
    let bt = g.op("Shape", &[&tokens], vec![]);
    let layout = Layout::Flat { bt: &bt };
    let mut x = g.reshape(&x, &[-1, d as i64]);
    let bias = mask_to_bias(&mut g, &pad);
    let bias = g.unsqueeze(&bias, &[1, 2]);

    let pre = c.encoder_normalize_before;
    for s in w.stack_sublayers(Stack::Encoder) {
        let p = s.layer_prefix();
        x = sublayer(&mut g, &x, &s, pre, |g, h| match s.f {
            Body::Attention(a) => {
                let (q, k, v) = self_qkv(g, h, &p, a, (d, heads, hd), layout);
                let o = attend(g, &q, &k, &v, Some(&bias));
                let o = merge_heads(g, &o, d, layout);
                linear(g, &o, &format!("{p}.self_attn.out_proj"), &[&a.out])
            }
            Body::FeedForward(f) => feed_forward(g, h, f, c.activation_fn, &p),
        });
    }
    if let Some(ln) = &w.encoder_final_norm {
        x = layer_norm(&mut g, &x, ln, "encoder.layer_norm");
    }
    let out = unflatten(&mut g, &x, &bt, d);
    g.output(&out, "encoder_out", f, &[B, S, Dim::Fixed(d)]);
    g.output(&pad, "encoder_padding_mask", Elem::Bool, &[B, S]);
    for (i, l) in w.decoder_layers.iter().enumerate() {
        let a = &l.cross_attn.f;
        let p = format!("decoder.layers.{i}.encoder_attn");
        let kv = linear(&mut g, &x, &format!("{p}.kv_proj"), &[&a.k, &a.v]);
        let parts = g.split_last(&kv, dd, 2);
        let k = split_heads(&mut g, &parts[0], dheads, dhd, layout);
        let v = split_heads(&mut g, &parts[1], dheads, dhd, layout);
        let dims = [B, Dim::Fixed(dheads), S, Dim::Fixed(dhd)];
        g.output(&k, &format!("cross_k_{i}"), f, &dims);
        g.output(&v, &format!("cross_v_{i}"), f, &dims);
    }
    Ok(g.finish())
}

// ---- decoder ------------------------------------------------------------

enum SelfAttn<'a> {
    /// Teacher forcing: all positions, the float32 bias `[B, 1, T, T]`.
    Full { bias: &'a str },
    /// One step: the cache inputs of every layer.
    Step { past: &'a [(V, V)] },
}

/// Decoder inputs shared by both decoder graphs: the padding mask and the
/// cross-attention K/V of every layer. Returns (bias `[B,1,1,S]`, kv).
fn cross_inputs(g: &mut Graph, m: &Model) -> (V, Vec<(V, V)>) {
    let f = g.float;
    let dd = m.weights.decoder_embed.tokens.ncols();
    let heads = m.config.decoder_attention_heads;
    let mask = g.input("encoder_padding_mask", Elem::Bool, &[B, S]);
    let dims = [B, Dim::Fixed(heads), S, Dim::Fixed(dd / heads)];
    let kv = (0..m.weights.decoder_layers.len())
        .map(|i| {
            (
                g.input(&format!("cross_k_{i}"), f, &dims),
                g.input(&format!("cross_v_{i}"), f, &dims),
            )
        })
        .collect();
    let bias = mask_to_bias(g, &mask);
    let bias = g.unsqueeze(&bias, &[1, 2]);
    (bias, kv)
}

/// The decoder layers, final norm and output projection on the stream `x`
/// (`[B·T, d]`); returns (float32 log-probs `[B·T, V]`, new self K/V per
/// layer for a step).
#[allow(clippy::too_many_arguments)]
fn decoder_body(
    g: &mut Graph,
    m: &Model,
    mut x: V,
    proj: &str,
    layout: Layout,
    mode: SelfAttn,
    cross_bias: &str,
    cross: &[(V, V)],
) -> Result<(V, Vec<(V, V)>)> {
    let w = &m.weights;
    let c = &m.config;
    let f = g.float;
    let d = w.decoder_embed.tokens.ncols();
    let heads = c.decoder_attention_heads;
    let hd = d / heads;
    let pre = c.decoder_normalize_before;
    let mut new_kv = vec![];
    for s in w.stack_sublayers(Stack::Decoder) {
        let (p, i) = (s.layer_prefix(), s.layer);
        x = sublayer(g, &x, &s, pre, |g, h| match (s.kind, s.f) {
            (SublayerKind::SelfAttn, Body::Attention(a)) => {
                let (q, k, v) = self_qkv(g, h, &p, a, (d, heads, hd), layout);
                let o = match &mode {
                    SelfAttn::Full { bias } => attend(g, &q, &k, &v, Some(*bias)),
                    SelfAttn::Step { past } => {
                        let kk = g.concat(&[&past[i].0, &k], 2);
                        let vv = g.concat(&[&past[i].1, &v], 2);
                        let o = attend(g, &q, &kk, &vv, None);
                        new_kv.push((kk, vv));
                        o
                    }
                };
                let o = merge_heads(g, &o, d, layout);
                linear(g, &o, &format!("{p}.self_attn.out_proj"), &[&a.out])
            }
            (_, Body::Attention(a)) => {
                let q = linear(g, h, &format!("{p}.encoder_attn.q_proj"), &[&a.q]);
                let q = scale_q(g, &q, hd);
                let q = split_heads(g, &q, heads, hd, layout);
                let o = attend(g, &q, &cross[i].0, &cross[i].1, Some(cross_bias));
                let o = merge_heads(g, &o, d, layout);
                linear(g, &o, &format!("{p}.encoder_attn.out_proj"), &[&a.out])
            }
            (_, Body::FeedForward(f)) => feed_forward(g, h, f, c.activation_fn, &p),
        });
    }
    if let Some(ln) = &w.decoder_final_norm {
        x = layer_norm(g, &x, ln, "decoder.layer_norm");
    }
    // x · Pᵀ: onnxruntime pre-packs Gemm's constant B, transposed or not.
    let logits = g.op(
        "Gemm",
        &[&x, proj],
        vec![super::onnx::attr_int("transB", 1)],
    );
    let logits = g.cast_if(&logits, f, Elem::F32);
    let lprobs = g.op(
        "LogSoftmax",
        &[&logits],
        vec![super::onnx::attr_int("axis", -1)],
    );
    Ok((lprobs, new_kv))
}

/// One incremental decoding step.
pub fn decoder_step(m: &Model, fp16: bool, store: &mut WeightStore) -> Result<pb::GraphProto> {
    let f = float_elem(fp16);
    let mut g = Graph::new("decoder", f, store);
    let w = &m.weights;
    let c = &m.config;
    let d = w.decoder_embed.tokens.ncols();
    let heads = c.decoder_attention_heads;
    let hd = d / heads;
    let vocab = w.output_projection.nrows();

    let tokens = g.input("prev_token", Elem::I64, &[B, Dim::Fixed(1)]);
    let step = g.input("step", Elem::I64, &[Dim::Fixed(1)]);
    let (cross_bias, cross) = cross_inputs(&mut g, m);
    let cache_dims = [B, Dim::Fixed(heads), P, Dim::Fixed(hd)];
    let past: Vec<(V, V)> = (0..w.decoder_layers.len())
        .map(|i| {
            (
                g.input(&format!("self_k_{i}"), f, &cache_dims),
                g.input(&format!("self_v_{i}"), f, &cache_dims),
            )
        })
        .collect();

    let (table, proj) = decoder_tables(&mut g, m);
    let ptable = position_table(&mut g, &w.decoder_embed, c.max_target_positions, "decoder");
    let pos = ptable.as_ref().map(|_| {
        let off = g.ints(&[spec::PAD as i64 + 1]);
        g.add(&step, &off)
    });
    let ids = g.reshape(&tokens, &[-1]);
    let x = embed(
        &mut g,
        &w.decoder_embed,
        &table,
        &ids,
        ptable.as_deref().zip(pos.as_deref()),
        "decoder",
    );
    let (lprobs, new_kv) = decoder_body(
        &mut g,
        m,
        x,
        &proj,
        Layout::Step,
        SelfAttn::Step { past: &past },
        &cross_bias,
        &cross,
    )?;
    g.output(&lprobs, "lprobs", Elem::F32, &[B, Dim::Fixed(vocab)]);
    let out_dims = [B, Dim::Fixed(heads), Dim::Any, Dim::Fixed(hd)];
    for (i, (k, v)) in new_kv.iter().enumerate() {
        g.output(k, &format!("new_self_k_{i}"), f, &out_dims);
        g.output(v, &format!("new_self_v_{i}"), f, &out_dims);
    }
    Ok(g.finish())
}

/// Teacher forcing over a whole right-padded target prefix.
pub fn decoder_full(m: &Model, fp16: bool, store: &mut WeightStore) -> Result<pb::GraphProto> {
    let f = float_elem(fp16);
    let mut g = Graph::new("decoder_full", f, store);
    let w = &m.weights;
    let c = &m.config;
    let vocab = w.output_projection.nrows();

    let tokens = g.input("prev_output_tokens", Elem::I64, &[B, T]);
    let (cross_bias, cross) = cross_inputs(&mut g, m);
    let pad_id = g.int_scalar(spec::PAD as i64);
    let pad = g.op("Equal", &[&tokens, &pad_id], vec![]);

    // Causal mask or'ed with the key padding mask: [B, 1, T, T].
    let shape = g.op("Shape", &[&tokens], vec![]);
    let one = g.int_scalar(1);
    let zero = g.int_scalar(0);
    let len = g.gather(&shape, &one, 0);
    let r = g.op("Range", &[&zero, &len, &one], vec![]);
    let rows = g.unsqueeze(&r, &[1]);
    let cols = g.unsqueeze(&r, &[0]);
    let future = g.op("Greater", &[&cols, &rows], vec![]);
    let padk = g.unsqueeze(&pad, &[1, 2]);
    let mask = g.op("Or", &[&future, &padk], vec![]);
    let self_bias = mask_to_bias(&mut g, &mask);

    let (table, proj) = decoder_tables(&mut g, m);
    let ptable = position_table(&mut g, &w.decoder_embed, c.max_target_positions, "decoder");
    let pos = ptable.as_ref().map(|_| make_positions(&mut g, &pad));
    let x = embed(
        &mut g,
        &w.decoder_embed,
        &table,
        &tokens,
        ptable.as_deref().zip(pos.as_deref()),
        "decoder",
    );
    let d = w.decoder_embed.tokens.ncols();
    let x = g.reshape(&x, &[-1, d as i64]);
    let (lprobs, _) = decoder_body(
        &mut g,
        m,
        x,
        &proj,
        Layout::Flat { bt: &shape },
        SelfAttn::Full { bias: &self_bias },
        &cross_bias,
        &cross,
    )?;
    let lprobs = unflatten(&mut g, &lprobs, &shape, vocab);
    g.output(&lprobs, "lprobs", Elem::F32, &[B, T, Dim::Fixed(vocab)]);
    Ok(g.finish())
}
