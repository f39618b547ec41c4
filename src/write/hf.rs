//! A Hugging Face `transformers` directory for a folded Post-LN model:
//! `config.json`, `model.safetensors`, `generation_config.json` and
//! `vocab-src.json` / `vocab-tgt.json` (token → id, fairseq's ids).
//!
//! The class is `MarianMTModel` (transformers 4.x): Post-LN, biased
//! q/k/v/out projections like fairseq, separate encoder / decoder token
//! tables and a separate `lm_head` (`share_encoder_decoder_embeddings` and
//! `tie_word_embeddings` off), so a folded Admin model with untied tables
//! fits exactly. Its position table is a weight read from position 0, so
//! fairseq's table is written from row `padding_idx + 1` on (learned
//! tables as folded, sinusoidal ones computed like fairseq's). FSMT does
//! not fit: it always ties the decoder input table to the output
//! projection and recomputes sinusoids. Pre-LN, `layernorm_embedding`,
//! LayerNorm-free models and other embedding scales have no exact class
//! here and are refused (see [`unsupported`]).

use super::atomic_write;
use crate::spec::*;
use crate::tensor::{DType, RawTensor};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why no transformers class here holds `m` exactly, if none does.
pub fn unsupported(m: &Model) -> Option<String> {
    let c = &m.config;
    let w = &m.weights;
    if m.family.has_scales() {
        return Some("residual scales are not folded".into());
    }
    if c.encoder_normalize_before || c.decoder_normalize_before {
        return Some("Pre-LN (MarianMTModel and FSMT are Post-LN)".into());
    }
    if w.encoder_embed.layernorm.is_some() || w.decoder_embed.layernorm.is_some() {
        return Some("layernorm_embedding (MarianMTModel has none)".into());
    }
    let no_norm = w.encoder_layers.iter().any(|l| l.self_attn.norm.is_none())
        || w.decoder_layers.iter().any(|l| l.ffn.norm.is_none());
    if no_norm {
        return Some("LayerNorm-free layers (e.g. folded ReZero)".into());
    }
    if c.encoder_embed_dim != c.decoder_embed_dim {
        return Some("encoder and decoder widths differ".into());
    }
    let sqrt_d = (c.encoder_embed_dim as f32).sqrt();
    let (se, sd) = (w.encoder_embed.scale, w.decoder_embed.scale);
    if se != sd || (se != 1.0 && (se - sqrt_d).abs() > 1e-6 * sqrt_d) {
        return Some(format!(
            "embedding scales {se} / {sd} (MarianMTModel: √d or 1)"
        ));
    }
    for e in [&w.encoder_embed, &w.decoder_embed] {
        if matches!(e.positions, Positions::None) {
            return Some("no position embeddings".into());
        }
    }
    if activation(c.activation_fn).is_none() {
        return Some(format!("activation {}", c.activation_fn.name()));
    }
    None
}

fn activation(a: Activation) -> Option<&'static str> {
    Some(match a {
        Activation::Relu => "relu",
        Activation::Gelu => "gelu",
        Activation::GeluAccurate => "gelu_new",
        Activation::Swish => "swish",
        Activation::Tanh => "tanh",
        Activation::Linear => return None,
    })
}

/// fairseq's position table for a stack from row `PAD + 1` on, `rows` rows.
fn positions(e: &Embedding, rows: usize, d: usize) -> Vec<f32> {
    let table = match &e.positions {
        Positions::Learned(t) => t.clone(),
        _ => sinusoidal_table(rows + PAD + 1, d),
    };
    table
        .rows()
        .into_iter()
        .skip(PAD + 1)
        .take(rows)
        .flatten()
        .copied()
        .collect()
}

/// Rows of a stack's position table usable from position 0.
fn position_rows(e: &Embedding, max_positions: usize) -> usize {
    match &e.positions {
        Positions::Learned(t) => t.nrows().saturating_sub(PAD + 1),
        _ => max_positions,
    }
}

/// The weights under MarianMTModel's names.
fn tensors(m: &Model, max_pos: usize) -> Vec<(String, RawTensor)> {
    let mut out = Vec::new();
    for (k, t) in super::fairseq::state_dict(m, DType::F32).tensors {
        if k.ends_with(".version") || k.contains("embed_positions") {
            continue;
        }
        let name = match k.as_str() {
            "decoder.output_projection.weight" => "lm_head.weight".to_string(),
            _ => format!("model.{k}"),
        };
        let t = match k.as_str() {
            "encoder.embed_tokens.weight" | "decoder.embed_tokens.weight" => {
                pad_rows(t, table_rows(&m.config))
            }
            _ => t,
        };
        out.push((name, t));
    }
    let d = m.config.encoder_embed_dim;
    for (stack, e) in [
        ("encoder", &m.weights.encoder_embed),
        ("decoder", &m.weights.decoder_embed),
    ] {
        out.push((
            format!("model.{stack}.embed_positions.weight"),
            RawTensor::from_f32(vec![max_pos, d], &positions(e, max_pos, d)),
        ));
    }
    let v = m.config.tgt_vocab;
    out.push((
        "final_logits_bias".into(),
        RawTensor::from_f32(vec![1, v], &vec![0.0; v]),
    ));
    out
}

/// Rows of both token tables. transformers 4.46's MarianModel builds the
/// decoder's input table with `vocab_size` rows (not `decoder_vocab_size`)
/// when the tables are not shared, so with separate dictionaries both
/// tables get the larger row count; the added rows are zeros that no
/// input id reaches (source ids < src_vocab, decoder inputs come from
/// `lm_head`, which keeps tgt_vocab rows).
fn table_rows(c: &Config) -> usize {
    c.src_vocab.max(c.tgt_vocab)
}

/// `t` ([rows, d], float32) with zero rows appended up to `rows`.
fn pad_rows(t: RawTensor, rows: usize) -> RawTensor {
    if t.shape[0] >= rows {
        return t;
    }
    let mut bytes = t.bytes.as_slice().to_vec();
    bytes.resize(rows * t.shape[1] * 4, 0);
    RawTensor {
        dtype: t.dtype,
        shape: vec![rows, t.shape[1]],
        bytes: bytes.into(),
    }
}

fn config(m: &Model, max_pos: usize) -> serde_json::Value {
    let c = &m.config;
    serde_json::json!({
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": table_rows(c),
        "decoder_vocab_size": c.tgt_vocab,
        "d_model": c.encoder_embed_dim,
        "encoder_layers": c.encoder_layers,
        "decoder_layers": c.decoder_layers,
        "encoder_attention_heads": c.encoder_attention_heads,
        "decoder_attention_heads": c.decoder_attention_heads,
        "encoder_ffn_dim": c.encoder_ffn_embed_dim,
        "decoder_ffn_dim": c.decoder_ffn_embed_dim,
        "activation_function": activation(c.activation_fn).unwrap_or("relu"),
        "max_position_embeddings": max_pos,
        "scale_embedding": m.weights.encoder_embed.scale != 1.0,
        "share_encoder_decoder_embeddings": false,
        "tie_word_embeddings": false,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "bos_token_id": BOS,
        "pad_token_id": PAD,
        "eos_token_id": EOS,
        "decoder_start_token_id": EOS,
        "forced_eos_token_id": null,
        "is_encoder_decoder": true,
    })
}

/// fairseq-generate's defaults: beam 5, lenpen 1, max_len_b 200, the
/// decoder started from `</s>`.
fn generation_config() -> serde_json::Value {
    serde_json::json!({
        "bos_token_id": BOS,
        "pad_token_id": PAD,
        "eos_token_id": EOS,
        "decoder_start_token_id": EOS,
        "num_beams": 5,
        "length_penalty": 1.0,
        "early_stopping": true,
        "max_new_tokens": 200,
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    atomic_write(path, |w| Ok(w.write_all(text.as_bytes())?))
}

/// Write the directory for `m` (folded; see [`unsupported`]); `vocabs` are
/// the source and target token lists in id order. Returns the files written.
pub fn write_dir(m: &Model, vocabs: (&[String], &[String]), dir: &Path) -> Result<Vec<PathBuf>> {
    if let Some(why) = unsupported(m) {
        bail!("no transformers class holds this model exactly: {why}");
    }
    let c = &m.config;
    let max_pos = position_rows(&m.weights.encoder_embed, c.max_source_positions).min(
        position_rows(&m.weights.decoder_embed, c.max_target_positions),
    );
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut put = |name: &str, v: serde_json::Value| -> Result<()> {
        let p = dir.join(name);
        write_json(&p, &v)?;
        written.push(p);
        Ok(())
    };
    put("config.json", config(m, max_pos))?;
    put("generation_config.json", generation_config())?;
    for (name, toks) in [("vocab-src.json", vocabs.0), ("vocab-tgt.json", vocabs.1)] {
        let map: serde_json::Map<String, serde_json::Value> = toks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), serde_json::json!(i)))
            .collect();
        put(name, serde_json::Value::Object(map))?;
    }
    let p = dir.join("model.safetensors");
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    super::safetensors::write(&p, &tensors(m, max_pos), &meta)?;
    written.push(p);
    Ok(written)
}
