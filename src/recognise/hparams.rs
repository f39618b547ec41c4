//! Hyper-parameters: command-line [`Overrides`], fairseq `--arch`
//! [`PRESETS`], and the [`Resolver`] that takes each value from flag,
//! checkpoint, tensors, preset or default, rejecting recorded values that
//! are not valid for their key (never replacing them).

use super::{HValue, Hparams};
use crate::spec::{Activation, Family};
use serde::Serialize;
use std::collections::BTreeMap;

/// Hyper-parameters given on the command line; they win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// A fairseq `--arch` preset to take unknown values from.
    pub arch: Option<String>,
    pub encoder_heads: Option<usize>,
    pub decoder_heads: Option<usize>,
    pub activation: Option<Activation>,
    pub encoder_normalize_before: Option<bool>,
    pub decoder_normalize_before: Option<bool>,
    pub no_scale_embedding: Option<bool>,
    pub max_source_positions: Option<usize>,
    pub max_target_positions: Option<usize>,
    /// Force the residual family (e.g. `deep-net`, which leaves no trace in the tensors).
    pub family: Option<Family>,
}

/// Where each hyper-parameter's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provenance {
    Flag,
    Checkpoint,
    Tensors,
    Preset,
    Default,
}

/// Values a fairseq `--arch` preset fixes (those shapes cannot tell).
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub embed_dim: usize,
    pub ffn_dim: usize,
    pub heads: usize,
    pub layers: usize,
    pub normalize_before: bool,
    pub activation: Activation,
}

/// fairseq's transformer architecture presets.
pub const PRESETS: &[Preset] = &[
    preset("transformer", 512, 2048, 8, 6, false),
    preset("transformer_wmt_en_de", 512, 2048, 8, 6, false),
    preset("transformer_iwslt_de_en", 512, 1024, 4, 6, false),
    preset("transformer_tiny", 64, 64, 2, 2, false),
    preset(
        "transformer_vaswani_wmt_en_de_big",
        1024,
        4096,
        16,
        6,
        false,
    ),
    preset(
        "transformer_vaswani_wmt_en_fr_big",
        1024,
        4096,
        16,
        6,
        false,
    ),
    preset("transformer_wmt_en_de_big", 1024, 4096, 16, 6, false),
    preset("transformer_wmt_en_de_big_t2t", 1024, 4096, 16, 6, true),
];

const fn preset(
    name: &'static str,
    embed_dim: usize,
    ffn_dim: usize,
    heads: usize,
    layers: usize,
    normalize_before: bool,
) -> Preset {
    Preset {
        name,
        embed_dim,
        ffn_dim,
        heads,
        layers,
        normalize_before,
        activation: Activation::Relu,
    }
}

pub fn find_preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Resolves each hyper-parameter from flags, checkpoint, tensors, preset, default.
pub(super) struct Resolver<'a> {
    pub h: &'a Hparams,
    pub preset: Option<&'static Preset>,
    pub provenance: BTreeMap<&'static str, Provenance>,
    pub missing: Vec<String>,
    /// Recorded values that are not valid for their key (`key = value is ...`).
    pub invalid: Vec<String>,
}

/// A recorded value as the user would write it in a message (shortened).
pub(super) fn show(v: &HValue) -> String {
    let s = match v {
        HValue::None => "None".to_string(),
        HValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        HValue::Int(i) => i.to_string(),
        HValue::Float(f) => f.to_string(),
        HValue::Str(s) => format!("{s:?}"),
    };
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// A boolean flag: `True`/`False`, 0/1, or the strings "true"/"false".
fn strict_bool(v: &HValue) -> Option<bool> {
    match v {
        HValue::Int(0 | 1) => v.as_bool(),
        HValue::Int(_) | HValue::Float(_) => None,
        _ => v.as_bool(),
    }
}

impl Resolver<'_> {
    pub fn get(&self, key: &str) -> Option<&HValue> {
        self.h.get(key).filter(|v| !matches!(v, HValue::None))
    }

    pub fn usize(
        &mut self,
        key: &'static str,
        flag: Option<usize>,
        preset: Option<usize>,
        default: Option<usize>,
        what: &str,
    ) -> usize {
        if let Some(v) = flag {
            self.provenance.insert(key, Provenance::Flag);
            return v;
        }
        if let Some(raw) = self.get(key) {
            match raw.as_usize().filter(|v| *v >= 1) {
                Some(v) => {
                    self.provenance.insert(key, Provenance::Checkpoint);
                    return v;
                }
                None => {
                    self.invalid
                        .push(format!("{key} = {} is not a positive integer", show(raw)));
                    return 1;
                }
            }
        }
        if let Some(v) = preset {
            self.provenance.insert(key, Provenance::Preset);
            return v;
        }
        if let Some(v) = default {
            self.provenance.insert(key, Provenance::Default);
            return v;
        }
        self.missing.push(what.to_string());
        0
    }

    /// A boolean that the tensors can also tell (`inferred`).
    pub fn bool(
        &mut self,
        key: &'static str,
        flag: Option<bool>,
        inferred: Option<bool>,
        default: bool,
    ) -> bool {
        if let Some(v) = flag {
            self.provenance.insert(key, Provenance::Flag);
            return v;
        }
        if let Some(raw) = self.get(key) {
            match strict_bool(raw) {
                Some(v) => {
                    self.provenance.insert(key, Provenance::Checkpoint);
                    return v;
                }
                None => {
                    self.invalid
                        .push(format!("{key} = {} is not a boolean", show(raw)));
                    return default;
                }
            }
        }
        if let Some(v) = inferred {
            self.provenance.insert(key, Provenance::Tensors);
            return v;
        }
        self.provenance.insert(key, Provenance::Default);
        default
    }
}
