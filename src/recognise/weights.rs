//! Loading the weights once the hyper-parameters, naming and family are
//! known: the token tables and their tying, positions, the layers (each
//! attention through its naming, each residual through its family), the
//! final LayerNorms.

use super::family::{self, deepnet_alphas};
use super::hparams::{Hyper, Resolver};
use super::naming::{self, Naming};
use super::tensors::{Shapes, Tensors, DEC_TOKENS, ENC_TOKENS};
use super::{err, R};
use crate::spec::*;
use ndarray::ArcArray2;

/// The embeddings, the output projection and what is tied to what.
pub(super) struct Tables {
    pub encoder: Embedding,
    pub decoder: Embedding,
    pub output_projection: ArcArray2<f32>,
    pub tying: Tying,
    /// The config's sharing flags, as recorded or told by the tensors.
    pub share_all: bool,
    pub share_dec: bool,
}

/// `table`, or `other` (the same allocation) where their values are equal.
fn share_if_equal(table: ArcArray2<f32>, other: &ArcArray2<f32>) -> ArcArray2<f32> {
    if table == *other {
        other.clone()
    } else {
        table
    }
}

/// Token tables, positions and `layernorm_embedding` of both stacks, and
/// the output projection (`out_name`, else the decoder table). Tying: one
/// storage, or (safetensors, which stores a table once) absence or equal
/// values.
pub(super) fn tables(
    t: &mut Tensors,
    s: &Shapes,
    hp: &Hyper,
    r: &mut Resolver,
    out_name: Option<&str>,
    notes: &mut Vec<String>,
) -> R<Tables> {
    let tied_to = |t: &Tensors, name: &str| t.ckpt.entry(name).and_then(|e| e.tied_to.clone());
    // A table tied by storage is read once and shared (ArcArray: one
    // allocation); one tied by value (safetensors stores a table once, or
    // a writer copied it) is shared once found equal.
    let enc_tokens = t.mat(ENC_TOKENS, s.src_vocab, s.d_enc)?.into_shared();
    let dec_tokens = if !t.has(DEC_TOKENS) || tied_to(t, DEC_TOKENS).as_deref() == Some(ENC_TOKENS)
    {
        enc_tokens.clone()
    } else {
        share_if_equal(
            t.mat(DEC_TOKENS, s.tgt_vocab, s.d_dec)?.into_shared(),
            &enc_tokens,
        )
    };
    let output_projection = match out_name {
        Some(n) if tied_to(t, n).as_deref() != Some(DEC_TOKENS) => {
            share_if_equal(t.mat(n, s.tgt_vocab, s.d_dec)?.into_shared(), &dec_tokens)
        }
        _ => dec_tokens.clone(),
    };
    let enc_dec_tied = tied_to(t, DEC_TOKENS).as_deref() == Some(ENC_TOKENS)
        || !t.has(DEC_TOKENS)
        || (s.src_vocab == s.tgt_vocab && s.d_enc == s.d_dec && enc_tokens == dec_tokens);
    let dec_out_tied = out_name.is_none()
        || out_name.and_then(|n| tied_to(t, n)).as_deref() == Some(DEC_TOKENS)
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
        } else if hp.no_pos {
            Ok(Positions::None)
        } else {
            Ok(Positions::Sinusoidal)
        }
    };
    let scale_of = |d: usize| if hp.no_scale { 1.0 } else { (d as f32).sqrt() };
    let encoder = Embedding {
        tokens: enc_tokens,
        scale: scale_of(s.d_enc),
        positions: positions(t, "encoder", hp.enc_learned_pos, s.d_enc)?,
        layernorm: t.layer_norm("encoder.layernorm_embedding", s.d_enc)?,
    };
    let decoder = Embedding {
        tokens: dec_tokens,
        scale: scale_of(s.d_dec),
        positions: positions(t, "decoder", hp.dec_learned_pos, s.d_dec)?,
        layernorm: t.layer_norm("decoder.layernorm_embedding", s.d_dec)?,
    };
    Ok(Tables {
        encoder,
        decoder,
        output_projection,
        tying: Tying {
            encoder_decoder: enc_dec_tied,
            decoder_output: dec_out_tied,
        },
        share_all,
        share_dec,
    })
}

fn sublayer<F>(f: F, norm: Option<LayerNorm>, residual: Residual) -> Sublayer<F> {
    Sublayer { f, norm, residual }
}

fn ffn(t: &mut Tensors, p: &str, d: usize, ffn: usize) -> R<FeedForward> {
    Ok(FeedForward {
        fc1: t.linear(&format!("{p}.fc1"), ffn, d)?,
        fc2: t.linear(&format!("{p}.fc2"), d, ffn)?,
    })
}

/// Every encoder and decoder layer. DeepNet's α is not stored: it comes
/// from the layer counts (fold.md §1).
pub(super) fn layers(
    t: &mut Tensors,
    s: &Shapes,
    family: Family,
    naming: &mut Naming,
) -> R<(Vec<EncoderLayer>, Vec<DecoderLayer>)> {
    let (alpha_enc, alpha_dec) = deepnet_alphas(s.enc_layers, s.dec_layers);
    let d = s.d_enc;
    let mut encoder = Vec::with_capacity(s.enc_layers);
    for i in 0..s.enc_layers {
        let p = format!("encoder.layers.{i}");
        let attn = naming::attention(t, &format!("{p}.self_attn"), d, naming)?;
        let (ln1, ln2) = naming::encoder_layer_norms(t, &p, d, naming)?;
        let r = family::residuals(t, family, &p, false, d, alpha_enc)?;
        let [r1, r2]: [Residual; 2] = r.try_into().expect("two encoder sublayers");
        encoder.push(EncoderLayer {
            self_attn: sublayer(attn, ln1, r1),
            ffn: sublayer(ffn(t, &p, d, s.enc_ffn)?, ln2, r2),
        });
    }
    let d = s.d_dec;
    let mut decoder = Vec::with_capacity(s.dec_layers);
    for i in 0..s.dec_layers {
        let p = format!("decoder.layers.{i}");
        let attn = naming::attention(t, &format!("{p}.self_attn"), d, naming)?;
        let cross = naming::attention(t, &format!("{p}.encoder_attn"), d, naming)?;
        if s.d_enc != s.d_dec {
            return err("encoder and decoder embed dims differ: encoder-decoder attention with kdim != dim is not supported");
        }
        let ln1 = t.layer_norm(&format!("{p}.self_attn_layer_norm"), d)?;
        let ln2 = t.layer_norm(&format!("{p}.encoder_attn_layer_norm"), d)?;
        let ln3 = t.layer_norm(&format!("{p}.final_layer_norm"), d)?;
        let r = family::residuals(t, family, &p, true, d, alpha_dec)?;
        let [r1, r2, r3]: [Residual; 3] = r.try_into().expect("three decoder sublayers");
        decoder.push(DecoderLayer {
            self_attn: sublayer(attn, ln1, r1),
            cross_attn: sublayer(cross, ln2, r2),
            ffn: sublayer(ffn(t, &p, d, s.dec_ffn)?, ln3, r3),
        });
    }
    Ok((encoder, decoder))
}

/// The Pre-LN final LayerNorms (`encoder.layer_norm`, `decoder.layer_norm`).
pub(super) fn final_norms(
    t: &mut Tensors,
    s: &Shapes,
    hp: &Hyper,
    notes: &mut Vec<String>,
) -> R<(Option<LayerNorm>, Option<LayerNorm>)> {
    let enc = t.layer_norm("encoder.layer_norm", s.d_enc)?;
    let dec = t.layer_norm("decoder.layer_norm", s.d_dec)?;
    if hp.enc_normalize_before && enc.is_none() {
        notes.push(
            "encoder_normalize_before without encoder.layer_norm: no final encoder LayerNorm"
                .into(),
        );
    }
    if !hp.enc_normalize_before && enc.is_some() {
        return err("encoder.layer_norm present but the encoder is not normalize_before");
    }
    Ok((enc, dec))
}
