//! `admin-convert inspect`: what a checkpoint is. Builds an
//! [`InspectReport`] from an opened [`Checkpoint`] and its recognised
//! model; renders it as a table for people or as stable JSON for scripts.

use crate::read::{Checkpoint, ConfigOrigin, Format};
use crate::recognise::{Provenance, Recognised};
use crate::spec::{Family, Positions, Residual};
use crate::tensor::DType;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Min / mean / max of one sublayer's residual scale.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScaleStats {
    /// e.g. `encoder.0.self_attn`, `decoder.1.cross_attn`, `decoder.1.ffn`.
    pub sublayer: String,
    /// `omega` (x ⊙ ω) or `gate` (a · F(x)).
    pub kind: &'static str,
    pub len: usize,
    pub min: f32,
    pub mean: f32,
    pub max: f32,
}

/// Non-finite values found in one tensor.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NonFinite {
    pub tensor: String,
    pub nan: usize,
    pub inf: usize,
}

/// Everything `inspect` reports. Field names are the JSON contract.
#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    pub path: String,
    pub format: Format,
    pub family: Family,
    pub family_description: &'static str,
    pub naming: String,
    pub attention_layout: String,
    pub config_origin: ConfigOrigin,
    pub arch: String,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_embed_dim: usize,
    pub decoder_embed_dim: usize,
    pub encoder_ffn_embed_dim: usize,
    pub decoder_ffn_embed_dim: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub activation_fn: &'static str,
    pub encoder_normalize_before: bool,
    pub decoder_normalize_before: bool,
    pub src_vocab: usize,
    pub tgt_vocab: usize,
    pub share_all_embeddings: bool,
    pub share_decoder_input_output_embed: bool,
    pub tied_tensors: Vec<(String, String)>,
    pub positions: &'static str,
    pub layernorm_embedding: bool,
    pub no_scale_embedding: bool,
    pub max_source_positions: usize,
    pub max_target_positions: usize,
    pub init_type: Option<String>,
    pub tensors: usize,
    pub parameters: usize,
    /// Tensor count per dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// More than one float dtype among the weights.
    pub mixed_float_dtypes: bool,
    pub nan_count: usize,
    pub inf_count: usize,
    pub non_finite: Vec<NonFinite>,
    pub scales: Vec<ScaleStats>,
    pub size_on_disk: u64,
    pub size_in_memory: usize,
    pub provenance: BTreeMap<&'static str, Provenance>,
    pub ignored_tensors: Vec<String>,
    pub notes: Vec<String>,
}

fn stats(sublayer: String, r: &Residual) -> Option<ScaleStats> {
    let (kind, v): (&'static str, Vec<f32>) = match (&r.omega, r.gate) {
        (Some(w), _) => ("omega", w.clone()),
        (None, Some(g)) => ("gate", vec![g]),
        (None, None) => return None,
    };
    let min = v.iter().copied().fold(f32::INFINITY, f32::min);
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mean = (v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64) as f32;
    Some(ScaleStats {
        sublayer,
        kind,
        len: v.len(),
        min,
        mean,
        max,
    })
}

/// Build the report. Reads every state-dict tensor once, one at a time, to
/// count NaN / Inf (optimizer state is never read: `Checkpoint` lists the
/// `model` part only).
pub fn report(
    ckpt: &Checkpoint,
    rec: &Recognised,
) -> Result<InspectReport, crate::read::ReadError> {
    let m = &rec.model;
    let c = &m.config;
    let w = &m.weights;
    let mut dtypes = BTreeMap::new();
    let mut float_dtypes = std::collections::BTreeSet::new();
    let mut non_finite = Vec::new();
    let (mut nan_count, mut inf_count) = (0, 0);
    let mut parameters = 0;
    let mut tied = Vec::new();
    for e in &ckpt.entries {
        *dtypes.entry(e.dtype.name().to_string()).or_insert(0) += 1;
        if let Some(t) = &e.tied_to {
            tied.push((e.name.clone(), t.clone()));
            continue;
        }
        if rec.ignored.contains(&e.name) {
            continue;
        }
        parameters += e.shape.iter().product::<usize>();
        if e.dtype.is_float() {
            float_dtypes.insert(e.dtype);
            // One tensor at a time, counted in place (pages released as read).
            let (nan, inf) = ckpt.tensor(&e.name)?.count_non_finite();
            if nan + inf > 0 {
                non_finite.push(NonFinite {
                    tensor: e.name.clone(),
                    nan,
                    inf,
                });
            }
            nan_count += nan;
            inf_count += inf;
        }
    }
    let mut scales = Vec::new();
    for sub in rec.model.weights.sublayers() {
        scales.extend(stats(sub.name(), sub.residual));
    }
    let positions = match (&w.encoder_embed.positions, c.no_token_positional_embeddings) {
        (Positions::Learned(_), _) => "learned",
        (_, true) => "none",
        _ => "sinusoidal",
    };
    let mut notes = rec.notes.clone();
    if float_dtypes.len() > 1 {
        let names: Vec<_> = float_dtypes.iter().map(|d: &DType| d.name()).collect();
        notes.push(format!(
            "mixed float dtypes ({}): fairseq fails with \"expected scalar type Float but found Half\"; run `admin-convert cast`",
            names.join(", ")
        ));
    }
    if nan_count + inf_count > 0 {
        notes.push(format!(
            "{nan_count} NaN and {inf_count} Inf values in {} tensors",
            non_finite.len()
        ));
    }
    Ok(InspectReport {
        path: ckpt.path.display().to_string(),
        format: ckpt.format,
        family: m.family,
        family_description: m.family.describe(),
        naming: rec.naming.label(),
        attention_layout: rec.naming.attention.clone(),
        config_origin: ckpt.config_origin,
        arch: c.arch.clone(),
        encoder_layers: c.encoder_layers,
        decoder_layers: c.decoder_layers,
        encoder_embed_dim: c.encoder_embed_dim,
        decoder_embed_dim: c.decoder_embed_dim,
        encoder_ffn_embed_dim: c.encoder_ffn_embed_dim,
        decoder_ffn_embed_dim: c.decoder_ffn_embed_dim,
        encoder_attention_heads: c.encoder_attention_heads,
        decoder_attention_heads: c.decoder_attention_heads,
        activation_fn: c.activation_fn.name(),
        encoder_normalize_before: c.encoder_normalize_before,
        decoder_normalize_before: c.decoder_normalize_before,
        src_vocab: c.src_vocab,
        tgt_vocab: c.tgt_vocab,
        share_all_embeddings: c.share_all_embeddings,
        share_decoder_input_output_embed: c.share_decoder_input_output_embed,
        tied_tensors: tied,
        positions,
        layernorm_embedding: c.layernorm_embedding,
        no_scale_embedding: c.no_scale_embedding,
        max_source_positions: c.max_source_positions,
        max_target_positions: c.max_target_positions,
        init_type: c.init_type.clone(),
        tensors: ckpt.entries.len(),
        parameters,
        mixed_float_dtypes: float_dtypes.len() > 1,
        dtypes,
        nan_count,
        inf_count,
        non_finite,
        scales,
        size_on_disk: ckpt.file_size,
        size_in_memory: ckpt.memory_bytes(),
        provenance: rec.provenance.clone(),
        ignored_tensors: rec.ignored.clone(),
        notes,
    })
}

/// Human-readable size (`2.1 MB`).
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1000.0 && u + 1 < units.len() {
        x /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", units[u])
    }
}

/// The table people read.
pub fn render_text(r: &InspectReport) -> String {
    let mut s = String::new();
    let yn = |b: bool| if b { "yes" } else { "no" };
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "  {k:<22} {v}");
    };
    let _ = writeln!(s, "{}", r.path);
    row(&mut s, "format", r.format.name().into());
    row(
        &mut s,
        "family",
        format!("{} ({})", serde_name(&r.family), r.family_description),
    );
    row(&mut s, "naming", r.naming.clone());
    row(&mut s, "config from", serde_name(&r.config_origin));
    row(&mut s, "arch", r.arch.clone());
    if let Some(t) = &r.init_type {
        row(&mut s, "init_type", t.clone());
    }
    row(
        &mut s,
        "layers",
        format!(
            "{} encoder + {} decoder",
            r.encoder_layers, r.decoder_layers
        ),
    );
    row(
        &mut s,
        "embed / ffn / heads",
        if r.encoder_embed_dim == r.decoder_embed_dim
            && r.encoder_ffn_embed_dim == r.decoder_ffn_embed_dim
            && r.encoder_attention_heads == r.decoder_attention_heads
        {
            format!(
                "{} / {} / {}",
                r.encoder_embed_dim, r.encoder_ffn_embed_dim, r.encoder_attention_heads
            )
        } else {
            format!(
                "encoder {} / {} / {}, decoder {} / {} / {}",
                r.encoder_embed_dim,
                r.encoder_ffn_embed_dim,
                r.encoder_attention_heads,
                r.decoder_embed_dim,
                r.decoder_ffn_embed_dim,
                r.decoder_attention_heads
            )
        },
    );
    row(&mut s, "activation", r.activation_fn.into());
    row(
        &mut s,
        "normalize_before",
        format!(
            "encoder {}, decoder {}",
            yn(r.encoder_normalize_before),
            yn(r.decoder_normalize_before)
        ),
    );
    row(
        &mut s,
        "vocabulary",
        if r.src_vocab == r.tgt_vocab {
            r.src_vocab.to_string()
        } else {
            format!("src {}, tgt {}", r.src_vocab, r.tgt_vocab)
        },
    );
    row(
        &mut s,
        "shared embeddings",
        format!(
            "all {}, decoder in/out {}",
            yn(r.share_all_embeddings),
            yn(r.share_decoder_input_output_embed)
        ),
    );
    for (a, b) in &r.tied_tensors {
        row(&mut s, "tied", format!("{a} = {b}"));
    }
    row(
        &mut s,
        "positions",
        format!(
            "{} (max {} src / {} tgt)",
            r.positions, r.max_source_positions, r.max_target_positions
        ),
    );
    row(
        &mut s,
        "layernorm_embedding",
        yn(r.layernorm_embedding).into(),
    );
    row(&mut s, "scale embedding", yn(!r.no_scale_embedding).into());
    row(
        &mut s,
        "tensors",
        format!("{} ({} parameters)", r.tensors, r.parameters),
    );
    let dt: Vec<String> = r.dtypes.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    row(
        &mut s,
        "dtypes",
        format!(
            "{}{}",
            dt.join(", "),
            if r.mixed_float_dtypes { "  MIXED" } else { "" }
        ),
    );
    row(
        &mut s,
        "NaN / Inf",
        format!("{} / {}", r.nan_count, r.inf_count),
    );
    for nf in &r.non_finite {
        row(
            &mut s,
            "",
            format!("{}: {} NaN, {} Inf", nf.tensor, nf.nan, nf.inf),
        );
    }
    row(
        &mut s,
        "size",
        format!(
            "{} on disk, {} of tensors in memory",
            human_bytes(r.size_on_disk),
            human_bytes(r.size_in_memory as u64)
        ),
    );
    if !r.scales.is_empty() {
        let _ = writeln!(s, "  residual scales:");
        let _ = writeln!(
            s,
            "    {:<22} {:<6} {:>4} {:>10} {:>10} {:>10}",
            "sublayer", "kind", "len", "min", "mean", "max"
        );
        for x in &r.scales {
            let _ = writeln!(
                s,
                "    {:<22} {:<6} {:>4} {:>10.4} {:>10.4} {:>10.4}",
                x.sublayer, x.kind, x.len, x.min, x.mean, x.max
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    s
}

fn serde_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
