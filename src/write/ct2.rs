//! A CTranslate2 model directory written directly from a folded [`Model`]:
//! `model.bin` in CTranslate2's binary format (version 6,
//! `TransformerSpec` revision 7), `config.json` and the vocabularies.
//!
//! The layout mirrors what CTranslate2 4.x's own Python writer
//! (`ctranslate2/specs/model_spec.py`, `_serialize`) produces for
//! `converters/fairseq.py`: variables sorted by name, each
//! `name, ndim, dims (u32), dtype id, byte count, bytes`, then aliases for
//! non-scalar variables equal to an alphabetically earlier one (tied
//! embeddings, equal position tables). Attention projections are fused as
//! CTranslate2 expects (self-attention `q|k|v`, cross-attention `k|v`).
//! Position tables are fairseq's rows from `padding_idx + 1` on, so the
//! first source token and the decoder's `</s>` read row 2 as in fairseq.
//! `config.json` makes CTranslate2 append `</s>` to the source and start
//! the decoder from `</s>`, as fairseq does.

use super::atomic_write;
use crate::spec::*;
use anyhow::{bail, Result};
use half::{bf16, f16};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Weight quantization, CTranslate2's names (`--quantization`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantization {
    Float32,
    Float16,
    Bfloat16,
    Int8,
    Int8Float32,
    Int8Float16,
    Int8Bfloat16,
}

impl Quantization {
    pub const NAMES: &'static str =
        "float32, float16, bfloat16, int8, int8_float32, int8_float16, int8_bfloat16";

    pub fn parse(s: &str) -> Option<Quantization> {
        Some(match s {
            "float32" => Quantization::Float32,
            "float16" => Quantization::Float16,
            "bfloat16" => Quantization::Bfloat16,
            "int8" => Quantization::Int8,
            "int8_float32" => Quantization::Int8Float32,
            "int8_float16" => Quantization::Int8Float16,
            "int8_bfloat16" => Quantization::Int8Bfloat16,
            _ => return None,
        })
    }

    fn int8(self) -> bool {
        matches!(
            self,
            Quantization::Int8
                | Quantization::Int8Float32
                | Quantization::Int8Float16
                | Quantization::Int8Bfloat16
        )
    }

    /// The dtype of the non-quantized float tensors (LayerNorms, biases,
    /// positions; all weights when not int8).
    fn float_dtype(self) -> u8 {
        match self {
            Quantization::Float16 | Quantization::Int8Float16 => DT_F16,
            Quantization::Bfloat16 | Quantization::Int8Bfloat16 => DT_BF16,
            _ => DT_F32,
        }
    }
}

// CTranslate2's DataType ids (include/ctranslate2/types.h).
const DT_F32: u8 = 0;
const DT_I8: u8 = 1;
const DT_I16: u8 = 2;
const DT_F16: u8 = 4;
const DT_BF16: u8 = 5;

/// The binary format version and spec this writer produces.
const BINARY_VERSION: u32 = 6;
const SPEC_NAME: &str = "TransformerSpec";
const SPEC_REVISION: u32 = 7;

/// One variable before quantization.
#[derive(Clone, Debug)]
enum Value {
    /// A float tensor; `quantizable` when CTranslate2 declares a
    /// `<name>_scale` for it (linear and embedding weights).
    Floats {
        shape: Vec<usize>,
        data: Vec<f32>,
        quantizable: bool,
    },
    ScalarF32(f32),
    ScalarI16(i16),
    ScalarI8(i8),
}

/// `(alias, target)` pairs.
type Aliases = Vec<(String, String)>;

/// A serialized variable: dtype id, shape and little-endian bytes.
struct Encoded {
    dtype: u8,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// The model's variables under CTranslate2's names (unsorted, unquantized).
struct Vars(Vec<(String, Value)>);

impl Vars {
    fn floats(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>, q: bool) {
        self.0.push((
            name,
            Value::Floats {
                shape,
                data,
                quantizable: q,
            },
        ));
    }
    fn vec(&mut self, name: String, v: &ndarray::Array1<f32>) {
        self.floats(name, vec![v.len()], v.to_vec(), false);
    }
    fn norm(&mut self, p: &str, n: &LayerNorm) {
        self.vec(format!("{p}/gamma"), &n.gamma);
        self.vec(format!("{p}/beta"), &n.beta);
    }
    /// Linear maps stacked along the output dimension (one fused linear).
    fn linear(&mut self, p: &str, parts: &[&Linear]) {
        let cols = parts[0].weight.ncols();
        let rows: usize = parts.iter().map(|l| l.weight.nrows()).sum();
        let w: Vec<f32> = parts
            .iter()
            .flat_map(|l| l.weight.iter().copied())
            .collect();
        self.floats(format!("{p}/weight"), vec![rows, cols], w, true);
        if parts.iter().any(|l| l.bias.is_some()) {
            let b: Vec<f32> = parts
                .iter()
                .flat_map(|l| match &l.bias {
                    Some(b) => b.to_vec(),
                    None => vec![0.0; l.weight.nrows()],
                })
                .collect();
            self.floats(format!("{p}/bias"), vec![rows], b, false);
        }
    }
    fn ffn(&mut self, p: &str, s: &Sublayer<FeedForward>) -> Result<()> {
        self.norm(&format!("{p}/ffn/layer_norm"), need_norm(&s.norm)?);
        self.linear(&format!("{p}/ffn/linear_0"), &[&s.f.fc1]);
        self.linear(&format!("{p}/ffn/linear_1"), &[&s.f.fc2]);
        Ok(())
    }
    fn self_attention(&mut self, p: &str, s: &Sublayer<Attention>) -> Result<()> {
        let a = &s.f;
        self.norm(
            &format!("{p}/self_attention/layer_norm"),
            need_norm(&s.norm)?,
        );
        self.linear(&format!("{p}/self_attention/linear_0"), &[&a.q, &a.k, &a.v]);
        self.linear(&format!("{p}/self_attention/linear_1"), &[&a.out]);
        Ok(())
    }
    fn cross_attention(&mut self, p: &str, s: &Sublayer<Attention>) -> Result<()> {
        let a = &s.f;
        self.norm(&format!("{p}/attention/layer_norm"), need_norm(&s.norm)?);
        self.linear(&format!("{p}/attention/linear_0"), &[&a.q]);
        self.linear(&format!("{p}/attention/linear_1"), &[&a.k, &a.v]);
        self.linear(&format!("{p}/attention/linear_2"), &[&a.out]);
        Ok(())
    }
    /// Token table, scale, positions and `layernorm_embedding` of a stack.
    fn embedding(&mut self, stack: &str, table: &str, e: &Embedding, max_pos: usize) -> Result<()> {
        let t = &e.tokens;
        self.floats(
            format!("{stack}/{table}/weight"),
            t.shape().to_vec(),
            t.iter().copied().collect(),
            true,
        );
        self.0.push((
            format!("{stack}/scale_embeddings"),
            Value::ScalarF32(e.scale),
        ));
        let d = t.ncols();
        let rows = match &e.positions {
            Positions::None => {
                bail!("{stack}: no position embeddings (CTranslate2 would add its own sinusoids)")
            }
            Positions::Sinusoidal => sinusoidal_table(max_pos + PAD + 1, d),
            Positions::Learned(t) => t.clone(),
        };
        if rows.nrows() <= PAD + 1 {
            bail!("{stack}: position table has only {} rows", rows.nrows());
        }
        // fairseq's position of token i is padding_idx + 1 + i.
        let from = PAD + 1;
        let data: Vec<f32> = rows
            .rows()
            .into_iter()
            .skip(from)
            .flatten()
            .copied()
            .collect();
        self.floats(
            format!("{stack}/position_encodings/encodings"),
            vec![rows.nrows() - from, d],
            data,
            false,
        );
        if let Some(n) = &e.layernorm {
            self.norm(&format!("{stack}/layernorm_embedding"), n);
        }
        Ok(())
    }
    fn flags(&mut self, stack: &str, heads: usize, pre_norm: bool, act: i8) {
        let v = &mut self.0;
        v.push((format!("{stack}/num_heads"), Value::ScalarI16(heads as i16)));
        v.push((format!("{stack}/pre_norm"), Value::ScalarI8(pre_norm as i8)));
        v.push((format!("{stack}/activation"), Value::ScalarI8(act)));
    }
    fn bool(&mut self, name: &str, b: bool) {
        self.0.push((name.to_string(), Value::ScalarI8(b as i8)));
    }
}

fn need_norm(n: &Option<LayerNorm>) -> Result<&LayerNorm> {
    n.as_ref().ok_or_else(|| {
        anyhow::anyhow!("CTranslate2 has no LayerNorm-free Transformer layer (e.g. folded ReZero)")
    })
}

/// CTranslate2's `Activation` enum (include/ctranslate2/ops/activation.h).
fn activation_id(a: Activation) -> Result<i8> {
    Ok(match a {
        Activation::Relu => 0,
        Activation::GeluAccurate => 1,
        Activation::Swish => 2,
        Activation::Gelu => 3,
        Activation::Tanh => 5,
        Activation::Linear => bail!("CTranslate2 has no linear (identity) FFN activation"),
    })
}

/// Every variable of a CTranslate2 `TransformerSpec` for `m` (which must
/// have no residual scales left: fold it first).
fn variables(m: &Model) -> Result<Vars> {
    let c = &m.config;
    let w = &m.weights;
    if m.family.has_scales() {
        bail!("residual scales must be folded before writing CTranslate2");
    }
    if c.encoder_normalize_before != c.decoder_normalize_before {
        bail!("CTranslate2 needs the same normalize_before in encoder and decoder");
    }
    let pre = c.encoder_normalize_before;
    let act = activation_id(c.activation_fn)?;
    let mut v = Vars(Vec::new());
    v.flags("encoder", c.encoder_attention_heads, pre, act);
    v.0.push(("encoder/embeddings_merge".into(), Value::ScalarI8(0)));
    v.bool("encoder/multi_query_attention", false);
    v.embedding(
        "encoder",
        "embeddings_0",
        &w.encoder_embed,
        c.max_source_positions,
    )?;
    for (i, l) in w.encoder_layers.iter().enumerate() {
        let p = format!("encoder/layer_{i}");
        v.self_attention(&p, &l.self_attn)?;
        v.ffn(&p, &l.ffn)?;
    }
    v.flags("decoder", c.decoder_attention_heads, pre, act);
    v.0.push(("decoder/alignment_layer".into(), Value::ScalarI16(-1)));
    v.0.push(("decoder/alignment_heads".into(), Value::ScalarI16(0)));
    for flag in ["alibi", "alibi_use_positive_positions", "scale_alibi"] {
        v.bool(&format!("decoder/{flag}"), false);
    }
    v.bool("decoder/start_from_zero_embedding", false);
    v.embedding(
        "decoder",
        "embeddings",
        &w.decoder_embed,
        c.max_target_positions,
    )?;
    let proj = &w.output_projection;
    v.floats(
        "decoder/projection/weight".into(),
        proj.shape().to_vec(),
        proj.iter().copied().collect(),
        true,
    );
    for (i, l) in w.decoder_layers.iter().enumerate() {
        let p = format!("decoder/layer_{i}");
        v.self_attention(&p, &l.self_attn)?;
        v.cross_attention(&p, &l.cross_attn)?;
        v.ffn(&p, &l.ffn)?;
    }
    if pre {
        for (stack, n) in [
            ("encoder", &w.encoder_final_norm),
            ("decoder", &w.decoder_final_norm),
        ] {
            match n {
                Some(n) => v.norm(&format!("{stack}/layer_norm"), n),
                None => bail!("{stack}: Pre-LN without a final LayerNorm is not supported"),
            }
        }
    }
    Ok(v)
}

fn to_bytes_f32(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A float tensor in `dtype` (f32, f16 or bf16), rounded to nearest even.
fn floats_as(dtype: u8, shape: Vec<usize>, data: &[f32]) -> Encoded {
    let bytes = match dtype {
        DT_F16 => data
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        DT_BF16 => data
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        _ => to_bytes_f32(data),
    };
    Encoded {
        dtype,
        shape,
        bytes,
    }
}

/// CTranslate2's int8 quantization (model_spec.py `_quantize`): per row,
/// `scale = 127 / max|w|` (127 for all-zero rows), `round_half_even(w·scale)`.
fn quantize_int8(shape: &[usize], data: &[f32]) -> (Encoded, Encoded) {
    let cols = shape.last().copied().unwrap_or(1).max(1);
    let mut q = Vec::with_capacity(data.len());
    let mut scales = Vec::with_capacity(data.len() / cols);
    for row in data.chunks(cols) {
        let mut amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        if amax == 0.0 {
            amax = 127.0;
        }
        amax = amax.max(127.0 / f32::MAX);
        let scale = 127.0f32 / amax;
        scales.push(scale);
        q.extend(
            row.iter()
                .map(|&x| (x * scale).round_ties_even() as i8 as u8),
        );
    }
    let rows = scales.len();
    (
        Encoded {
            dtype: DT_I8,
            shape: shape.to_vec(),
            bytes: q,
        },
        Encoded {
            dtype: DT_F32,
            shape: vec![rows],
            bytes: to_bytes_f32(&scales),
        },
    )
}

/// Sort by name, alias equal non-scalar tensors to the first of them, then
/// quantize what is left; returns (variables, aliases) in file order.
fn finish(vars: Vars, q: Quantization) -> (Vec<(String, Encoded)>, Aliases) {
    let mut vars = vars.0;
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first: HashMap<(Vec<usize>, Vec<u32>), String> = HashMap::new();
    let mut out = Vec::new();
    let mut aliases = Vec::new();
    for (name, v) in vars {
        match v {
            Value::Floats {
                shape,
                data,
                quantizable,
            } => {
                let key = (shape.clone(), data.iter().map(|x| x.to_bits()).collect());
                if let Some(target) = first.get(&key) {
                    aliases.push((name, target.clone()));
                    continue;
                }
                first.insert(key, name.clone());
                if quantizable && q.int8() {
                    let (w, s) = quantize_int8(&shape, &data);
                    out.push((format!("{name}_scale"), s));
                    out.push((name, w));
                } else {
                    out.push((name, floats_as(q.float_dtype(), shape, &data)));
                }
            }
            Value::ScalarF32(x) => out.push((name, floats_as(DT_F32, vec![], &[x]))),
            Value::ScalarI16(x) => out.push((name, scalar(DT_I16, x.to_le_bytes().to_vec()))),
            Value::ScalarI8(x) => out.push((name, scalar(DT_I8, vec![x as u8]))),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (out, aliases)
}

fn scalar(dtype: u8, bytes: Vec<u8>) -> Encoded {
    Encoded {
        dtype,
        shape: vec![],
        bytes,
    }
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&((s.len() + 1) as u16).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    w.write_all(&[0])
}

fn serialize(
    w: &mut impl Write,
    vars: &[(String, Encoded)],
    aliases: &[(String, String)],
) -> Result<()> {
    w.write_all(&BINARY_VERSION.to_le_bytes())?;
    put_str(w, SPEC_NAME)?;
    w.write_all(&SPEC_REVISION.to_le_bytes())?;
    w.write_all(&(vars.len() as u32).to_le_bytes())?;
    for (name, e) in vars {
        put_str(w, name)?;
        w.write_all(&[e.shape.len() as u8])?;
        for &d in &e.shape {
            w.write_all(&u32::try_from(d)?.to_le_bytes())?;
        }
        w.write_all(&[e.dtype])?;
        w.write_all(&u32::try_from(e.bytes.len())?.to_le_bytes())?;
        w.write_all(&e.bytes)?;
    }
    w.write_all(&(aliases.len() as u32).to_le_bytes())?;
    for (alias, target) in aliases {
        put_str(w, alias)?;
        put_str(w, target)?;
    }
    Ok(())
}

/// CTranslate2's token list for a fairseq dictionary: [`symbols`] with
/// `<pad>` as `<blank>` (as `converters/fairseq.py` writes it).
pub fn vocabulary(dict_txt: &str, rows: usize) -> Result<Vec<String>> {
    Ok(symbols(dict_txt, rows)?
        .into_iter()
        .map(|s| if s == "<pad>" { "<blank>".into() } else { s })
        .collect())
}

/// A fairseq dictionary's symbols in id order (specials first), padded
/// with fairseq's `madeupwordNNNN` to the table's `rows`.
pub fn symbols(dict_txt: &str, rows: usize) -> Result<Vec<String>> {
    let mut d = crate::data::dict::Dictionary::from_dict_txt(dict_txt)?;
    let mut i = 0;
    while d.len() < rows {
        d.add_symbol(&format!("madeupword{i:04}"));
        i += 1;
    }
    if d.len() != rows {
        bail!(
            "the dictionary has {} symbols but the model's table has {rows} rows",
            d.len()
        );
    }
    Ok(d.symbols().to_vec())
}

/// `config.json`: fairseq's special tokens; `</s>` appended to the source
/// and the decoder started from `</s>`.
fn config_json() -> serde_json::Value {
    serde_json::json!({
        "add_source_bos": false,
        "add_source_eos": true,
        "bos_token": "<s>",
        "decoder_start_token": "</s>",
        "eos_token": "</s>",
        "layer_norm_epsilon": null,
        "multi_query_attention": false,
        "unk_token": "<unk>",
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    atomic_write(path, |w| Ok(w.write_all(text.as_bytes())?))
}

/// Write the model directory `dir` (created if missing); `vocabs` are the
/// source and target token lists. Returns the files written.
pub fn write_dir(
    m: &Model,
    vocabs: (&[String], &[String]),
    q: Quantization,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let (src, tgt) = vocabs;
    if src.len() != m.config.src_vocab || tgt.len() != m.config.tgt_vocab {
        bail!("vocabulary sizes do not match the model's tables");
    }
    let (vars, aliases) = finish(variables(m)?, q);
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let bin = dir.join("model.bin");
    atomic_write(&bin, |w| serialize(w, &vars, &aliases))?;
    written.push(bin);
    let cfg = dir.join("config.json");
    write_json(&cfg, &config_json())?;
    written.push(cfg);
    let vocab_files: Vec<(&str, &[String])> = if src == tgt {
        vec![("shared_vocabulary.json", src)]
    } else {
        vec![
            ("source_vocabulary.json", src),
            ("target_vocabulary.json", tgt),
        ]
    };
    for (name, v) in vocab_files {
        let p = dir.join(name);
        write_json(&p, &serde_json::json!(v))?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_rows_round_half_even() {
        let (q, s) = quantize_int8(&[2, 2], &[0.5, -1.0, 0.0, 0.0]);
        assert_eq!(q.bytes, vec![64u8, (-127i8) as u8, 0, 0]);
        assert_eq!(s.bytes, to_bytes_f32(&[127.0, 1.0]));
    }

    #[test]
    fn strings_are_length_prefixed_and_nul_terminated() {
        let mut b = Vec::new();
        put_str(&mut b, "ab").unwrap();
        assert_eq!(b, vec![3, 0, b'a', b'b', 0]);
    }
}
