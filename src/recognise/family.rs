//! Residual families: how a checkpoint's family is told apart and where
//! each sublayer's residual scale comes from. One [`FamilyRule`] per
//! family in [`FAMILIES`]; adding a family is one entry here and one fold
//! rule in [`crate::transform::fold`].

use super::tensors::Tensors;
use super::{err, R};
use crate::read::Checkpoint;
use crate::spec::{DecoderLayer, EncoderLayer, Family, Residual};

/// What the family is told from: tensor names and the recorded `init_type`.
pub struct Evidence<'a> {
    pub ckpt: &'a Checkpoint,
    /// Admin's `--init-type` (`adaptive`, `deepnet`, `rezero`, ...).
    pub init_type: Option<&'a str>,
    pub normalize_before: bool,
}

impl Evidence<'_> {
    fn has_any(&self, suffix: &str) -> bool {
        self.ckpt.entries.iter().any(|e| e.name.ends_with(suffix))
    }
    fn init_type_has(&self, words: &[&str]) -> bool {
        self.init_type
            .is_some_and(|s| words.iter().any(|w| s.contains(w)))
    }
}

/// Where a family's residual scales come from.
#[derive(Clone, Copy, Debug)]
pub enum ResidualSource {
    /// No scales (identity residuals).
    None,
    /// A stored ω per sublayer: the names after `PREFIX.layers.N.`, encoder
    /// (self-attention, FFN) and decoder (self, cross, FFN).
    Omega {
        encoder: [&'static str; 2],
        decoder: [&'static str; 3],
    },
    /// DeepNet: not stored, α from the layer counts ([`deepnet_alphas`]).
    DeepNetAlpha,
    /// One stored gate per layer shared by all its sublayers (ReZero).
    LayerGate(&'static str),
}

/// One family: how it is recognised and where its scales are.
pub struct FamilyRule {
    pub family: Family,
    /// True when the evidence says this family (rules are tried in order).
    pub detect: fn(&Evidence) -> bool,
    pub residual: ResidualSource,
}

const ADMIN_TORCH: ResidualSource = ResidualSource::Omega {
    encoder: ["self_attn_residual.omega", "ffn_residual.omega"],
    decoder: [
        "self_attn_residual.omega",
        "encoder_attn_residual.omega",
        "ffn_residual.omega",
    ],
};

/// admin-torch's ω buffers are all scalars (`as_module` default).
fn admin_torch_scalar(e: &Evidence) -> bool {
    e.has_any("_residual.omega")
        && e.ckpt
            .entries
            .iter()
            .filter(|x| x.name.ends_with("_residual.omega"))
            .all(|x| x.shape.iter().product::<usize>() == 1)
}

fn has_layer_ln(e: &Evidence) -> bool {
    e.has_any(".self_attn_layer_norm.weight") || e.has_any(".layer_norms.0.weight")
}

/// Every family, in the order they are tried; the last always matches.
pub const FAMILIES: &[FamilyRule] = &[
    FamilyRule {
        family: Family::AdminFork,
        detect: |e| e.has_any(".attention_ratio_change") || e.has_any(".self_ratio_change"),
        residual: ResidualSource::Omega {
            encoder: ["attention_ratio_change", "fc_ratio_change"],
            decoder: [
                "self_ratio_change",
                "encoder_ratio_change",
                "fc_ratio_change",
            ],
        },
    },
    FamilyRule {
        family: Family::AdminTorchScalar,
        detect: admin_torch_scalar,
        residual: ADMIN_TORCH,
    },
    FamilyRule {
        family: Family::AdminTorchVector,
        detect: |e| e.has_any("_residual.omega"),
        residual: ADMIN_TORCH,
    },
    // The fork's `--init-type rezero` (no LayerNorm) and `rezero_postln`.
    FamilyRule {
        family: Family::ReZero,
        detect: |e| e.has_any(".rezero_weight"),
        residual: ResidualSource::LayerGate("rezero_weight"),
    },
    // The fork's `--init-type deepnet` (f4b398e spelled it `deepnorm`).
    FamilyRule {
        family: Family::DeepNet,
        detect: |e| e.init_type_has(&["deepnet", "deepnorm"]),
        residual: ResidualSource::DeepNetAlpha,
    },
    FamilyRule {
        family: Family::LayerNormFree,
        detect: |e| !has_layer_ln(e),
        residual: ResidualSource::None,
    },
    FamilyRule {
        family: Family::PreLn,
        detect: |e| e.normalize_before,
        residual: ResidualSource::None,
    },
    FamilyRule {
        family: Family::PostLn,
        detect: |_| true,
        residual: ResidualSource::None,
    },
];

/// The rule of `family`.
pub fn rule(family: Family) -> &'static FamilyRule {
    FAMILIES
        .iter()
        .find(|r| r.family == family)
        .expect("every family has a rule")
}

/// The first family whose rule matches the evidence.
pub(super) fn detect(e: &Evidence) -> Family {
    FAMILIES
        .iter()
        .find(|r| (r.detect)(e))
        .map(|r| r.family)
        .unwrap_or(Family::PostLn)
}

/// DeepNet's α (encoder, decoder) for N encoder and M decoder layers, as the
/// Admin fork computes it (`fixtures/admin-deepnet-fairseq08/NOTES.md`):
/// encoder `0.81·(N⁴M)^(1/16)`, decoder `(3M)^(1/4)`.
pub fn deepnet_alphas(n: usize, m: usize) -> (f32, f32) {
    let (n, m) = (n as f32, m as f32);
    (
        0.81 * (n.powi(4) * m).powf(1.0 / 16.0),
        (3.0 * m).powf(0.25),
    )
}

fn omega(v: Option<Vec<f32>>) -> Residual {
    Residual {
        omega: v,
        gate: None,
    }
}

/// The residuals of the `count` sublayers of layer `prefix` (`encoder.layers.0`).
pub(super) fn residuals(
    t: &mut Tensors,
    family: Family,
    prefix: &str,
    decoder: bool,
    d: usize,
    alpha: f32,
) -> R<Vec<Residual>> {
    let count = if decoder { 3 } else { 2 };
    Ok(match rule(family).residual {
        ResidualSource::None => vec![Residual::default(); count],
        ResidualSource::Omega {
            encoder,
            decoder: dec,
        } => {
            let names: &[&str] = if decoder { &dec } else { &encoder };
            let mut v = Vec::with_capacity(count);
            for n in names {
                v.push(omega(t.scale(&format!("{prefix}.{n}"), d)?));
            }
            v
        }
        ResidualSource::DeepNetAlpha => vec![omega(Some(vec![alpha])); count],
        ResidualSource::LayerGate(name) => {
            let g = t.scale(&format!("{prefix}.{name}"), 1)?;
            let r = Residual {
                omega: None,
                gate: g.and_then(|v| v.first().copied()),
            };
            vec![r; count]
        }
    })
}

/// The family: `--family` if given, else detected from the evidence.
/// Residual scales on a Pre-LN model (other than ReZero's gates) are
/// refused as an unknown combination.
pub(super) fn choose(forced: Option<Family>, e: &Evidence) -> R<Family> {
    let family = forced.unwrap_or_else(|| detect(e));
    if family.has_scales() && e.normalize_before && family != Family::ReZero {
        return err(format!(
            "{} residual scales on a normalize_before (Pre-LN) model are not a known combination",
            family.name()
        ));
    }
    Ok(family)
}

/// Every sublayer of a LayerNorm family must have its LayerNorm.
pub(super) fn check_layer_norms(
    family: Family,
    encoder: &[EncoderLayer],
    decoder: &[DecoderLayer],
) -> R<()> {
    if matches!(family, Family::ReZero | Family::LayerNormFree) {
        return Ok(());
    }
    let enc = encoder.iter().enumerate().flat_map(|(i, l)| l.sublayers(i));
    let dec = decoder.iter().enumerate().flat_map(|(i, l)| l.sublayers(i));
    for s in enc.chain(dec) {
        if s.norm.is_none() {
            return err(format!("missing tensor {}.weight", s.norm_name()));
        }
    }
    Ok(())
}
