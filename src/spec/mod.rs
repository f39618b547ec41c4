//! The one typed description of a fairseq encoder-decoder Transformer that
//! everything after reading consumes: a [`Config`] (hyper-parameters), a
//! [`Family`] (how residuals are scaled) and [`Weights`] in `f32`.
//!
//! Every sublayer is described as `y = LN(x ⊙ ω + g·F(x))` (Post-LN),
//! `y = x + F(LN(x))` (Pre-LN) or `y = x ⊙ ω + g·F(x)` (no LayerNorm), with
//! ω and g held in [`Residual`]; `shared/spec/fold.md` gives the maths.
//! Weights keep fairseq's `[out, in]` layout.

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

mod rules;
pub use rules::{
    position_rows, validate, Body, Stack, SublayerKind, SublayerMut, SublayerRef, LN_EPS,
};

/// How the residual branch of a Post-LN sublayer is scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Standard Post-LN: `LN(x + F(x))`.
    PostLn,
    /// Pre-LN (`normalize_before`): `x + F(LN(x))`, final LayerNorm per stack.
    PreLn,
    /// Admin, authors' fork (Transformer-Clinic): trained vector ω per sublayer.
    AdminFork,
    /// admin-torch `as_module` default: constant scalar ω buffer.
    AdminTorchScalar,
    /// admin-torch `as_parameter=True`: trained vector ω.
    AdminTorchVector,
    /// DeepNet / DeepNorm: `LN(α·x + F(x))`, α from the layer counts.
    DeepNet,
    /// ReZero: `x + a·F(x)`, no LayerNorm; the fork's `rezero_postln`
    /// keeps Post-LN: `LN(x + a·F(x))`.
    ReZero,
    /// No LayerNorm and no scales (e.g. T-Fixup).
    LayerNormFree,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::PostLn => "post-ln",
            Family::PreLn => "pre-ln",
            Family::AdminFork => "admin-fork",
            Family::AdminTorchScalar => "admin-torch-scalar",
            Family::AdminTorchVector => "admin-torch-vector",
            Family::DeepNet => "deep-net",
            Family::ReZero => "re-zero",
            Family::LayerNormFree => "layer-norm-free",
        }
    }

    /// True when the residuals carry scales that `fold` must remove.
    pub fn has_scales(self) -> bool {
        !matches!(self, Family::PostLn | Family::PreLn | Family::LayerNormFree)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Family::PostLn => "standard Post-LN Transformer",
            Family::PreLn => "Pre-LN Transformer (normalize_before)",
            Family::AdminFork => "Admin (authors' fork): LN(x*w + F(x)), trained vector w",
            Family::AdminTorchScalar => "admin-torch: LN(x*w + F(x)), constant scalar w",
            Family::AdminTorchVector => "admin-torch: LN(x*w + F(x)), trained vector w",
            Family::DeepNet => "DeepNet: LN(a*x + F(x)), a from the layer counts",
            Family::ReZero => "ReZero: x + a*F(x), no LayerNorm (or LN(x + a*F(x)): rezero_postln)",
            Family::LayerNormFree => "LayerNorm-free residual Transformer",
        }
    }
}

/// Feed-forward activation (fairseq `activation_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    /// erf GeLU (fairseq `gelu`).
    Gelu,
    /// tanh approximation (fairseq `gelu_fast` / `gelu_accurate`).
    GeluAccurate,
    Tanh,
    Linear,
    Swish,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Activation> {
        Some(match s {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_fast" | "gelu_accurate" => Activation::GeluAccurate,
            "tanh" => Activation::Tanh,
            "linear" => Activation::Linear,
            "swish" | "silu" => Activation::Swish,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::GeluAccurate => "gelu_accurate",
            Activation::Tanh => "tanh",
            Activation::Linear => "linear",
            Activation::Swish => "swish",
        }
    }
}

/// Hyper-parameters of a fairseq `transformer` model, as fairseq names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// fairseq `--arch` name recorded in the checkpoint (informational).
    pub arch: String,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_embed_dim: usize,
    pub decoder_embed_dim: usize,
    pub encoder_ffn_embed_dim: usize,
    pub decoder_ffn_embed_dim: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub activation_fn: Activation,
    pub encoder_normalize_before: bool,
    pub decoder_normalize_before: bool,
    pub share_all_embeddings: bool,
    pub share_decoder_input_output_embed: bool,
    pub no_scale_embedding: bool,
    pub layernorm_embedding: bool,
    pub encoder_learned_pos: bool,
    pub decoder_learned_pos: bool,
    pub no_token_positional_embeddings: bool,
    pub max_source_positions: usize,
    pub max_target_positions: usize,
    /// Rows of the encoder / decoder token tables (dictionary size padded).
    pub src_vocab: usize,
    pub tgt_vocab: usize,
    /// Admin's `--init-type` (e.g. `adaptive`), when recorded.
    pub init_type: Option<String>,
}

impl Config {
    pub fn encoder_head_dim(&self) -> usize {
        self.encoder_embed_dim / self.encoder_attention_heads.max(1)
    }
    pub fn decoder_head_dim(&self) -> usize {
        self.decoder_embed_dim / self.decoder_attention_heads.max(1)
    }
}

/// A linear map `y = x Wᵀ + b`, `weight` is `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Array2<f32>,
    pub bias: Option<Array1<f32>>,
}

/// LayerNorm affine parameters (ε = 1e-5, biased variance).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub gamma: Array1<f32>,
    pub beta: Array1<f32>,
}

/// Multi-head attention projections (q | k | v | out), each `[d, d]`.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
}

/// The scale on a sublayer's residual: `x ⊙ omega + gate · F(x)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Residual {
    /// ω: length 1 (scalar) or d (per channel). `None` means 1.
    pub omega: Option<Vec<f32>>,
    /// ReZero's gate `a`. `None` means 1.
    pub gate: Option<f32>,
}

impl Residual {
    pub fn is_identity(&self) -> bool {
        self.omega.is_none() && self.gate.is_none()
    }
}

/// Feed-forward block `fc2(act(fc1(x)))`.
#[derive(Clone, Debug)]
pub struct FeedForward {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// One sublayer: its function's weights, the LayerNorm around it (absent in
/// LayerNorm-free families) and its residual scale.
#[derive(Clone, Debug)]
pub struct Sublayer<F> {
    pub f: F,
    pub norm: Option<LayerNorm>,
    pub residual: Residual,
}

#[derive(Clone, Debug)]
pub struct EncoderLayer {
    pub self_attn: Sublayer<Attention>,
    pub ffn: Sublayer<FeedForward>,
}

#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub self_attn: Sublayer<Attention>,
    /// q reads the decoder stream; k and v read the encoder output.
    pub cross_attn: Sublayer<Attention>,
    pub ffn: Sublayer<FeedForward>,
}

/// Positions added to the scaled token embeddings.
#[derive(Clone, Debug)]
pub enum Positions {
    None,
    /// fairseq's sinusoidal table (not stored), offsets per `shared/spec/fairseq.md`.
    Sinusoidal,
    /// A learned table `[max_positions + padding_idx + 1, d]` using the same offsets.
    Learned(Array2<f32>),
}

/// Token table, positions and optional `layernorm_embedding` of one stack.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// `[vocab, d]`.
    pub tokens: Array2<f32>,
    /// √d, or 1 with `no_scale_embedding`.
    pub scale: f32,
    pub positions: Positions,
    pub layernorm: Option<LayerNorm>,
}

/// All weights of the model in `f32`.
#[derive(Clone, Debug)]
pub struct Weights {
    pub encoder_embed: Embedding,
    pub encoder_layers: Vec<EncoderLayer>,
    /// Pre-LN final LayerNorm (`encoder.layer_norm`).
    pub encoder_final_norm: Option<LayerNorm>,
    pub decoder_embed: Embedding,
    pub decoder_layers: Vec<DecoderLayer>,
    /// Pre-LN final LayerNorm (`decoder.layer_norm`).
    pub decoder_final_norm: Option<LayerNorm>,
    /// `[tgt_vocab, d]`, no bias.
    pub output_projection: Array2<f32>,
}

/// Which tables are one storage in the source checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tying {
    /// Encoder and decoder token tables are one tensor.
    pub encoder_decoder: bool,
    /// Decoder token table and output projection are one tensor.
    pub decoder_output: bool,
}

/// A recognised model: hyper-parameters, family and weights.
#[derive(Clone, Debug)]
pub struct Model {
    pub config: Config,
    pub family: Family,
    pub tying: Tying,
    pub weights: Weights,
}

/// The most positions a config may claim (`max_source_positions`,
/// `max_target_positions`): 131072, far above any trained fairseq model;
/// beyond it a value is refused as absurd (tables are sized from it).
pub const MAX_POSITIONS: usize = 1 << 17;

/// The padding index of every fairseq dictionary.
pub const PAD: usize = 1;
/// End of sentence, also the first decoder input.
pub const EOS: usize = 2;
pub const UNK: usize = 3;
pub const BOS: usize = 0;

/// fairseq's sinusoidal position table with `num_rows` rows of width `dim`
/// (row `PAD` zero), see `shared/spec/fairseq.md`. Callers size it from
/// the lengths they need; [`sinusoidal_row`] gives any single row.
pub fn sinusoidal_table(num_rows: usize, dim: usize) -> Array2<f32> {
    let mut t = Array2::<f32>::zeros((num_rows, dim));
    let freqs = sinusoidal_freqs(dim);
    for (p, mut row) in t.rows_mut().into_iter().enumerate() {
        let row = row.as_slice_mut().expect("standard layout");
        sinusoidal_row_with(&freqs, p, row);
    }
    t
}

/// Row `pos` of [`sinusoidal_table`] into `out` (length `dim`), bit for bit.
pub fn sinusoidal_row(pos: usize, out: &mut [f32]) {
    sinusoidal_row_with(&sinusoidal_freqs(out.len()), pos, out);
}

/// The `dim / 2` frequencies of fairseq's table.
pub fn sinusoidal_freqs(dim: usize) -> Vec<f32> {
    let half = dim / 2;
    if half == 0 {
        return vec![];
    }
    // fairseq: emb = exp(arange(half, float32) * -(math.log(10000) / (half - 1))),
    // the step computed in double precision and applied in float32.
    let step = ((10000f64).ln() / (half as f64 - 1.0)) as f32;
    (0..half).map(|j| (j as f32 * -step).exp()).collect()
}

/// Row `pos` from precomputed [`sinusoidal_freqs`]; row `PAD` is zero.
pub fn sinusoidal_row_with(freqs: &[f32], pos: usize, out: &mut [f32]) {
    out.fill(0.0);
    let half = freqs.len();
    if pos == PAD || half == 0 {
        return;
    }
    for (j, f) in freqs.iter().enumerate() {
        let a = pos as f32 * f;
        out[j] = a.sin();
        out[half + j] = a.cos();
    }
}
