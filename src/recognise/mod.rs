//! Layout recognition: a [`Checkpoint`]'s names, shapes and recorded
//! hyper-parameters → one typed [`Model`] (family, config, f32 weights).
//! This file is the orchestration; each concern has its module:
//!
//! | module | concern |
//! |---|---|
//! | `tensors` | loading by name and shape, remembering what was read; the [`Shapes`] the tensors tell |
//! | `hparams` | flags, `--arch` presets, the resolver of recorded values (invalid ones rejected) |
//! | `naming` | how tensors are named: one [`ATTENTION_NAMINGS`] entry per attention layout, legacy LayerNorm names, `embed_out`, tensors left unread on purpose |
//! | `family` | one [`FAMILIES`] entry per residual family: detection and where its scales come from |
//! | `weights` | embeddings and tying, layers, final LayerNorms |
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
mod tensors;
mod weights;

pub use family::{deepnet_alphas, FamilyRule, FAMILIES};
pub use hparams::{find_preset, Overrides, Preset, Provenance, PRESETS};
pub use naming::{AttentionNaming, Naming, ATTENTION_NAMINGS};

use crate::read::Checkpoint;
use crate::spec::*;
use std::collections::BTreeMap;
use std::fmt;
use tensors::{Shapes, Tensors, DEC_TOKENS};

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

/// Recognise a checkpoint and load its weights as `f32`.
pub fn recognise(ckpt: &Checkpoint, ov: &Overrides) -> R<Recognised> {
    let h = &ckpt.hparams;
    let mut t = Tensors::new(ckpt);
    let mut naming = Naming::default();
    let mut notes = Vec::new();

    let s = Shapes::read(&t, &mut notes)?;
    hparams::check_recorded(h, &s)?;
    let (hp, mut r) = hparams::resolve(h, ov, &s, &t, &mut notes)?;
    let out_name = naming::output_projection(&t, &mut naming);

    let init_type = h
        .get("init_type")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let family = family::choose(
        ov.family,
        &family::Evidence {
            ckpt,
            init_type: init_type.as_deref(),
            normalize_before: hp.enc_normalize_before || hp.dec_normalize_before,
        },
    )?;

    let tables = weights::tables(&mut t, &s, &hp, &mut r, out_name, &mut notes)?;
    let (encoder_layers, decoder_layers) = weights::layers(&mut t, &s, family, &mut naming)?;
    family::check_layer_norms(family, &encoder_layers, &decoder_layers)?;
    let (encoder_final_norm, decoder_final_norm) =
        weights::final_norms(&mut t, &s, &hp, &mut notes)?;

    let ignored = leftovers(&t, &tables.tying, out_name, family, &mut naming, &mut notes)?;
    r.check_invalid()?;
    let config = Config {
        arch: hp.arch.unwrap_or_else(|| "unknown".into()),
        encoder_layers: s.enc_layers,
        decoder_layers: s.dec_layers,
        encoder_embed_dim: s.d_enc,
        decoder_embed_dim: s.d_dec,
        encoder_ffn_embed_dim: s.enc_ffn,
        decoder_ffn_embed_dim: s.dec_ffn,
        encoder_attention_heads: hp.enc_heads,
        decoder_attention_heads: hp.dec_heads,
        activation_fn: hp.activation,
        encoder_normalize_before: hp.enc_normalize_before,
        decoder_normalize_before: hp.dec_normalize_before,
        share_all_embeddings: tables.share_all && tables.tying.encoder_decoder,
        share_decoder_input_output_embed: tables.share_dec && tables.tying.decoder_output,
        no_scale_embedding: hp.no_scale,
        layernorm_embedding: hp.layernorm_embedding,
        encoder_learned_pos: hp.enc_learned_pos,
        decoder_learned_pos: hp.dec_learned_pos,
        no_token_positional_embeddings: hp.no_pos,
        max_source_positions: hp.max_src,
        max_target_positions: hp.max_tgt,
        src_vocab: s.src_vocab,
        tgt_vocab: s.tgt_vocab,
        init_type,
    };
    Ok(Recognised {
        model: Model {
            config,
            family,
            tying: tables.tying,
            weights: Weights {
                encoder_embed: tables.encoder,
                encoder_layers,
                encoder_final_norm,
                decoder_embed: tables.decoder,
                decoder_layers,
                decoder_final_norm,
                output_projection: tables.output_projection,
            },
        },
        naming,
        provenance: r.provenance,
        ignored,
        notes,
    })
}

/// The tensors nothing read: those left unread on purpose are returned
/// (reported as ignored); any other is an error naming up to five.
fn leftovers(
    t: &Tensors,
    tying: &Tying,
    out_name: Option<&str>,
    family: Family,
    naming: &mut Naming,
    notes: &mut Vec<String>,
) -> R<Vec<String>> {
    let mut ignored = Vec::new();
    let mut unexpected = Vec::new();
    for e in &t.ckpt.entries {
        let n = &e.name;
        if t.used.contains(n) {
            continue;
        }
        if naming::is_ignored(t, n, naming, notes)? {
            ignored.push(n.clone());
        } else if (n == DEC_TOKENS && tying.encoder_decoder) || Some(n.as_str()) == out_name {
            // tied copies already accounted for
        } else {
            unexpected.push(n.clone());
        }
    }
    if unexpected.is_empty() {
        return Ok(ignored);
    }
    let more = if unexpected.len() > 5 {
        format!(" (and {} more)", unexpected.len() - 5)
    } else {
        String::new()
    };
    err(format!(
        "unexpected tensor{} {}{more}: not part of a {} layout",
        if unexpected.len() > 1 { "s" } else { "" },
        unexpected
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        family.name()
    ))
}
