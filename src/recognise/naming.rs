//! Tensor namings: how each fairseq version (and the Admin fork) names a
//! sublayer's tensors. One [`AttentionNaming`] entry per attention layout;
//! adding a naming is one entry in [`ATTENTION_NAMINGS`].

use super::tensors::Tensors;
use super::{RecogniseError, R};
use crate::spec::{Attention, LayerNorm, Linear};
use ndarray::s;
use serde::Serialize;

/// How the tensors are named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Naming {
    /// `fused` (0.8 `in_proj_weight`, rows q|k|v) or `separate` (0.12 q/k/v_proj).
    pub attention: String,
    /// fairseq 0.12.2 all-zero fast-path shadow tensors were present (ignored).
    pub fast_path_shadows: bool,
    /// Legacy encoder `layer_norms.0/1` names.
    pub legacy_layer_norms: bool,
    /// 0.8 `decoder.embed_out` for an untied output projection.
    pub embed_out: bool,
}

impl Naming {
    /// A short label: `fairseq-0.8-fused`, `fairseq-0.12`, `fairseq-0.12.2`.
    pub fn label(&self) -> String {
        let base = if self.attention == "fused" {
            "fairseq-0.8 (fused in_proj)"
        } else if self.attention == "bare" {
            "Admin fork DeepNet (bare q/k/v_proj_weight, fused in_proj_bias)"
        } else if self.fast_path_shadows {
            "fairseq-0.12.2 (separate q/k/v, fast-path shadows)"
        } else {
            "fairseq-0.12 (separate q/k/v)"
        };
        let mut s = base.to_string();
        if self.legacy_layer_norms {
            s.push_str(", legacy layer_norms.0/1");
        }
        s
    }
}

/// One way of storing a multi-head attention's projections.
pub struct AttentionNaming {
    /// [`Naming::attention`] value (`fused`, `bare`, `separate`).
    pub id: &'static str,
    /// The tensor (after `PREFIX.`) whose presence selects this naming.
    pub marker: &'static str,
    /// Loads q, k, v, out of the attention at `prefix`, width `d`.
    pub(super) load: fn(&mut Tensors, &str, usize) -> R<Attention>,
}

/// Every attention naming, tried in order; the last one (fairseq ≥ 0.9's
/// separate `q_proj`/`k_proj`/`v_proj` `nn.Linear`s) is the fallback.
pub const ATTENTION_NAMINGS: &[AttentionNaming] = &[
    // fairseq 0.8: one `in_proj_weight` [3d, d], rows q | k | v, fused bias.
    AttentionNaming {
        id: "fused",
        marker: "in_proj_weight",
        load: fused,
    },
    // The Admin fork's DeepNet: bare `[out, in]` parameters + one fused bias.
    AttentionNaming {
        id: "bare",
        marker: "q_proj_weight",
        load: bare,
    },
    AttentionNaming {
        id: "separate",
        marker: "q_proj.weight",
        load: separate,
    },
];

/// Loads the attention at `prefix` with the first naming whose marker is
/// present (else the separate one, whose missing tensor is then reported).
pub(super) fn attention(
    t: &mut Tensors,
    prefix: &str,
    d: usize,
    naming: &mut Naming,
) -> R<Attention> {
    let fallback = ATTENTION_NAMINGS.last().expect("namings");
    let n = ATTENTION_NAMINGS
        .iter()
        .find(|n| t.has(&format!("{prefix}.{}", n.marker)))
        .unwrap_or(fallback);
    if naming.attention.is_empty() || n.id != fallback.id {
        naming.attention = n.id.into();
    }
    (n.load)(t, prefix, d)
}

/// The `i`-th `d` rows of a fused `[3d]` bias.
fn bias_part(b: &Option<ndarray::Array1<f32>>, i: usize, d: usize) -> Option<ndarray::Array1<f32>> {
    b.as_ref()
        .map(|b| b.slice(s![i * d..(i + 1) * d]).to_owned())
}

fn fused(t: &mut Tensors, prefix: &str, d: usize) -> R<Attention> {
    let w = t.mat(&format!("{prefix}.in_proj_weight"), 3 * d, d)?;
    let b = t.opt_vec(&format!("{prefix}.in_proj_bias"), 3 * d)?;
    let part = |i: usize| Linear {
        weight: w.slice(s![i * d..(i + 1) * d, ..]).to_owned(),
        bias: bias_part(&b, i, d),
    };
    Ok(Attention {
        q: part(0),
        k: part(1),
        v: part(2),
        out: t.linear(&format!("{prefix}.out_proj"), d, d)?,
    })
}

fn bare(t: &mut Tensors, prefix: &str, d: usize) -> R<Attention> {
    let b = t.opt_vec(&format!("{prefix}.in_proj_bias"), 3 * d)?;
    let mut part = |i: usize, w: &str| -> R<Linear> {
        Ok(Linear {
            weight: t.mat(&format!("{prefix}.{w}_proj_weight"), d, d)?,
            bias: bias_part(&b, i, d),
        })
    };
    Ok(Attention {
        q: part(0, "q")?,
        k: part(1, "k")?,
        v: part(2, "v")?,
        out: t.linear(&format!("{prefix}.out_proj"), d, d)?,
    })
}

fn separate(t: &mut Tensors, prefix: &str, d: usize) -> R<Attention> {
    Ok(Attention {
        q: t.linear(&format!("{prefix}.q_proj"), d, d)?,
        k: t.linear(&format!("{prefix}.k_proj"), d, d)?,
        v: t.linear(&format!("{prefix}.v_proj"), d, d)?,
        out: t.linear(&format!("{prefix}.out_proj"), d, d)?,
    })
}

/// fairseq 0.12.2's `TransformerEncoderLayerBase` BetterTransformer shadows.
fn is_fast_path_shadow(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("encoder.layers.") else {
        return false;
    };
    let mut parts = rest.splitn(2, '.');
    let idx_ok = parts.next().is_some_and(|s| s.parse::<usize>().is_ok());
    idx_ok
        && matches!(
            parts.next(),
            Some(
                "in_proj_weight"
                    | "in_proj_bias"
                    | "out_proj_weight"
                    | "out_proj_bias"
                    | "fc1_weight"
                    | "fc1_bias"
                    | "fc2_weight"
                    | "fc2_bias"
            )
        )
}

/// The LayerNorms of encoder layer `p` (self-attention, FFN): fairseq's
/// `self_attn_layer_norm` / `final_layer_norm`, or the legacy
/// `layer_norms.0` / `.1`.
pub(super) fn encoder_layer_norms(
    t: &mut Tensors,
    p: &str,
    d: usize,
    naming: &mut Naming,
) -> R<(Option<LayerNorm>, Option<LayerNorm>)> {
    let legacy = t.has(&format!("{p}.layer_norms.0.weight"));
    naming.legacy_layer_norms |= legacy;
    Ok(if legacy {
        (
            t.layer_norm(&format!("{p}.layer_norms.0"), d)?,
            t.layer_norm(&format!("{p}.layer_norms.1"), d)?,
        )
    } else {
        (
            t.layer_norm(&format!("{p}.self_attn_layer_norm"), d)?,
            t.layer_norm(&format!("{p}.final_layer_norm"), d)?,
        )
    })
}

/// The name of an untied output projection: 0.12's
/// `decoder.output_projection.weight` or 0.8's `decoder.embed_out`.
pub(super) fn output_projection(t: &Tensors, naming: &mut Naming) -> Option<&'static str> {
    if t.has("decoder.output_projection.weight") {
        Some("decoder.output_projection.weight")
    } else if t.has("decoder.embed_out") {
        naming.embed_out = true;
        Some("decoder.embed_out")
    } else {
        None
    }
}

/// True for a tensor every naming leaves unread on purpose: `.version`
/// counters, the sinusoidal `_float_tensor` dummies, 0.12.2's fast-path
/// shadows (a shadow that is not all zero is noted).
pub(super) fn is_ignored(
    t: &Tensors,
    name: &str,
    naming: &mut Naming,
    notes: &mut Vec<String>,
) -> R<bool> {
    let shadow = is_fast_path_shadow(name);
    if shadow {
        naming.fast_path_shadows = true;
        let v = t.ckpt.tensor(name).map_err(|e| RecogniseError(e.msg))?;
        if v.to_f32().iter().any(|x| *x != 0.0) {
            notes.push(format!("{name} is a fast-path shadow tensor but not all zero: ignored anyway (fairseq never reads it)"));
        }
    }
    Ok(shadow || name.ends_with(".version") || name.ends_with("embed_positions._float_tensor"))
}
