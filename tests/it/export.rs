//! ONNX export and the runtimes: the exported graphs, run on tract and on
//! onnxruntime, against a plain reference forward pass written here from
//! `shared/spec/fairseq.md` and `shared/spec/fold.md` §1 (no code shared
//! with the exporter).
//!
//! onnxruntime is found like the CLI finds it (ORT_DYLIB_PATH or the Python
//! `onnxruntime` package); without it the onnxruntime checks print a note
//! and are skipped, unless `ADMIN_CONVERT_REQUIRE_ORT=1`.

use admin_convert::export::{self, ExportOptions, GraphKind, Precision};
use admin_convert::runtime::ort::{find_library, OrtBackend, OrtOptions};
use admin_convert::runtime::tract::TractBackend;
use admin_convert::runtime::{Backend, GraphSource, ModelEngine};
use admin_convert::spec::{
    Activation, Attention, Config, DecoderLayer, Embedding, EncoderLayer, Family, FeedForward,
    LayerNorm, Linear, Model, Positions, Residual, Sublayer, Tying, Weights,
};
use ndarray::{s, Array1, Array2, Array3, Axis};
use std::path::{Path, PathBuf};
use std::sync::Arc;

// ---- a tiny deterministic PRNG ----------------------------------------------

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
    fn mat(&mut self, r: usize, c: usize, scale: f32) -> Array2<f32> {
        Array2::from_shape_vec((r, c), self.vec(r * c, scale)).unwrap()
    }
    fn linear(&mut self, out: usize, inp: usize) -> Linear {
        Linear {
            weight: self.mat(out, inp, 1.5 / (inp as f32).sqrt()),
            bias: Some(Array1::from(self.vec(out, 0.2))),
        }
    }
    fn ln(&mut self, d: usize) -> LayerNorm {
        LayerNorm {
            gamma: Array1::from((0..d).map(|_| 1.0 + 0.3 * self.unit()).collect::<Vec<_>>()),
            beta: Array1::from(self.vec(d, 0.2)),
        }
    }
}

// ---- model variants ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Omega {
    None,
    Scalar,
    Vector,
}

#[derive(Clone, Debug)]
struct Variant {
    name: &'static str,
    pre_ln: bool,
    /// No LayerNorm at all (ReZero-like); use with `gate`.
    no_ln: bool,
    omega: Omega,
    gate: bool,
    learned_pos: bool,
    no_pos: bool,
    layernorm_embedding: bool,
    tied: bool,
    scale_embedding: bool,
    act: Activation,
    src_vocab: usize,
    tgt_vocab: usize,
    d: usize,
    heads: usize,
    enc_layers: usize,
    dec_layers: usize,
}

fn base() -> Variant {
    Variant {
        name: "post-ln",
        pre_ln: false,
        no_ln: false,
        omega: Omega::None,
        gate: false,
        learned_pos: false,
        no_pos: false,
        layernorm_embedding: false,
        tied: true,
        scale_embedding: true,
        act: Activation::Relu,
        src_vocab: 37,
        tgt_vocab: 37,
        d: 16,
        heads: 4,
        enc_layers: 2,
        dec_layers: 2,
    }
}

fn variants() -> Vec<Variant> {
    vec![
        base(),
        Variant {
            name: "pre-ln-gelu-learned",
            pre_ln: true,
            learned_pos: true,
            act: Activation::Gelu,
            ..base()
        },
        Variant {
            name: "admin-vector-untied-odd-vocab",
            omega: Omega::Vector,
            tied: false,
            src_vocab: 41,
            tgt_vocab: 29,
            layernorm_embedding: true,
            act: Activation::GeluAccurate,
            ..base()
        },
        Variant {
            name: "admin-scalar-swish",
            omega: Omega::Scalar,
            act: Activation::Swish,
            dec_layers: 3,
            enc_layers: 1,
            ..base()
        },
        Variant {
            name: "rezero-tanh",
            no_ln: true,
            gate: true,
            act: Activation::Tanh,
            scale_embedding: false,
            ..base()
        },
        Variant {
            name: "pre-ln-linear-nopos-wide",
            pre_ln: true,
            no_pos: true,
            act: Activation::Linear,
            d: 24,
            heads: 3,
            omega: Omega::Vector,
            gate: true,
            ..base()
        },
    ]
}

const MAX_POS: usize = 40;

fn make_model(v: &Variant, seed: u64) -> Model {
    let mut r = Rng(seed);
    let d = v.d;
    let ffn = 2 * d;
    let omega = |r: &mut Rng| match v.omega {
        Omega::None => None,
        Omega::Scalar => Some(vec![1.5 + r.unit().abs()]),
        Omega::Vector => Some((0..d).map(|_| 1.0 + 2.0 * r.unit().abs()).collect()),
    };
    let gate = |r: &mut Rng| v.gate.then(|| 0.5 + 0.3 * r.unit());
    let norm = |r: &mut Rng| (!v.no_ln).then(|| r.ln(d));
    let attn = |r: &mut Rng| Attention {
        q: r.linear(d, d),
        k: r.linear(d, d),
        v: r.linear(d, d),
        out: r.linear(d, d),
    };
    let sub_attn = |r: &mut Rng| Sublayer {
        f: attn(r),
        norm: norm(r),
        residual: Residual {
            omega: omega(r),
            gate: gate(r),
        },
    };
    let sub_ffn = |r: &mut Rng| Sublayer {
        f: FeedForward {
            fc1: r.linear(ffn, d),
            fc2: r.linear(d, ffn),
        },
        norm: norm(r),
        residual: Residual {
            omega: omega(r),
            gate: gate(r),
        },
    };
    let positions = |r: &mut Rng| {
        if v.no_pos {
            Positions::None
        } else if v.learned_pos {
            Positions::Learned(r.mat(MAX_POS + 2, d, 0.5))
        } else {
            Positions::Sinusoidal
        }
    };
    let scale = if v.scale_embedding {
        (d as f32).sqrt()
    } else {
        1.0
    };
    let enc_tokens = r.mat(v.src_vocab, d, 0.3);
    let dec_tokens = if v.tied && v.src_vocab == v.tgt_vocab {
        enc_tokens.clone()
    } else {
        r.mat(v.tgt_vocab, d, 0.3)
    };
    let encoder_embed = Embedding {
        tokens: enc_tokens,
        scale,
        positions: positions(&mut r),
        layernorm: v.layernorm_embedding.then(|| r.ln(d)),
    };
    let decoder_embed = Embedding {
        tokens: dec_tokens.clone(),
        scale,
        positions: positions(&mut r),
        layernorm: v.layernorm_embedding.then(|| r.ln(d)),
    };
    let encoder_layers = (0..v.enc_layers)
        .map(|_| EncoderLayer {
            self_attn: sub_attn(&mut r),
            ffn: sub_ffn(&mut r),
        })
        .collect();
    let decoder_layers = (0..v.dec_layers)
        .map(|_| DecoderLayer {
            self_attn: sub_attn(&mut r),
            cross_attn: sub_attn(&mut r),
            ffn: sub_ffn(&mut r),
        })
        .collect();
    let final_norm = |r: &mut Rng| (v.pre_ln && !v.no_ln).then(|| r.ln(d));
    let encoder_final_norm = final_norm(&mut r);
    let decoder_final_norm = final_norm(&mut r);
    let output_projection = if v.tied {
        dec_tokens
    } else {
        r.mat(v.tgt_vocab, d, 0.5)
    };
    let family = if v.no_ln {
        Family::ReZero
    } else if v.pre_ln {
        Family::PreLn
    } else if v.omega == Omega::Vector {
        Family::AdminTorchVector
    } else if v.omega == Omega::Scalar {
        Family::AdminTorchScalar
    } else {
        Family::PostLn
    };
    Model {
        config: Config {
            arch: "transformer".into(),
            encoder_layers: v.enc_layers,
            decoder_layers: v.dec_layers,
            encoder_embed_dim: d,
            decoder_embed_dim: d,
            encoder_ffn_embed_dim: ffn,
            decoder_ffn_embed_dim: ffn,
            encoder_attention_heads: v.heads,
            decoder_attention_heads: v.heads,
            activation_fn: v.act,
            encoder_normalize_before: v.pre_ln,
            decoder_normalize_before: v.pre_ln,
            share_all_embeddings: v.tied && v.src_vocab == v.tgt_vocab,
            share_decoder_input_output_embed: v.tied,
            no_scale_embedding: !v.scale_embedding,
            layernorm_embedding: v.layernorm_embedding,
            encoder_learned_pos: v.learned_pos,
            decoder_learned_pos: v.learned_pos,
            no_token_positional_embeddings: v.no_pos,
            max_source_positions: MAX_POS,
            max_target_positions: MAX_POS,
            src_vocab: v.src_vocab,
            tgt_vocab: v.tgt_vocab,
            init_type: None,
        },
        family,
        tying: Tying {
            encoder_decoder: v.tied && v.src_vocab == v.tgt_vocab,
            decoder_output: v.tied,
        },
        weights: Weights {
            encoder_embed,
            encoder_layers,
            encoder_final_norm,
            decoder_embed,
            decoder_layers,
            decoder_final_norm,
            output_projection,
        },
    }
}

/// Left-padded sources of the given lengths (EOS last) and right-padded
/// decoder inputs (EOS first) of the given lengths.
fn batch(
    seed: u64,
    src_lens: &[usize],
    tgt_lens: &[usize],
    src_vocab: usize,
    tgt_vocab: usize,
) -> (Array2<i64>, Array2<i64>) {
    let mut r = Rng(seed);
    let s = *src_lens.iter().max().unwrap();
    let t = *tgt_lens.iter().max().unwrap();
    let mut src = Array2::from_elem((src_lens.len(), s), 1i64);
    for (b, &n) in src_lens.iter().enumerate() {
        for j in 0..n {
            src[[b, s - n + j]] = if j + 1 == n {
                2
            } else {
                4 + r.below(src_vocab - 4) as i64
            };
        }
    }
    let mut prev = Array2::from_elem((tgt_lens.len(), t), 1i64);
    for (b, &n) in tgt_lens.iter().enumerate() {
        for j in 0..n {
            prev[[b, j]] = if j == 0 {
                2
            } else {
                4 + r.below(tgt_vocab - 4) as i64
            };
        }
    }
    (src, prev)
}

// ---- reference forward pass -------------------------------------------------------

const PAD: i64 = 1;

fn r_linear(x: &Array2<f32>, l: &Linear) -> Array2<f32> {
    let mut y = x.dot(&l.weight.t());
    if let Some(b) = &l.bias {
        y += b;
    }
    y
}

fn r_layer_norm(x: &Array2<f32>, n: &LayerNorm) -> Array2<f32> {
    let mut y = x.clone();
    for mut row in y.rows_mut() {
        let d = row.len() as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            *v = ((*v as f64 - mean) * inv) as f32 * n.gamma[i] + n.beta[i];
        }
    }
    y
}

fn r_act(x: f32, a: Activation) -> f32 {
    let xd = x as f64;
    (match a {
        Activation::Relu => xd.max(0.0),
        Activation::Gelu => 0.5 * xd * (1.0 + erf(xd / std::f64::consts::SQRT_2)),
        Activation::GeluAccurate => {
            0.5 * xd
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh())
        }
        Activation::Tanh => xd.tanh(),
        Activation::Linear => xd,
        Activation::Swish => xd / (1.0 + (-xd).exp()),
    }) as f32
}

/// erf by its Taylor series / continued fraction, accurate to ~1e-12.
fn erf(x: f64) -> f64 {
    if x.abs() < 3.0 {
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0;
        while term.abs() > 1e-17 || n < 5 {
            sum += term / (2 * n + 1) as f64;
            n += 1;
            term *= -x * x / n as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction
        let z = x.abs();
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (z + f);
        }
        let erfc = (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f);
        x.signum() * (1.0 - erfc)
    }
}

/// Multi-head attention of queries `xq` over `xkv`; `masked(i, j)` hides key j from query i.
fn r_attention(
    xq: &Array2<f32>,
    xkv: &Array2<f32>,
    a: &Attention,
    heads: usize,
    masked: impl Fn(usize, usize) -> bool,
) -> Array2<f32> {
    let d = a.q.weight.nrows();
    let hd = d / heads;
    let scaling = (hd as f32).powf(-0.5);
    let q = r_linear(xq, &a.q) * scaling;
    let k = r_linear(xkv, &a.k);
    let v = r_linear(xkv, &a.v);
    let mut out = Array2::<f32>::zeros((xq.nrows(), d));
    for h in 0..heads {
        let cols = s![.., h * hd..(h + 1) * hd];
        let (qh, kh, vh) = (q.slice(cols), k.slice(cols), v.slice(cols));
        let scores = qh.dot(&kh.t());
        for i in 0..xq.nrows() {
            let mut w = vec![0f64; xkv.nrows()];
            let mut max = f64::NEG_INFINITY;
            for j in 0..xkv.nrows() {
                if !masked(i, j) {
                    max = max.max(scores[[i, j]] as f64);
                }
            }
            let mut z = 0.0;
            for j in 0..xkv.nrows() {
                if !masked(i, j) {
                    w[j] = (scores[[i, j]] as f64 - max).exp();
                    z += w[j];
                }
            }
            for j in 0..xkv.nrows() {
                let p = (w[j] / z) as f32;
                for c in 0..hd {
                    out[[i, h * hd + c]] += p * vh[[j, c]];
                }
            }
        }
    }
    r_linear(&out, &a.out)
}

/// `x ⊙ ω + g·h`.
fn r_residual(x: &Array2<f32>, h: &Array2<f32>, r: &Residual) -> Array2<f32> {
    let mut y = x.clone();
    if let Some(o) = &r.omega {
        for mut row in y.rows_mut() {
            for (i, v) in row.iter_mut().enumerate() {
                *v *= if o.len() == 1 { o[0] } else { o[i] };
            }
        }
    }
    let g = r.gate.unwrap_or(1.0);
    y + h * g
}

/// Post-LN `LN(x⊙ω + g·F(x))`, Pre-LN `x⊙ω + g·F(LN(x))`, no-LN `x⊙ω + g·F(x)`.
fn r_sublayer<F>(
    x: &Array2<f32>,
    s: &Sublayer<F>,
    pre: bool,
    f: impl Fn(&Array2<f32>) -> Array2<f32>,
) -> Array2<f32> {
    match (&s.norm, pre) {
        (Some(n), true) => r_residual(x, &f(&r_layer_norm(x, n)), &s.residual),
        (Some(n), false) => r_layer_norm(&r_residual(x, &f(x), &s.residual), n),
        (None, _) => r_residual(x, &f(x), &s.residual),
    }
}

fn r_ffn(x: &Array2<f32>, f: &FeedForward, a: Activation) -> Array2<f32> {
    r_linear(&r_linear(x, &f.fc1).mapv(|v| r_act(v, a)), &f.fc2)
}

/// fairseq's sinusoid, written out independently: row p = [sin(p·f) | cos(p·f)].
fn r_sinusoid(p: usize, d: usize) -> Vec<f32> {
    let half = d / 2;
    let mut row = vec![0f32; d];
    if p == 1 {
        return row;
    }
    let step = (10000f32).ln() / (half as f32 - 1.0);
    for j in 0..half {
        let a = p as f32 * (j as f32 * -step).exp();
        row[j] = a.sin();
        row[half + j] = a.cos();
    }
    row
}

/// `s·E[tok] + P[pos]` then layernorm_embedding, for one sentence.
fn r_embed(e: &Embedding, tokens: &[i64]) -> Array2<f32> {
    let d = e.tokens.ncols();
    let mut x = Array2::<f32>::zeros((tokens.len(), d));
    let mut k = 0;
    for (i, &t) in tokens.iter().enumerate() {
        let pos = if t == PAD {
            1
        } else {
            k += 1;
            1 + k
        };
        let p: Vec<f32> = match &e.positions {
            Positions::None => vec![0.0; d],
            Positions::Sinusoidal => r_sinusoid(pos, d),
            Positions::Learned(tab) => tab.row(pos).to_vec(),
        };
        for c in 0..d {
            x[[i, c]] = e.scale * e.tokens[[t as usize, c]] + p[c];
        }
    }
    match &e.layernorm {
        Some(n) => r_layer_norm(&x, n),
        None => x,
    }
}

fn r_encoder(m: &Model, tokens: &[i64]) -> Array2<f32> {
    let c = &m.config;
    let w = &m.weights;
    let mut x = r_embed(&w.encoder_embed, tokens);
    for (i, &t) in tokens.iter().enumerate() {
        if t == PAD {
            x.row_mut(i).fill(0.0);
        }
    }
    let key_pad = |_: usize, j: usize| tokens[j] == PAD;
    for l in &w.encoder_layers {
        x = r_sublayer(&x, &l.self_attn, c.encoder_normalize_before, |h| {
            r_attention(h, h, &l.self_attn.f, c.encoder_attention_heads, key_pad)
        });
        x = r_sublayer(&x, &l.ffn, c.encoder_normalize_before, |h| {
            r_ffn(h, &l.ffn.f, c.activation_fn)
        });
    }
    match &w.encoder_final_norm {
        Some(n) => r_layer_norm(&x, n),
        None => x,
    }
}

/// Teacher-forced log-probs `[tgt_len, vocab]` of one sentence.
fn r_decoder(m: &Model, enc: &Array2<f32>, src: &[i64], prev: &[i64]) -> Array2<f32> {
    let c = &m.config;
    let w = &m.weights;
    let mut x = r_embed(&w.decoder_embed, prev);
    let self_mask = |i: usize, j: usize| j > i || prev[j] == PAD;
    let cross_mask = |_: usize, j: usize| src[j] == PAD;
    let pre = c.decoder_normalize_before;
    for l in &w.decoder_layers {
        x = r_sublayer(&x, &l.self_attn, pre, |h| {
            r_attention(h, h, &l.self_attn.f, c.decoder_attention_heads, self_mask)
        });
        x = r_sublayer(&x, &l.cross_attn, pre, |h| {
            r_attention(
                h,
                enc,
                &l.cross_attn.f,
                c.decoder_attention_heads,
                cross_mask,
            )
        });
        x = r_sublayer(&x, &l.ffn, pre, |h| r_ffn(h, &l.ffn.f, c.activation_fn));
    }
    if let Some(n) = &w.decoder_final_norm {
        x = r_layer_norm(&x, n);
    }
    let logits = x.dot(&w.output_projection.t());
    let mut out = logits.clone();
    for (i, row) in logits.rows().into_iter().enumerate() {
        let max = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        for (j, &v) in row.iter().enumerate() {
            out[[i, j]] = (v as f64 - lse) as f32;
        }
    }
    out
}

/// Reference encoder outputs `[B, S, d]` and log-probs `[B, T, V]`.
fn reference(m: &Model, src: &Array2<i64>, prev: &Array2<i64>) -> (Array3<f32>, Array3<f32>) {
    let d = m.weights.encoder_embed.tokens.ncols();
    let v = m.weights.output_projection.nrows();
    let mut enc_all = Array3::zeros((src.nrows(), src.ncols(), d));
    let mut lp_all = Array3::zeros((prev.nrows(), prev.ncols(), v));
    for b in 0..src.nrows() {
        let s: Vec<i64> = src.row(b).to_vec();
        let p: Vec<i64> = prev.row(b).to_vec();
        let enc = r_encoder(m, &s);
        let lp = r_decoder(m, &enc, &s, &p);
        enc_all.slice_mut(s![b, .., ..]).assign(&enc);
        lp_all.slice_mut(s![b, .., ..]).assign(&lp);
    }
    (enc_all, lp_all)
}

// ---- helpers ---------------------------------------------------------------------------

fn max_abs_diff<D: ndarray::Dimension>(
    a: &ndarray::Array<f32, D>,
    b: &ndarray::Array<f32, D>,
) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, f32::max)
}

/// Max difference over the real (non-pad) target positions only.
fn max_abs_diff_real(a: &Array3<f32>, b: &Array3<f32>, prev: &Array2<i64>) -> f32 {
    let mut m = 0f32;
    for bi in 0..prev.nrows() {
        for t in 0..prev.ncols() {
            if prev[[bi, t]] == PAD {
                continue;
            }
            for v in 0..a.shape()[2] {
                m = m.max((a[[bi, t, v]] - b[[bi, t, v]]).abs());
            }
        }
    }
    m
}

/// Runs `backend` on a batch: encoder output, teacher-forced log-probs and
/// the log-probs of incremental decoding (`[B, T, V]`, rows fed their own tokens).
fn run_all(
    b: &mut dyn Backend,
    src: &Array2<i64>,
    prev: &Array2<i64>,
) -> (Array3<f32>, Array3<f32>, Array3<f32>) {
    let enc = b.encode(src.view()).unwrap();
    let enc_out = enc
        .encoder_out
        .to_f32()
        .unwrap()
        .into_dimensionality()
        .unwrap();
    let mask = enc.padding_mask.to_bool().unwrap();
    for ((bi, j), &m) in mask
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap()
        .indexed_iter()
    {
        assert_eq!(m, src[[bi, j]] == PAD);
    }
    let full = b.teacher_forced(&enc, prev.view()).unwrap();
    let mut dec = b.start(&enc).unwrap();
    let mut inc = Array3::zeros(full.dim());
    for t in 0..prev.ncols() {
        let lp = b.step(&enc, &mut dec, prev.column(t)).unwrap();
        inc.slice_mut(s![.., t, ..]).assign(&lp);
    }
    assert_eq!(dec.step, prev.ncols());
    (enc_out, full, inc)
}

fn ort_library() -> Option<PathBuf> {
    match find_library(None, &[]) {
        Ok(p) => Some(p),
        Err(e) => {
            if std::env::var("ADMIN_CONVERT_REQUIRE_ORT").as_deref() == Ok("1") {
                panic!("ADMIN_CONVERT_REQUIRE_ORT=1 but onnxruntime is not available: {e:#}");
            }
            eprintln!("note: skipping the onnxruntime checks: {e:#}");
            None
        }
    }
}

fn ort_backend(source: GraphSource, lib: &Path) -> OrtBackend {
    OrtBackend::with_library(source, OrtOptions::default(), lib).unwrap()
}

const SRC_LENS: [usize; 4] = [5, 2, 7, 1];
const TGT_LENS: [usize; 4] = [4, 6, 1, 3];

// ---- tests -------------------------------------------------------------------------

#[test]
fn tract_graphs_match_reference_and_incremental_decoding() {
    for (i, v) in variants().iter().enumerate() {
        let m = make_model(v, 100 + i as u64);
        let (src, prev) = batch(7 + i as u64, &SRC_LENS, &TGT_LENS, v.src_vocab, v.tgt_vocab);
        let (r_enc, r_lp) = reference(&m, &src, &prev);
        let graphs = export::export(&m, Precision::Fp32, &ExportOptions::default()).unwrap();
        let mut b = TractBackend::new(GraphSource::Memory(Arc::new(graphs))).unwrap();
        let (enc, full, inc) = run_all(&mut b, &src, &prev);
        let e_enc = max_abs_diff(&enc, &r_enc);
        let e_full = max_abs_diff(&full, &r_lp);
        let e_inc = max_abs_diff_real(&inc, &full, &prev);
        println!(
            "{:32} tract: encoder {e_enc:.2e}, teacher-forced vs reference {e_full:.2e}, incremental vs teacher-forced {e_inc:.2e}",
            v.name
        );
        assert!(
            e_enc <= crate::tol::ENCODER32,
            "{}: encoder differs by {e_enc}",
            v.name
        );
        assert!(
            e_full <= crate::tol::LOGPROB32,
            "{}: log-probs differ by {e_full}",
            v.name
        );
        assert!(
            e_inc <= crate::tol::LOGPROB32,
            "{}: incremental differs by {e_inc}",
            v.name
        );
    }
}

#[test]
fn onnxruntime_agrees_with_tract_and_reference() {
    let Some(lib) = ort_library() else { return };
    for (i, v) in variants().iter().enumerate() {
        let m = make_model(v, 200 + i as u64);
        let (src, prev) = batch(9 + i as u64, &SRC_LENS, &TGT_LENS, v.src_vocab, v.tgt_vocab);
        let (r_enc, r_lp) = reference(&m, &src, &prev);
        let graphs =
            Arc::new(export::export(&m, Precision::Fp32, &ExportOptions::default()).unwrap());
        let mut t = TractBackend::new(GraphSource::Memory(graphs.clone())).unwrap();
        let mut o = ort_backend(GraphSource::Memory(graphs), &lib);
        let (t_enc, t_full, t_inc) = run_all(&mut t, &src, &prev);
        let (o_enc, o_full, o_inc) = run_all(&mut o, &src, &prev);
        let e = [
            max_abs_diff(&o_enc, &t_enc),
            max_abs_diff(&o_full, &t_full),
            max_abs_diff_real(&o_inc, &t_inc, &prev),
            max_abs_diff(&o_enc, &r_enc),
            max_abs_diff(&o_full, &r_lp),
            max_abs_diff_real(&o_inc, &o_full, &prev),
        ];
        println!(
            "{:32} ort vs tract: encoder {:.2e} full {:.2e} step {:.2e}; ort vs reference: encoder {:.2e} full {:.2e}; ort step vs full {:.2e}",
            v.name, e[0], e[1], e[2], e[3], e[4], e[5]
        );
        // Encoder outputs and log-probs alike: the looser (log-prob) bound of tol.rs.
        for x in e {
            assert!(x <= crate::tol::LOGPROB32, "{}: {e:?}", v.name);
        }
    }
}

#[test]
fn fp16_graphs_are_close_to_fp32() {
    let lib = ort_library();
    for (i, v) in variants().iter().enumerate().take(4) {
        let m = make_model(v, 300 + i as u64);
        let (src, prev) = batch(
            11 + i as u64,
            &SRC_LENS,
            &TGT_LENS,
            v.src_vocab,
            v.tgt_vocab,
        );
        let (_, r_lp) = reference(&m, &src, &prev);
        let g16 = Arc::new(export::export(&m, Precision::Fp16, &ExportOptions::default()).unwrap());
        let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(
            TractBackend::new(GraphSource::Memory(g16.clone())).unwrap(),
        )];
        if let Some(lib) = &lib {
            backends.push(Box::new(ort_backend(GraphSource::Memory(g16.clone()), lib)));
        }
        for b in backends.iter_mut() {
            let (_, full, inc) = run_all(b.as_mut(), &src, &prev);
            let e_full = max_abs_diff(&full, &r_lp);
            let e_inc = max_abs_diff_real(&inc, &r_lp, &prev);
            println!(
                "{:32} {} fp16 vs fp32 reference: full {e_full:.2e} step {e_inc:.2e}",
                v.name,
                b.name()
            );
            assert!(
                e_full <= 2e-2 && e_inc <= 2e-2,
                "{} {}: {e_full} {e_inc}",
                v.name,
                b.name()
            );
        }
    }
}

#[test]
fn state_rows_can_be_selected_and_reordered() {
    let v = &variants()[1];
    let m = make_model(v, 400);
    let (src, prev) = batch(13, &[4, 6, 2], &[5, 5, 5], v.src_vocab, v.tgt_vocab);
    let graphs = Arc::new(export::export(&m, Precision::Fp32, &ExportOptions::default()).unwrap());
    let mut b = TractBackend::new(GraphSource::Memory(graphs)).unwrap();
    let enc = b.encode(src.view()).unwrap();
    let mut dec = b.start(&enc).unwrap();
    for t in 0..2 {
        b.step(&enc, &mut dec, prev.column(t)).unwrap();
    }
    // Expand to "beams" (rows 2, 0, 0) and continue; must equal the rows
    // decoded on their own.
    let rows = [2usize, 0, 0];
    let enc2 = enc.select(&rows).unwrap();
    let mut dec2 = dec.select(&rows).unwrap();
    let prev2 = prev.select(Axis(0), &rows);
    let lp2 = b.step(&enc2, &mut dec2, prev2.column(2)).unwrap();
    let lp = b.step(&enc, &mut dec, prev.column(2)).unwrap();
    let want = lp.select(Axis(0), &rows);
    // Not bit-identical: GEMM blocking depends on the batch size.
    // An operation-order difference like any other: the bound of tol.rs.
    assert!(max_abs_diff(&lp2, &want) <= crate::tol::LOGPROB32);
    dec2.reorder(&[1, 2]).unwrap();
    assert_eq!(dec2.batch(), 2);
    assert_eq!(dec2.step, 3);
}

#[test]
fn written_graphs_load_and_pass_the_onnx_checker() {
    let v = &variants()[2];
    let m = make_model(v, 500);
    let (src, prev) = batch(15, &SRC_LENS, &TGT_LENS, v.src_vocab, v.tgt_vocab);
    let (_, r_lp) = reference(&m, &src, &prev);
    let opts = ExportOptions {
        fp16: true,
        dictionaries: Some(("a 1\nb 1\n".into(), "c 1\n".into())),
    };
    let dir = tempfile::tempdir().unwrap();
    let written = export::write_dir(&m, &opts, dir.path()).unwrap();
    for p in [Precision::Fp32, Precision::Fp16] {
        for k in GraphKind::ALL {
            assert!(written.contains(&dir.path().join(k.file_name(p))));
        }
    }
    let mut t = TractBackend::new(GraphSource::Dir(dir.path().into(), Precision::Fp32)).unwrap();
    let (_, full, _) = run_all(&mut t, &src, &prev);
    assert!(max_abs_diff(&full, &r_lp) <= crate::tol::LOGPROB32);
    if let Some(lib) = ort_library() {
        let mut o = ort_backend(GraphSource::Dir(dir.path().into(), Precision::Fp32), &lib);
        assert_eq!(o.info(), t.info());
        let (_, full, _) = run_all(&mut o, &src, &prev);
        assert!(max_abs_diff(&full, &r_lp) <= crate::tol::LOGPROB32);
    }
    onnx_check(&written);
}

/// The float32 weight bytes of `m`, each table once (shared embeddings and
/// a tied output projection are one tensor in the checkpoint).
fn weight_bytes(m: &Model) -> u64 {
    let sd = admin_convert::write::fairseq::state_dict(m, admin_convert::tensor::DType::F32);
    let w = &m.weights;
    let shared = |name: &str| match name {
        "decoder.embed_tokens.weight" => w.decoder_embed.tokens == w.encoder_embed.tokens,
        "decoder.output_projection.weight" => w.output_projection == w.decoder_embed.tokens,
        _ => name.ends_with("version"),
    };
    sd.tensors
        .iter()
        .filter(|(name, _)| !shared(name))
        .map(|(_, t)| t.nbytes() as u64)
        .sum()
}

/// Name → (location, offset, length) of every external initializer of the
/// graph at `path`, and its inline initializer bytes.
fn external_refs(path: &Path) -> (Vec<(String, String, u64, u64)>, usize) {
    use prost::Message;
    let bytes = std::fs::read(path).unwrap();
    let model = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let g = model.graph.unwrap();
    let inline = g.initializer.iter().map(|t| t.raw_data.len()).sum();
    let refs = g
        .initializer
        .iter()
        .filter(|t| !t.external_data.is_empty())
        .map(|t| {
            let get = |k: &str| {
                t.external_data
                    .iter()
                    .find(|e| e.key == k)
                    .map(|e| e.value.clone())
                    .unwrap()
            };
            let (off, len) = (get("offset"), get("length"));
            (
                t.name.clone(),
                get("location"),
                off.parse().unwrap(),
                len.parse().unwrap(),
            )
        })
        .collect();
    (refs, inline)
}

/// A directory holds each weight once, in one data file per precision that
/// all three graphs refer to (a tied projection reads the decoder table
/// itself); its size follows the model's weight bytes; tract and
/// onnxruntime load it and compute exactly what the in-memory graphs
/// (inline weights) compute.
#[test]
fn graphs_share_one_weights_file() {
    for (v, seed) in [
        (
            Variant {
                d: 64,
                src_vocab: 300,
                tgt_vocab: 300,
                ..base()
            },
            600,
        ),
        (variants()[2].clone(), 601),
    ] {
        let m = make_model(&v, seed);
        let (src, prev) = batch(17, &SRC_LENS, &TGT_LENS, v.src_vocab, v.tgt_vocab);
        let opts = ExportOptions {
            fp16: true,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let written = export::write_dir(&m, &opts, dir.path()).unwrap();
        let mut names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "decoder.onnx",
                "decoder_fp16.onnx",
                "decoder_full.onnx",
                "decoder_full_fp16.onnx",
                "encoder.onnx",
                "encoder_fp16.onnx",
                "weights.onnx.data",
                "weights_fp16.onnx.data"
            ]
        );
        for p in [Precision::Fp32, Precision::Fp16] {
            check_data_file(dir.path(), p, &m, v.name);
        }
        let w = weight_bytes(&m);
        let total: u64 = written
            .iter()
            .filter(|p| !p.to_string_lossy().contains("fp16"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        // 1.1 × the weights, plus the graph structures (~20 kB each here).
        let bound = w + w / 10 + 3 * 32 * 1024;
        assert!(
            total <= bound,
            "{}: fp32 export {total} bytes, weights {w} bytes, bound {bound}",
            v.name
        );

        let mem = Arc::new(export::export(&m, Precision::Fp32, &ExportOptions::default()).unwrap());
        let disk = || GraphSource::Dir(dir.path().into(), Precision::Fp32);
        let mut a = TractBackend::new(GraphSource::Memory(mem.clone())).unwrap();
        let mut b = TractBackend::new(disk()).unwrap();
        let expected = run_all(&mut a, &src, &prev);
        assert_eq!(expected, run_all(&mut b, &src, &prev));
        // In-memory graphs written out (onnxruntime's spill for graphs over
        // the protobuf limit): the same layout, the same results.
        let spill = tempfile::tempdir().unwrap();
        let files = export::write_graphs(&mem, spill.path()).unwrap();
        assert_eq!(files.len(), 4, "{files:?}");
        check_data_file(spill.path(), Precision::Fp32, &m, v.name);
        let mut c =
            TractBackend::new(GraphSource::Dir(spill.path().into(), Precision::Fp32)).unwrap();
        assert_eq!(expected, run_all(&mut c, &src, &prev));
        if let Some(lib) = ort_library() {
            let mut a = ort_backend(GraphSource::Memory(mem), &lib);
            let mut b = ort_backend(disk(), &lib);
            assert_eq!(run_all(&mut a, &src, &prev), run_all(&mut b, &src, &prev));
        }
        onnx_check(&written);
    }
}

/// The three graphs of `precision` in `dir` refer to one data file with
/// every name at one place, places disjoint and inside the file, no inline
/// weights, and the tied tables under one name.
fn check_data_file(dir: &Path, precision: Precision, m: &Model, what: &str) {
    let data = dir.join(precision.data_file_name());
    let size = std::fs::metadata(&data).unwrap().len();
    let mut at: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for k in GraphKind::ALL {
        let (refs, inline) = external_refs(&dir.join(k.file_name(precision)));
        assert!(
            inline < 1024,
            "{what}: {} inline weight bytes in {k:?}",
            inline
        );
        for (name, location, off, len) in refs {
            assert_eq!(location, precision.data_file_name());
            assert!(
                off + len <= size,
                "{what}: {name} beyond the data file's end"
            );
            let prev = at.insert(name.clone(), (off, len));
            assert!(
                prev.is_none_or(|p| p == (off, len)),
                "{what}: {name} stored twice"
            );
        }
    }
    let mut spans: Vec<(u64, u64)> = at.values().copied().collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].0 + pair[0].1 <= pair[1].0,
            "{what}: overlapping tensors"
        );
    }
    let w = &m.weights;
    let tied = w.output_projection == w.decoder_embed.tokens;
    assert_eq!(
        !tied,
        at.contains_key("decoder.output_projection.weight"),
        "{what}"
    );
    let shared = w.decoder_embed.tokens == w.encoder_embed.tokens;
    assert_eq!(
        !shared,
        at.contains_key("decoder.embed_tokens.weight"),
        "{what}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let v = &variants()[0];
    let m = make_model(v, 700);
    let graphs = Arc::new(export::export(&m, Precision::Fp32, &ExportOptions::default()).unwrap());
    let mut b = TractBackend::new(GraphSource::Memory(graphs)).unwrap();
    let src = ndarray::arr2(&[[5i64, 99, 2]]);
    let e = b.encode(src.view()).unwrap_err();
    assert!(format!("{e:#}").contains("outside the vocabulary"), "{e:#}");
    let long = Array2::from_elem((1, MAX_POS + 1), 5i64);
    assert!(b.encode(long.view()).is_err());
    assert!(find_library(Some(Path::new("/nonexistent/libonnxruntime.so")), &[]).is_err());
    let mut bad = m.clone();
    bad.weights.output_projection = Array2::zeros((5, 3));
    assert!(export::export(&bad, Precision::Fp32, &ExportOptions::default()).is_err());
}

#[test]
fn cuda_without_a_cuda_build_is_an_error() {
    let Some(lib) = ort_library() else { return };
    let v = &variants()[0];
    let m = make_model(v, 800);
    let graphs = Arc::new(export::export(&m, Precision::Fp32, &ExportOptions::default()).unwrap());
    let opts = OrtOptions {
        device: admin_convert::runtime::ort::Device::Cuda { device_id: 0 },
        ..Default::default()
    };
    match OrtBackend::with_library(GraphSource::Memory(graphs), opts, &lib) {
        Ok(_) => eprintln!("note: this onnxruntime has a usable CUDA provider"),
        Err(e) => {
            let msg = format!("{e:#}");
            println!("CUDA refused as expected: {msg}");
            assert!(msg.contains("CUDA"), "{msg}");
        }
    }
}

fn onnx_check(paths: &[PathBuf]) {
    let pythons = admin_convert::runtime::ort::python_candidates();
    let py = pythons.into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import onnx"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(py) = py else {
        assert!(
            std::env::var("ADMIN_CONVERT_REQUIRE_ORT").as_deref() != Ok("1"),
            "ADMIN_CONVERT_REQUIRE_ORT=1 but no Python has the onnx package (run scripts/setup-python.sh)"
        );
        eprintln!("note: no Python with the onnx package: skipping onnx.checker");
        return;
    };
    println!("onnx.checker (full_check) via {}", py.display());
    for p in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
    {
        let out = std::process::Command::new(&py)
            .args([
                "-c",
                "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)",
                p.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "onnx.checker rejects {}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// CPU seconds used by this process so far (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    // fields 14 and 15 (utime, stime) are the 12th and 13th after the name
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Decoding speed on a base-sized model (`cargo test --test export -- --ignored --nocapture bench`).
#[test]
#[ignore]
fn bench_incremental_decoding() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let v = Variant {
        name: "base",
        d: 512,
        heads: 8,
        enc_layers: 6,
        dec_layers: env("BENCH_LAYERS", 6),
        src_vocab: env("BENCH_VOCAB", 32000),
        tgt_vocab: env("BENCH_VOCAB", 32000),
        tied: env("BENCH_TIED", 1) == 1,
        ..base()
    };
    let m = make_model(&v, 900);
    let steps = env("BENCH_STEPS", 20);
    let t0 = std::time::Instant::now();
    let graphs = Arc::new(export::export(&m, Precision::Fp32, &ExportOptions::default()).unwrap());
    println!("export: {:.2?}", t0.elapsed());
    let mut backends: Vec<Box<dyn Backend>> = vec![];
    let t0 = std::time::Instant::now();
    let mut t = TractBackend::new(GraphSource::Memory(graphs.clone())).unwrap();
    t.load_all().unwrap();
    println!("tract load + optimise: {:.2?}", t0.elapsed());
    backends.push(Box::new(t));
    if let Some(lib) = ort_library() {
        let t0 = std::time::Instant::now();
        let mut o = ort_backend(GraphSource::Memory(graphs), &lib);
        o.load_all().unwrap();
        println!("onnxruntime sessions: {:.2?}", t0.elapsed());
        backends.push(Box::new(o));
    }
    for beams in [1, env("BENCH_BATCH", 20)] {
        let (src, _) = batch(19, &vec![30; beams], &[1], v.src_vocab, v.tgt_vocab);
        for b in backends.iter_mut() {
            let t0 = std::time::Instant::now();
            let enc = b.encode(src.view()).unwrap();
            let te = t0.elapsed();
            let mut dec = b.start(&enc).unwrap();
            let toks = Array1::from_elem(beams, 5i64);
            let t0 = std::time::Instant::now();
            let c0 = cpu_seconds();
            for _ in 0..steps {
                b.step(&enc, &mut dec, toks.view()).unwrap();
                let order: Vec<usize> = (0..beams).rev().collect();
                dec.reorder(&order).unwrap();
            }
            println!(
                "{}: batch {beams}: encode {:.2?}, {:.2} ms/step, {:.1} CPU ms/step ({steps} steps with reorder)",
                b.name(),
                te,
                t0.elapsed().as_secs_f64() * 1e3 / steps as f64,
                (cpu_seconds() - c0) * 1e3 / steps as f64
            );
        }
    }
}

#[test]
fn states_and_backends_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<admin_convert::runtime::EncoderState>();
    send::<admin_convert::runtime::DecoderState>();
    send::<TractBackend>();
    send::<OrtBackend>();
}

/// Reads the reference tensors made by real fairseq (`fixtures/tensors/`).
fn reference_tensors(
    path: &str,
) -> std::collections::HashMap<String, (Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec(), v.dtype())))
        .collect()
}

fn as_f32(t: &(Vec<usize>, Vec<u8>, safetensors::Dtype)) -> ndarray::ArrayD<f32> {
    assert_eq!(t.2, safetensors::Dtype::F32);
    let v: Vec<f32> =
        t.1.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
    ndarray::ArrayD::from_shape_vec(t.0.clone(), v).unwrap()
}

fn as_i64(t: &(Vec<usize>, Vec<u8>, safetensors::Dtype)) -> ndarray::ArrayD<i64> {
    assert_eq!(t.2, safetensors::Dtype::I64);
    let v: Vec<i64> =
        t.1.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
    ndarray::ArrayD::from_shape_vec(t.0.clone(), v).unwrap()
}

/// The real fairseq 0.12 Post-LN checkpoint, read, recognised, exported and
/// run on both engines: encoder output and teacher-forced log-probs equal
/// the ones fairseq computed (`fixtures/tensors/postln-fairseq012-best.safetensors`).
#[test]
fn fairseq_postln_checkpoint_matches_fairseq() {
    let ckpt = admin_convert::read::Checkpoint::open(Path::new(
        "fixtures/postln-fairseq012/checkpoint_best.pt",
    ))
    .unwrap();
    let rec = admin_convert::recognise::recognise(&ckpt, &Default::default()).unwrap();
    let m = rec.model;
    let t = reference_tensors("fixtures/tensors/postln-fairseq012-best.safetensors");
    let src = as_i64(&t["src_tokens"])
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let prev = as_i64(&t["prev_output_tokens"])
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    // encoder_out is T×B×C in fairseq.
    let want_enc = as_f32(&t["encoder_out"])
        .permuted_axes(vec![1, 0, 2])
        .as_standard_layout()
        .into_owned()
        .into_dimensionality::<ndarray::Ix3>()
        .unwrap();
    let want_lp = as_f32(&t["decoder_lprobs"])
        .into_dimensionality::<ndarray::Ix3>()
        .unwrap();
    let want_sin = as_f32(&t["sinusoidal_table"])
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let d = m.weights.encoder_embed.tokens.ncols();
    let table = admin_convert::spec::sinusoidal_table(want_sin.nrows(), d);
    assert!(max_abs_diff(&table, &want_sin) <= 1e-6);

    // The hand-written reference agrees with fairseq too.
    let (r_enc, r_lp) = reference(&m, &src, &prev);
    println!(
        "reference vs fairseq: encoder {:.2e}, log-probs {:.2e}",
        max_abs_diff(&r_enc, &want_enc),
        max_abs_diff(&r_lp, &want_lp)
    );

    let graphs = Arc::new(export::export(&m, Precision::Fp32, &ExportOptions::default()).unwrap());
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(
        TractBackend::new(GraphSource::Memory(graphs.clone())).unwrap(),
    )];
    if let Some(lib) = ort_library() {
        backends.push(Box::new(ort_backend(GraphSource::Memory(graphs), &lib)));
    }
    // The native engine: teacher forcing through its incremental decoder.
    let mut native = admin_convert::native::NativeBackend::new(&m, Some(2)).unwrap();
    let lp = native.forced(src.view(), prev.view()).unwrap();
    let e_native = max_abs_diff_real(&lp, &want_lp, &prev);
    println!("native vs fairseq: log-probs {e_native:.2e} (real positions)");
    assert!(
        e_native <= crate::tol::LOGPROB32,
        "native log-probs differ by {e_native}"
    );
    for b in backends.iter_mut() {
        let (enc, full, inc) = run_all(b.as_mut(), &src, &prev);
        let e_enc = max_abs_diff(&enc, &want_enc);
        let e_full = max_abs_diff(&full, &want_lp);
        let e_inc = max_abs_diff_real(&inc, &want_lp, &prev);
        let (mut worst, mut at) = (0f32, 0f32);
        for (a, b) in full.iter().zip(want_lp.iter()) {
            if (a - b).abs() > worst {
                worst = (a - b).abs();
                at = *b;
            }
        }
        let rel = full
            .iter()
            .zip(want_lp.iter())
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0f32, f32::max);
        println!(
            "  worst at a log-prob of {at}; max relative error {rel:.2e}; real positions {:.2e}",
            max_abs_diff_real(&full, &want_lp, &prev)
        );
        println!(
            "{}: vs fairseq: encoder_out {e_enc:.2e}, teacher-forced log-probs {e_full:.2e}, incremental {e_inc:.2e}",
            b.name()
        );
        assert!(
            e_enc <= crate::tol::ENCODER32,
            "{}: encoder_out differs by {e_enc}",
            b.name()
        );
        assert!(
            e_full <= crate::tol::LOGPROB32,
            "{}: log-probs differ by {e_full}",
            b.name()
        );
        assert!(
            e_inc <= crate::tol::LOGPROB32,
            "{}: incremental log-probs differ by {e_inc}",
            b.name()
        );
    }
}

/// The native engine (no ONNX) on every variant: teacher-forced log-probs
/// (through its incremental decoder) equal the reference forward pass, and
/// a row's log-probs do not depend on the other rows of the batch.
#[test]
fn native_engine_matches_reference() {
    use admin_convert::native::NativeBackend;
    for (i, v) in variants().iter().enumerate() {
        let m = make_model(v, 400 + i as u64);
        let (src, prev) = batch(
            13 + i as u64,
            &SRC_LENS,
            &TGT_LENS,
            v.src_vocab,
            v.tgt_vocab,
        );
        let (_, r_lp) = reference(&m, &src, &prev);
        for threads in [1, 3] {
            let mut b = NativeBackend::new(&m, Some(threads)).unwrap();
            let lp = b.forced(src.view(), prev.view()).unwrap();
            let e = max_abs_diff_real(&lp, &r_lp, &prev);
            println!(
                "{:32} native ({threads} threads) vs reference {e:.2e}",
                v.name
            );
            assert!(
                e <= crate::tol::LOGPROB32,
                "{}: native differs by {e}",
                v.name
            );
            // Row 1 (source padded by 5 in the batch) alone: bit for bit the same.
            let (s1, p1) = (src.slice(s![1..2, ..]), prev.slice(s![1..2, ..]));
            let alone = b.forced(s1, p1).unwrap();
            for t in 0..prev.ncols() {
                if prev[[1, t]] != PAD {
                    assert_eq!(
                        alone.slice(s![0, t, ..]),
                        lp.slice(s![1, t, ..]),
                        "{}",
                        v.name
                    );
                }
            }
        }
    }
}
