//! Folding residual scales into a standard Transformer
//! (`shared/spec/fold.md`): `LN(x ⊙ ω + F(x))` becomes `LN(x̃ + F̃(x̃))` by
//! dividing the input columns of every linear map that reads `x` by ω and
//! multiplying the producer of `x` (previous LayerNorm, or the embeddings)
//! by ω. ReZero's gate moves into the sublayer's output projection.
//!
//! [`fold`] is exact in real arithmetic. [`FoldMode::Approximate`] keeps the
//! embeddings tied and sinusoidal by folding each stack's first ω as a
//! scalar (its mean) into the sublayer output (fold.md §3); callers measure
//! and report its error.

use crate::spec::*;
use ndarray::{Array1, Array2};

/// How to fold the first sublayer of each stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FoldMode {
    /// Scale the token and position tables (untying them if shared and
    /// carrying sinusoidal positions as a learned table). Exact.
    #[default]
    Exact,
    /// Keep tables tied and sinusoidal; fold the first ω as its mean scalar
    /// into the sublayer output, changing LayerNorm's effective ε. Smaller,
    /// not exact.
    Approximate,
}

/// What a fold did, for the report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FoldSummary {
    pub from: String,
    pub to: String,
    /// Sublayers whose scale was removed.
    pub sublayers_folded: usize,
    /// The token tables were untied to carry ω.
    pub untied_embeddings: bool,
    /// Sinusoidal positions became a learned table.
    pub positions_to_learned: bool,
    /// The model had nothing to fold.
    pub unchanged: bool,
    pub notes: Vec<String>,
}

/// Multiply the columns (input features) of `w` [out, in] by `s` (len 1 or in).
fn scale_columns(w: &mut Array2<f32>, s: &[f32], divide: bool) {
    for mut row in w.rows_mut() {
        for (k, x) in row.iter_mut().enumerate() {
            let f = if s.len() == 1 { s[0] } else { s[k] };
            if divide {
                *x /= f;
            } else {
                *x *= f;
            }
        }
    }
}

fn scale_vec(v: &mut Array1<f32>, s: &[f32]) {
    for (k, x) in v.iter_mut().enumerate() {
        *x *= if s.len() == 1 { s[0] } else { s[k] };
    }
}

fn scale_ln(ln: &mut LayerNorm, s: &[f32]) {
    scale_vec(&mut ln.gamma, s);
    scale_vec(&mut ln.beta, s);
}

fn scale_linear_output(l: &mut Linear, a: f32) {
    l.weight.mapv_inplace(|x| x * a);
    if let Some(b) = &mut l.bias {
        b.mapv_inplace(|x| x * a);
    }
}

/// The producer of a stack's stream: embeddings or a LayerNorm.
enum Producer<'a> {
    Embedding(&'a mut Embedding),
    Norm(&'a mut LayerNorm),
}

/// Fold one stack's sublayers in order; returns how many were folded.
fn fold_stack<'a>(
    embed: &'a mut Embedding,
    views: Vec<SublayerMut<'a>>,
    mode: FoldMode,
    max_positions: usize,
    summary: &mut FoldSummary,
) -> usize {
    let mut folded = 0;
    let mut producer = Producer::Embedding(embed);
    for (j, mut v) in views.into_iter().enumerate() {
        if let Some(a) = v.residual.gate.take() {
            scale_linear_output(v.output, a);
            folded += 1;
        }
        if let Some(w) = v.residual.omega.take() {
            folded += 1;
            match &mut producer {
                Producer::Norm(ln) => {
                    scale_ln(ln, &w);
                    for r in v.readers.iter_mut() {
                        scale_columns(&mut r.weight, &w, true);
                    }
                }
                Producer::Embedding(e) => {
                    if let Some(ln) = &mut e.layernorm {
                        scale_ln(ln, &w);
                        for r in v.readers.iter_mut() {
                            scale_columns(&mut r.weight, &w, true);
                        }
                    } else if mode == FoldMode::Approximate && j == 0 {
                        // LN(c·x + F(x)) ≈ LN(x + F(x)/c), ε → ε/c² (fold.md §3).
                        let c = w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64;
                        scale_linear_output(v.output, 1.0 / c as f32);
                        summary.notes.push(format!(
                            "approximate: first sublayer's omega folded as its mean {c:.6}"
                        ));
                    } else {
                        scale_columns(&mut e.tokens, &w, false);
                        let d = e.tokens.ncols();
                        let table = match std::mem::replace(&mut e.positions, Positions::None) {
                            Positions::Learned(t) => Some(t),
                            Positions::Sinusoidal => {
                                summary.positions_to_learned = true;
                                Some(sinusoidal_table(
                                    crate::spec::position_rows(max_positions),
                                    d,
                                ))
                            }
                            Positions::None => None,
                        };
                        e.positions = match table {
                            Some(mut t) => {
                                scale_columns(&mut t, &w, false);
                                Positions::Learned(t)
                            }
                            None => Positions::None,
                        };
                        for r in v.readers.iter_mut() {
                            scale_columns(&mut r.weight, &w, true);
                        }
                    }
                }
            }
        }
        // The sublayer's LayerNorm produces the next one's input.
        if let Some(n) = { v.norm }.as_mut() {
            producer = Producer::Norm(n);
        }
    }
    folded
}

/// Fold every residual scale of `model` into its weights.
pub fn fold(model: &Model, mode: FoldMode) -> Model {
    let mut m = model.clone();
    let mut summary = FoldSummary::default();
    fold_in_place(&mut m, mode, &mut summary);
    m
}

/// [`fold`], also describing what was done.
pub fn fold_with_summary(model: &Model, mode: FoldMode) -> (Model, FoldSummary) {
    let mut m = model.clone();
    let mut summary = FoldSummary {
        from: model.family.name().into(),
        ..Default::default()
    };
    fold_in_place(&mut m, mode, &mut summary);
    summary.to = m.family.name().into();
    (m, summary)
}

fn fold_in_place(m: &mut Model, mode: FoldMode, summary: &mut FoldSummary) {
    if !m.family.has_scales() {
        summary.unchanged = true;
        return;
    }
    let exact_first = mode == FoldMode::Exact;
    let enc_has_first = m
        .weights
        .encoder_layers
        .first()
        .is_some_and(|l| l.self_attn.residual.omega.is_some());
    let dec_has_first = m
        .weights
        .decoder_layers
        .first()
        .is_some_and(|l| l.self_attn.residual.omega.is_some());
    // Scaling token tables requires untying them first (the output
    // projection keeps the unscaled table).
    let enc_scaled = enc_has_first && exact_first && m.weights.encoder_embed.layernorm.is_none();
    let dec_scaled = dec_has_first && exact_first && m.weights.decoder_embed.layernorm.is_none();
    if enc_scaled || dec_scaled {
        summary.untied_embeddings = m.tying.encoder_decoder || m.tying.decoder_output;
        m.tying = Tying::default();
        m.config.share_all_embeddings = false;
        m.config.share_decoder_input_output_embed = false;
    }
    let w = &mut m.weights;
    let (embed, views) = w.stack_sublayers_mut(Stack::Encoder);
    let n1 = fold_stack(embed, views, mode, m.config.max_source_positions, summary);
    let (embed, views) = w.stack_sublayers_mut(Stack::Decoder);
    let n2 = fold_stack(embed, views, mode, m.config.max_target_positions, summary);
    summary.sublayers_folded = n1 + n2;
    if matches!(w.encoder_embed.positions, Positions::Learned(_)) {
        m.config.encoder_learned_pos = true;
    }
    if matches!(w.decoder_embed.positions, Positions::Learned(_)) {
        m.config.decoder_learned_pos = true;
    }
    let all_norms = m.weights.sublayers().iter().all(|s| s.norm.is_some());
    m.family = match m.family {
        // The fork's `rezero_postln`: LayerNorms kept, only the gates folded.
        Family::ReZero if all_norms && m.config.encoder_normalize_before => Family::PreLn,
        Family::ReZero if all_norms => Family::PostLn,
        Family::ReZero => {
            summary.notes.push(
                "ReZero has no LayerNorm: the result is a LayerNorm-free residual Transformer, which stock fairseq cannot build"
                    .into(),
            );
            Family::LayerNormFree
        }
        _ => Family::PostLn,
    };
}

/// Largest |a - b| over two equally shaped arrays (NaN counts as infinite).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f32::max)
}
