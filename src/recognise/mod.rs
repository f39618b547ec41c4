//! Layout recognition: a [`Checkpoint`]'s names, shapes and recorded
//! hyper-parameters → one typed [`Model`] (family, config, f32 weights).
//!
//! Shapes are authoritative for dimensions, layer counts and vocabulary;
//! what shapes cannot tell (heads, activation, ...) comes from, in order,
//! command-line [`Overrides`], the checkpoint's config, inference from the
//! tensors present, an `--arch` preset. When something is still unknown the
//! error lists exactly what is missing. A tensor that is missing,
//! unexpected or of the wrong shape is an error naming it.

mod family;
mod hparams;
mod naming;

pub use family::{deepnet_alphas, FamilyRule, FAMILIES};
pub use hparams::{find_preset, Overrides, Preset, Provenance, PRESETS};
pub use naming::{AttentionNaming, Naming, ATTENTION_NAMINGS};

use crate::read::{Checkpoint, HValue, Hparams};
use crate::spec::*;
use hparams::{show, Resolver};
use ndarray::{Array1, Array2};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The result of recognition.
#[derive(Clone, Debug)]
pub struct Recognised {
    pub model: Model,
    pub naming: Naming,
    pub provenance: BTreeMap<&'static str, Provenance>,
    /// Tensors deliberately ignored (versions, dummies, shadows).
    pub ignored: Vec<String>,
    /// Things worth telling the user that are not errors.
    pub notes: Vec<String>,
}

/// Why a checkpoint could not be recognised. One line.
#[derive(Debug)]
pub struct RecogniseError(pub String);

impl fmt::Display for RecogniseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for RecogniseError {}

type R<T> = Result<T, RecogniseError>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(RecogniseError(msg.into()))
}

/// Tensor access that remembers which names were used, so leftovers can be
/// reported as unexpected.
struct Tensors<'a> {
    ckpt: &'a Checkpoint,
    used: BTreeSet<String>,
}

impl<'a> Tensors<'a> {
    fn has(&self, name: &str) -> bool {
        self.ckpt.contains(name)
    }

    fn shape(&self, name: &str) -> Option<&'a [usize]> {
        self.ckpt.entry(name).map(|e| e.shape.as_slice())
    }

    fn load(&mut self, name: &str, shape: &[usize]) -> R<Vec<f32>> {
        let e = match self.ckpt.entry(name) {
            Some(e) => e,
            None => return err(format!("missing tensor {name}")),
        };
        if e.shape != shape {
            return err(format!(
                "tensor {name} has shape {:?}, expected {:?}",
                e.shape, shape
            ));
        }
        if !e.dtype.is_float() {
            return err(format!("tensor {name} is {}, expected a float", e.dtype));
        }
        let t = self
            .ckpt
            .tensor(name)
            .map_err(|e| RecogniseError(e.msg.clone()))?;
        self.used.insert(name.to_string());
        Ok(t.to_f32())
    }

    fn vec(&mut self, name: &str, n: usize) -> R<Array1<f32>> {
        Ok(Array1::from(self.load(name, &[n])?))
    }

    fn mat(&mut self, name: &str, rows: usize, cols: usize) -> R<Array2<f32>> {
        let v = self.load(name, &[rows, cols])?;
        // Cannot fail: load checked the shape.
        Ok(Array2::from_shape_vec((rows, cols), v).expect("shape checked"))
    }

    fn opt_vec(&mut self, name: &str, n: usize) -> R<Option<Array1<f32>>> {
        if self.has(name) {
            Ok(Some(self.vec(name, n)?))
        } else {
            Ok(None)
        }
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize) -> R<Linear> {
        Ok(Linear {
            weight: self.mat(&format!("{prefix}.weight"), out, inp)?,
            bias: self.opt_vec(&format!("{prefix}.bias"), out)?,
        })
    }

    fn layer_norm(&mut self, prefix: &str, d: usize) -> R<Option<LayerNorm>> {
        let w = format!("{prefix}.weight");
        if !self.has(&w) {
            return Ok(None);
        }
        Ok(Some(LayerNorm {
            gamma: self.vec(&w, d)?,
            beta: self.vec(&format!("{prefix}.bias"), d)?,
        }))
    }

    fn scale(&mut self, name: &str, d: usize) -> R<Option<Vec<f32>>> {
        match self.shape(name) {
            None => Ok(None),
            Some(sh) => {
                let n = sh.iter().product::<usize>();
                if n != 1 && n != d {
                    return err(format!(
                        "tensor {name} has shape {sh:?}, expected [1] or [{d}]"
                    ));
                }
                let sh = sh.to_vec();
                Ok(Some(self.load(name, &sh)?))
            }
        }
    }
}

/// Number of `PREFIX.N.` layers, checking they are numbered 0..n.
fn count_layers(ckpt: &Checkpoint, prefix: &str) -> R<usize> {
    let mut seen = BTreeSet::new();
    for e in &ckpt.entries {
        if let Some(rest) = e.name.strip_prefix(prefix) {
            if let Some(idx) = rest.split('.').next().and_then(|s| s.parse::<usize>().ok()) {
                seen.insert(idx);
            }
        }
    }
    let n = seen.len();
    if let Some(&max) = seen.iter().next_back() {
        if max + 1 != n {
            let missing: Vec<_> = (0..=max).filter(|i| !seen.contains(i)).collect();
            return err(format!(
                "layers of {prefix}N are not numbered 0..{max}: missing {missing:?}"
            ));
        }
    }
    Ok(n)
}

/// Recognise a checkpoint and load its weights as `f32`.
pub fn recognise(ckpt: &Checkpoint, ov: &Overrides) -> R<Recognised> {
    let h = &ckpt.hparams;
    let mut t = Tensors {
        ckpt,
        used: BTreeSet::new(),
    };
    let mut naming = Naming::default();
    let mut notes = Vec::new();

    // ---- shapes: vocabulary, dims, layers -------------------------------
    let enc_tok = "encoder.embed_tokens.weight";
    let dec_tok = "decoder.embed_tokens.weight";
    let enc_shape = match t.shape(enc_tok) {
        Some(s) if s.len() == 2 => s.to_vec(),
        Some(s) => {
            return err(format!(
                "tensor {enc_tok} has shape {s:?}, expected [vocab, dim]"
            ))
        }
        None => {
            return err(format!(
                "missing tensor {enc_tok}: not a fairseq encoder-decoder Transformer state dict"
            ))
        }
    };
    let (src_vocab, d_enc) = (enc_shape[0], enc_shape[1]);
    let dec_shape = match t.shape(dec_tok) {
        Some(s) if s.len() == 2 => s.to_vec(),
        Some(s) => {
            return err(format!(
                "tensor {dec_tok} has shape {s:?}, expected [vocab, dim]"
            ))
        }
        None => {
            notes.push(format!("{dec_tok} absent: taken to be tied to {enc_tok}"));
            enc_shape.clone()
        }
    };
    let (tgt_vocab, d_dec) = (dec_shape[0], dec_shape[1]);
    let enc_layers = count_layers(ckpt, "encoder.layers.")?;
    let dec_layers = count_layers(ckpt, "decoder.layers.")?;
    if enc_layers == 0 || dec_layers == 0 {
        return err(format!(
            "found {enc_layers} encoder and {dec_layers} decoder layers: need at least one of each"
        ));
    }
    let ffn_of = |prefix: &str| -> R<usize> {
        let name = format!("{prefix}.0.fc1.weight");
        match t.shape(&name) {
            Some([f, _]) => Ok(*f),
            Some(s) => err(format!(
                "tensor {name} has shape {s:?}, expected [ffn, dim]"
            )),
            None => err(format!("missing tensor {name}")),
        }
    };
    let enc_ffn = ffn_of("encoder.layers")?;
    let dec_ffn = ffn_of("decoder.layers")?;

    // Shapes must agree with what the checkpoint recorded.
    for (key, got) in [
        ("encoder_embed_dim", d_enc),
        ("decoder_embed_dim", d_dec),
        ("encoder_layers", enc_layers),
        ("decoder_layers", dec_layers),
        ("encoder_ffn_embed_dim", enc_ffn),
        ("decoder_ffn_embed_dim", dec_ffn),
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

    // ---- hyper-parameters shapes cannot tell ---------------------------
    let arch_name = ov
        .arch
        .clone()
        .or_else(|| h.get("arch").and_then(|v| v.as_str().map(str::to_string)));
    let preset = match &ov.arch {
        Some(a) => Some(find_preset(a).ok_or_else(|| {
            RecogniseError(format!(
                "unknown --arch {a}; known: {}",
                PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
        None => arch_name.as_deref().and_then(find_preset),
    };
    if let (Some(p), Some(_)) = (preset, &ov.arch) {
        if p.embed_dim != d_enc || p.layers != enc_layers || p.ffn_dim != enc_ffn {
            notes.push(format!(
                "--arch {} describes {}d/{}ffn/{} layers but the tensors are {}d/{}ffn/{} layers: using the tensors' shapes, heads and activation from the preset",
                p.name, p.embed_dim, p.ffn_dim, p.layers, d_enc, enc_ffn, enc_layers
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
    let p_heads = r.preset.map(|p| p.heads);
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
    let activation = if let Some(a) = ov.activation {
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
    };
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
    if let Some(first) = r.invalid.first() {
        return err(format!("config {first}"));
    }
    if !r.missing.is_empty() {
        return err(format!(
            "cannot tell {}: the file records no fairseq config; pass the flags or --arch NAME (one of: {})",
            r.missing.join(", "),
            PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
        ));
    }
    for (what, d, heads) in [("encoder", d_enc, enc_heads), ("decoder", d_dec, dec_heads)] {
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

    let enc_final = t.has("encoder.layer_norm.weight");
    let dec_final = t.has("decoder.layer_norm.weight");
    let enc_nb = r.bool(
        "encoder_normalize_before",
        ov.encoder_normalize_before,
        Some(enc_final),
        preset.is_some_and(|p| p.normalize_before),
    );
    let dec_nb = r.bool(
        "decoder_normalize_before",
        ov.decoder_normalize_before,
        Some(dec_final),
        preset.is_some_and(|p| p.normalize_before),
    );
    let no_scale = r.bool("no_scale_embedding", ov.no_scale_embedding, None, false);
    let ln_embed = t.has("encoder.layernorm_embedding.weight");
    r.provenance
        .insert("layernorm_embedding", Provenance::Tensors);
    let enc_learned = t.has("encoder.embed_positions.weight");
    let dec_learned = t.has("decoder.embed_positions.weight");
    r.provenance
        .insert("encoder_learned_pos", Provenance::Tensors);
    r.provenance
        .insert("decoder_learned_pos", Provenance::Tensors);
    let no_pos = r.bool("no_token_positional_embeddings", None, None, false);

    // Tying: one storage, or (safetensors, which stores a table once) absence or equal values.
    let tied_to = |name: &str| ckpt.entry(name).and_then(|e| e.tied_to.clone());
    let out_name = if t.has("decoder.output_projection.weight") {
        Some("decoder.output_projection.weight")
    } else if t.has("decoder.embed_out") {
        naming.embed_out = true;
        Some("decoder.embed_out")
    } else {
        None
    };

    if let Some(first) = r.invalid.first() {
        return err(format!("config {first}"));
    }

    // ---- family --------------------------------------------------------
    let init_type = h
        .get("init_type")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let family = match ov.family {
        Some(f) => f,
        None => family::detect(&family::Evidence {
            ckpt,
            init_type: init_type.as_deref(),
            normalize_before: enc_nb || dec_nb,
        }),
    };
    if family.has_scales() && (enc_nb || dec_nb) && family != Family::ReZero {
        return err(format!(
            "{} residual scales on a normalize_before (Pre-LN) model are not a known combination",
            family.name()
        ));
    }

    // ---- embeddings ----------------------------------------------------
    let enc_tokens = t.mat(enc_tok, src_vocab, d_enc)?;
    let dec_tokens = if t.has(dec_tok) {
        t.mat(dec_tok, tgt_vocab, d_dec)?
    } else {
        enc_tokens.clone()
    };
    let output_projection = match out_name {
        Some(n) => t.mat(n, tgt_vocab, d_dec)?,
        None => dec_tokens.clone(),
    };
    let enc_dec_tied = tied_to(dec_tok).as_deref() == Some(enc_tok)
        || !t.has(dec_tok)
        || (src_vocab == tgt_vocab && d_enc == d_dec && enc_tokens == dec_tokens);
    let dec_out_tied = out_name.is_none()
        || out_name.and_then(tied_to).as_deref() == Some(dec_tok)
        || output_projection == dec_tokens;
    let share_all = r.bool("share_all_embeddings", None, Some(enc_dec_tied), false);
    let share_dec = r.bool(
        "share_decoder_input_output_embed",
        None,
        Some(dec_out_tied),
        false,
    ) || share_all;
    if share_all && !enc_dec_tied {
        notes.push("config says share_all_embeddings but the encoder and decoder tables differ: keeping both".into());
    }
    if share_dec && !dec_out_tied {
        notes.push("config says the output projection is shared but it differs from the decoder table: keeping both".into());
    }

    let positions = |t: &mut Tensors, stack: &str, learned: bool, d: usize| -> R<Positions> {
        if learned {
            let name = format!("{stack}.embed_positions.weight");
            let rows = t.shape(&name).map(|s| s[0]).unwrap_or(0);
            Ok(Positions::Learned(t.mat(&name, rows, d)?))
        } else if no_pos {
            Ok(Positions::None)
        } else {
            Ok(Positions::Sinusoidal)
        }
    };
    let scale_of = |d: usize| if no_scale { 1.0 } else { (d as f32).sqrt() };
    let encoder_embed = Embedding {
        tokens: enc_tokens,
        scale: scale_of(d_enc),
        positions: positions(&mut t, "encoder", enc_learned, d_enc)?,
        layernorm: t.layer_norm("encoder.layernorm_embedding", d_enc)?,
    };
    let decoder_embed = Embedding {
        tokens: dec_tokens,
        scale: scale_of(d_dec),
        positions: positions(&mut t, "decoder", dec_learned, d_dec)?,
        layernorm: t.layer_norm("decoder.layernorm_embedding", d_dec)?,
    };

    // DeepNet's α is not stored: computed from the layer counts (fold.md §1).
    let (alpha_enc, alpha_dec) = deepnet_alphas(enc_layers, dec_layers);

    // ---- layers --------------------------------------------------------
    let mut encoder_layers = Vec::with_capacity(enc_layers);
    for i in 0..enc_layers {
        let p = format!("encoder.layers.{i}");
        let self_attn = naming::attention(&mut t, &format!("{p}.self_attn"), d_enc, &mut naming)?;
        let legacy = t.has(&format!("{p}.layer_norms.0.weight"));
        naming.legacy_layer_norms |= legacy;
        let (ln1, ln2) = if legacy {
            (
                t.layer_norm(&format!("{p}.layer_norms.0"), d_enc)?,
                t.layer_norm(&format!("{p}.layer_norms.1"), d_enc)?,
            )
        } else {
            (
                t.layer_norm(&format!("{p}.self_attn_layer_norm"), d_enc)?,
                t.layer_norm(&format!("{p}.final_layer_norm"), d_enc)?,
            )
        };
        let r = family::residuals(&mut t, family, &p, false, d_enc, alpha_enc)?;
        let [r1, r2]: [Residual; 2] = r.try_into().expect("two encoder sublayers");
        let ffn = FeedForward {
            fc1: t.linear(&format!("{p}.fc1"), enc_ffn, d_enc)?,
            fc2: t.linear(&format!("{p}.fc2"), d_enc, enc_ffn)?,
        };
        encoder_layers.push(EncoderLayer {
            self_attn: Sublayer {
                f: self_attn,
                norm: ln1,
                residual: r1,
            },
            ffn: Sublayer {
                f: ffn,
                norm: ln2,
                residual: r2,
            },
        });
    }
    let mut decoder_layers = Vec::with_capacity(dec_layers);
    for i in 0..dec_layers {
        let p = format!("decoder.layers.{i}");
        let self_attn = naming::attention(&mut t, &format!("{p}.self_attn"), d_dec, &mut naming)?;
        let cross = naming::attention(&mut t, &format!("{p}.encoder_attn"), d_dec, &mut naming)?;
        if d_enc != d_dec {
            return err("encoder and decoder embed dims differ: encoder-decoder attention with kdim != dim is not supported");
        }
        let ln1 = t.layer_norm(&format!("{p}.self_attn_layer_norm"), d_dec)?;
        let ln2 = t.layer_norm(&format!("{p}.encoder_attn_layer_norm"), d_dec)?;
        let ln3 = t.layer_norm(&format!("{p}.final_layer_norm"), d_dec)?;
        let r = family::residuals(&mut t, family, &p, true, d_dec, alpha_dec)?;
        let [r1, r2, r3]: [Residual; 3] = r.try_into().expect("three decoder sublayers");
        let ffn = FeedForward {
            fc1: t.linear(&format!("{p}.fc1"), dec_ffn, d_dec)?,
            fc2: t.linear(&format!("{p}.fc2"), d_dec, dec_ffn)?,
        };
        decoder_layers.push(DecoderLayer {
            self_attn: Sublayer {
                f: self_attn,
                norm: ln1,
                residual: r1,
            },
            cross_attn: Sublayer {
                f: cross,
                norm: ln2,
                residual: r2,
            },
            ffn: Sublayer {
                f: ffn,
                norm: ln3,
                residual: r3,
            },
        });
    }
    // Every sublayer of a LayerNorm family must have its LayerNorm.
    let needs_ln = !matches!(family, Family::ReZero | Family::LayerNormFree);
    if needs_ln {
        for (i, l) in encoder_layers.iter().enumerate() {
            for (n, s) in [
                ("self_attn_layer_norm", &l.self_attn.norm),
                ("final_layer_norm", &l.ffn.norm),
            ] {
                if s.is_none() {
                    return err(format!("missing tensor encoder.layers.{i}.{n}.weight"));
                }
            }
        }
        for (i, l) in decoder_layers.iter().enumerate() {
            for (n, s) in [
                ("self_attn_layer_norm", &l.self_attn.norm),
                ("encoder_attn_layer_norm", &l.cross_attn.norm),
                ("final_layer_norm", &l.ffn.norm),
            ] {
                if s.is_none() {
                    return err(format!("missing tensor decoder.layers.{i}.{n}.weight"));
                }
            }
        }
    }
    let encoder_final_norm = t.layer_norm("encoder.layer_norm", d_enc)?;
    let decoder_final_norm = t.layer_norm("decoder.layer_norm", d_dec)?;
    if enc_nb && encoder_final_norm.is_none() {
        notes.push(
            "encoder_normalize_before without encoder.layer_norm: no final encoder LayerNorm"
                .into(),
        );
    }
    if !enc_nb && encoder_final_norm.is_some() {
        return err("encoder.layer_norm present but the encoder is not normalize_before");
    }

    // ---- leftovers ------------------------------------------------------
    let mut ignored = Vec::new();
    let mut unexpected = Vec::new();
    for e in &ckpt.entries {
        if t.used.contains(&e.name) {
            continue;
        }
        let n = &e.name;
        let shadow = naming::is_fast_path_shadow(n);
        if n.ends_with(".version") || n.ends_with("embed_positions._float_tensor") || shadow {
            if shadow {
                naming.fast_path_shadows = true;
                let v = ckpt.tensor(n).map_err(|e| RecogniseError(e.msg))?;
                if v.to_f32().iter().any(|x| *x != 0.0) {
                    notes.push(format!("{n} is a fast-path shadow tensor but not all zero: ignored anyway (fairseq never reads it)"));
                }
            }
            ignored.push(n.clone());
        } else if (n == dec_tok && enc_dec_tied) || Some(n.as_str()) == out_name {
            // tied copies already accounted for
        } else {
            unexpected.push(n.clone());
        }
    }
    if !unexpected.is_empty() {
        let more = if unexpected.len() > 5 {
            format!(" (and {} more)", unexpected.len() - 5)
        } else {
            String::new()
        };
        return err(format!(
            "unexpected tensor{} {}{more}: not part of a {} layout",
            if unexpected.len() > 1 { "s" } else { "" },
            unexpected
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            family.name()
        ));
    }

    if let Some(first) = r.invalid.first() {
        return err(format!("config {first}"));
    }
    let config = Config {
        arch: arch_name.unwrap_or_else(|| "unknown".into()),
        encoder_layers: enc_layers,
        decoder_layers: dec_layers,
        encoder_embed_dim: d_enc,
        decoder_embed_dim: d_dec,
        encoder_ffn_embed_dim: enc_ffn,
        decoder_ffn_embed_dim: dec_ffn,
        encoder_attention_heads: enc_heads,
        decoder_attention_heads: dec_heads,
        activation_fn: activation,
        encoder_normalize_before: enc_nb,
        decoder_normalize_before: dec_nb,
        share_all_embeddings: share_all && enc_dec_tied,
        share_decoder_input_output_embed: share_dec && dec_out_tied,
        no_scale_embedding: no_scale,
        layernorm_embedding: ln_embed,
        encoder_learned_pos: enc_learned,
        decoder_learned_pos: dec_learned,
        no_token_positional_embeddings: no_pos,
        max_source_positions: max_src,
        max_target_positions: max_tgt,
        src_vocab,
        tgt_vocab,
        init_type,
    };
    let provenance = r.provenance;
    Ok(Recognised {
        model: Model {
            config,
            family,
            tying: Tying {
                encoder_decoder: enc_dec_tied,
                decoder_output: dec_out_tied,
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
        },
        naming,
        provenance,
        ignored,
        notes,
    })
}
