//! Hyper-parameters: command-line [`Overrides`], fairseq `--arch`
//! [`PRESETS`], and the [`Resolver`] that takes each value from flag,
//! checkpoint, tensors, preset or default, rejecting recorded values that
//! are not valid for their key (never replacing them).

use super::tensors::{Shapes, Tensors};
use super::{err, RecogniseError, R};
use crate::read::{HValue, Hparams};
use crate::spec::{Activation, Family, MAX_POSITIONS};
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

impl Resolver<'_> {
    /// The first recorded value that was not valid for its key, as an error.
    pub(super) fn check_invalid(&self) -> R<()> {
        match self.invalid.first() {
            Some(first) => err(format!("config {first}")),
            None => Ok(()),
        }
    }
}

/// The dimensions the checkpoint recorded must agree with its tensors.
pub(super) fn check_recorded(h: &Hparams, s: &Shapes) -> R<()> {
    for (key, got) in [
        ("encoder_embed_dim", s.d_enc),
        ("decoder_embed_dim", s.d_dec),
        ("encoder_layers", s.enc_layers),
        ("decoder_layers", s.dec_layers),
        ("encoder_ffn_embed_dim", s.enc_ffn),
        ("decoder_ffn_embed_dim", s.dec_ffn),
    ] {
        let raw = h.get(key).filter(|v| !matches!(v, HValue::None));
        if let Some(raw) = raw.filter(|v| v.as_usize().is_none()) {
            return err(format!(
                "config {key} = {} is not a positive integer",
                show(raw)
            ));
        }
        if let Some(v) = raw.and_then(HValue::as_usize) {
            if v != got {
                return err(format!(
                    "checkpoint config says {key}={v} but the tensors say {got}"
                ));
            }
        }
    }
    Ok(())
}

/// The hyper-parameters shapes cannot tell, resolved (see [`resolve`]).
#[derive(Clone, Debug)]
pub(super) struct Hyper {
    /// The `--arch` name (flag, else recorded).
    pub arch: Option<String>,
    pub enc_heads: usize,
    pub dec_heads: usize,
    pub activation: Activation,
    pub max_src: usize,
    pub max_tgt: usize,
    pub enc_normalize_before: bool,
    pub dec_normalize_before: bool,
    pub no_scale: bool,
    pub layernorm_embedding: bool,
    pub enc_learned_pos: bool,
    pub dec_learned_pos: bool,
    pub no_pos: bool,
}

/// The `--arch` preset: the flag's (an unknown name is an error), else the
/// recorded arch's when it is one.
fn choose_preset(ov: &Overrides, arch: Option<&str>) -> R<Option<&'static Preset>> {
    match &ov.arch {
        Some(a) => Ok(Some(find_preset(a).ok_or_else(|| {
            RecogniseError(format!(
                "unknown --arch {a}; known: {}",
                PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?)),
        None => Ok(arch.and_then(find_preset)),
    }
}

/// `activation_fn`: flag, recorded (a known name), fairseq's default for a
/// known arch, else missing.
fn activation(r: &mut Resolver, ov: &Overrides) -> R<Activation> {
    let h = r.h;
    Ok(if let Some(a) = ov.activation {
        r.provenance.insert("activation_fn", Provenance::Flag);
        a
    } else if let Some(s) = h.get("activation_fn").and_then(|v| v.as_str()) {
        r.provenance.insert("activation_fn", Provenance::Checkpoint);
        Activation::parse(s).ok_or_else(|| {
            RecogniseError(format!(
                "config activation_fn = {} is not a known activation (relu, gelu, gelu_fast, gelu_accurate, tanh, linear, swish)",
                show(&HValue::Str(s.to_string()))
            ))
        })?
    } else if let Some(v) = h
        .get("activation_fn")
        .filter(|v| !matches!(v, HValue::None))
    {
        return err(format!(
            "config activation_fn = {} is not a known activation",
            show(v)
        ));
    } else if h.contains_key("arch") || r.preset.is_some() {
        // fairseq's default for every transformer arch, recorded or preset.
        r.provenance.insert("activation_fn", Provenance::Preset);
        Activation::Relu
    } else {
        r.missing
            .push("activation function (--activation relu|gelu|...)".into());
        Activation::Relu
    })
}

/// Resolves what shapes cannot tell from flags, the checkpoint's config,
/// the tensors present, an `--arch` preset and defaults; an error names
/// what is missing or invalid. The [`Resolver`] is returned for the values
/// decided later (embedding sharing) and the provenance report.
pub(super) fn resolve<'a>(
    h: &'a Hparams,
    ov: &Overrides,
    s: &Shapes,
    t: &Tensors,
    notes: &mut Vec<String>,
) -> R<(Hyper, Resolver<'a>)> {
    let arch = ov
        .arch
        .clone()
        .or_else(|| h.get("arch").and_then(|v| v.as_str().map(str::to_string)));
    let preset = choose_preset(ov, arch.as_deref())?;
    if let (Some(p), Some(_)) = (preset, &ov.arch) {
        if p.embed_dim != s.d_enc || p.layers != s.enc_layers || p.ffn_dim != s.enc_ffn {
            notes.push(format!(
                "--arch {} describes {}d/{}ffn/{} layers but the tensors are {}d/{}ffn/{} layers: using the tensors' shapes, heads and activation from the preset",
                p.name, p.embed_dim, p.ffn_dim, p.layers, s.d_enc, s.enc_ffn, s.enc_layers
            ));
        }
    }
    let mut r = Resolver {
        h,
        preset,
        provenance: BTreeMap::new(),
        missing: Vec::new(),
        invalid: Vec::new(),
    };
    let p_heads = preset.map(|p| p.heads);
    let enc_heads = r.usize(
        "encoder_attention_heads",
        ov.encoder_heads,
        p_heads,
        None,
        "encoder attention heads (--heads or --encoder-heads)",
    );
    let dec_heads = r.usize(
        "decoder_attention_heads",
        ov.decoder_heads,
        p_heads,
        None,
        "decoder attention heads (--heads or --decoder-heads)",
    );
    let activation = activation(&mut r, ov)?;
    let max_src = r.usize(
        "max_source_positions",
        ov.max_source_positions,
        None,
        Some(1024),
        "",
    );
    let max_tgt = r.usize(
        "max_target_positions",
        ov.max_target_positions,
        None,
        Some(1024),
        "",
    );
    r.check_invalid()?;
    if !r.missing.is_empty() {
        return err(format!(
            "cannot tell {}: the file records no fairseq config; pass the flags or --arch NAME (one of: {})",
            r.missing.join(", "),
            PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
        ));
    }
    for (what, d, heads) in [
        ("encoder", s.d_enc, enc_heads),
        ("decoder", s.d_dec, dec_heads),
    ] {
        if heads == 0 || !d.is_multiple_of(heads) {
            return err(format!(
                "config {what}_attention_heads = {heads} does not divide {what}_embed_dim = {d}"
            ));
        }
    }
    for (key, v) in [
        ("max_source_positions", max_src),
        ("max_target_positions", max_tgt),
    ] {
        if v > MAX_POSITIONS {
            return err(format!(
                "config {key} = {v} is absurd (more than {MAX_POSITIONS} positions)"
            ));
        }
    }
    let normalize_before = preset.is_some_and(|p| p.normalize_before);
    let enc_normalize_before = r.bool(
        "encoder_normalize_before",
        ov.encoder_normalize_before,
        Some(t.has("encoder.layer_norm.weight")),
        normalize_before,
    );
    let dec_normalize_before = r.bool(
        "decoder_normalize_before",
        ov.decoder_normalize_before,
        Some(t.has("decoder.layer_norm.weight")),
        normalize_before,
    );
    let no_scale = r.bool("no_scale_embedding", ov.no_scale_embedding, None, false);
    for key in [
        "layernorm_embedding",
        "encoder_learned_pos",
        "decoder_learned_pos",
    ] {
        r.provenance.insert(key, Provenance::Tensors);
    }
    let no_pos = r.bool("no_token_positional_embeddings", None, None, false);
    r.check_invalid()?;
    let hyper = Hyper {
        arch,
        enc_heads,
        dec_heads,
        activation,
        max_src,
        max_tgt,
        enc_normalize_before,
        dec_normalize_before,
        no_scale,
        layernorm_embedding: t.has("encoder.layernorm_embedding.weight"),
        enc_learned_pos: t.has("encoder.embed_positions.weight"),
        dec_learned_pos: t.has("decoder.embed_positions.weight"),
        no_pos,
    };
    Ok((hyper, r))
}
