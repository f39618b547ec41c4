//! The model's rules, in one place: validation of a [`Model`], LayerNorm ε,
//! the position-table rule, and the walk over sublayers that fold, export,
//! the native engine and `inspect` use instead of their own loops.

use super::*;
use anyhow::{ensure, Result};

/// fairseq's LayerNorm epsilon (`torch.nn.LayerNorm` default).
pub const LN_EPS: f32 = 1e-5;

/// Rows of a position table serving `max_positions` positions: fairseq
/// offsets positions by `PAD + 1` (`shared/spec/fairseq.md`).
pub fn position_rows(max_positions: usize) -> usize {
    max_positions.saturating_add(PAD + 1)
}

/// Which stack a sublayer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    Encoder,
    Decoder,
}

/// What a sublayer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SublayerKind {
    SelfAttn,
    /// Encoder-decoder attention.
    CrossAttn,
    Ffn,
}

/// One sublayer seen by the walk: where it is, its LayerNorm and residual.
#[derive(Clone, Copy, Debug)]
pub struct SublayerRef<'a> {
    pub stack: Stack,
    pub layer: usize,
    pub kind: SublayerKind,
    pub norm: &'a Option<LayerNorm>,
    pub residual: &'a Residual,
}

impl SublayerRef<'_> {
    /// `encoder.0.self_attn`, `decoder.1.cross_attn`, `decoder.1.ffn`.
    pub fn name(&self) -> String {
        let stack = match self.stack {
            Stack::Encoder => "encoder",
            Stack::Decoder => "decoder",
        };
        let kind = match self.kind {
            SublayerKind::SelfAttn => "self_attn",
            SublayerKind::CrossAttn => "cross_attn",
            SublayerKind::Ffn => "ffn",
        };
        format!("{stack}.{}.{kind}", self.layer)
    }

    /// fairseq's name of the sublayer's LayerNorm (`encoder.layers.0.final_layer_norm`).
    pub fn norm_name(&self) -> String {
        let (stack, ln) = match (self.stack, self.kind) {
            (Stack::Encoder, SublayerKind::SelfAttn) => ("encoder", "self_attn_layer_norm"),
            (Stack::Decoder, SublayerKind::SelfAttn) => ("decoder", "self_attn_layer_norm"),
            (_, SublayerKind::CrossAttn) => ("decoder", "encoder_attn_layer_norm"),
            (Stack::Encoder, SublayerKind::Ffn) => ("encoder", "final_layer_norm"),
            (Stack::Decoder, SublayerKind::Ffn) => ("decoder", "final_layer_norm"),
        };
        format!("{stack}.layers.{}.{ln}", self.layer)
    }
}

impl Weights {
    /// Every sublayer in execution order: encoder layers (self-attention,
    /// FFN), then decoder layers (self-attention, cross-attention, FFN).
    pub fn sublayers(&self) -> Vec<SublayerRef<'_>> {
        let mut v = Vec::new();
        let r = |stack, layer, kind, norm, residual| SublayerRef {
            stack,
            layer,
            kind,
            norm,
            residual,
        };
        for (i, l) in self.encoder_layers.iter().enumerate() {
            let e = Stack::Encoder;
            v.push(r(
                e,
                i,
                SublayerKind::SelfAttn,
                &l.self_attn.norm,
                &l.self_attn.residual,
            ));
            v.push(r(e, i, SublayerKind::Ffn, &l.ffn.norm, &l.ffn.residual));
        }
        for (i, l) in self.decoder_layers.iter().enumerate() {
            let d = Stack::Decoder;
            v.push(r(
                d,
                i,
                SublayerKind::SelfAttn,
                &l.self_attn.norm,
                &l.self_attn.residual,
            ));
            v.push(r(
                d,
                i,
                SublayerKind::CrossAttn,
                &l.cross_attn.norm,
                &l.cross_attn.residual,
            ));
            v.push(r(d, i, SublayerKind::Ffn, &l.ffn.norm, &l.ffn.residual));
        }
        v
    }
}

/// Checks that the weights agree with each other and with the config:
/// the rule every consumer (export, native engine, fold) relies on.
pub fn validate(m: &Model) -> Result<()> {
    let w = &m.weights;
    let c = &m.config;
    let de = w.encoder_embed.tokens.ncols();
    let dd = w.decoder_embed.tokens.ncols();
    ensure!(de > 0 && dd > 0, "empty embedding tables");
    let he = c.encoder_attention_heads;
    let hd = c.decoder_attention_heads;
    ensure!(
        he > 0 && de.is_multiple_of(he),
        "encoder width {de} is not a multiple of {he} attention heads"
    );
    ensure!(
        hd > 0 && dd.is_multiple_of(hd),
        "decoder width {dd} is not a multiple of {hd} attention heads"
    );
    ensure!(
        w.output_projection.ncols() == dd,
        "output projection is {:?}, decoder width is {dd}",
        w.output_projection.dim()
    );
    check_positions(&w.encoder_embed, "encoder")?;
    check_positions(&w.decoder_embed, "decoder")?;
    let lin = |l: &Linear, out: usize, inp: usize, what: &str| -> Result<()> {
        ensure!(
            l.weight.dim() == (out, inp),
            "{what}: weight is {:?}, expected ({out}, {inp})",
            l.weight.dim()
        );
        if let Some(b) = &l.bias {
            ensure!(
                b.len() == out,
                "{what}: bias has {} entries, expected {out}",
                b.len()
            );
        }
        Ok(())
    };
    let ln = |n: &Option<LayerNorm>, d: usize, what: &str| -> Result<()> {
        if let Some(n) = n {
            ensure!(
                n.gamma.len() == d && n.beta.len() == d,
                "{what}: LayerNorm has {} / {} entries, expected {d}",
                n.gamma.len(),
                n.beta.len()
            );
        }
        Ok(())
    };
    let res = |r: &Residual, d: usize, what: &str| -> Result<()> {
        if let Some(o) = &r.omega {
            ensure!(
                o.len() == 1 || o.len() == d,
                "{what}: omega has {} entries, expected 1 or {d}",
                o.len()
            );
        }
        Ok(())
    };
    ln(
        &w.encoder_embed.layernorm,
        de,
        "encoder.layernorm_embedding",
    )?;
    ln(
        &w.decoder_embed.layernorm,
        dd,
        "decoder.layernorm_embedding",
    )?;
    ln(&w.encoder_final_norm, de, "encoder.layer_norm")?;
    ln(&w.decoder_final_norm, dd, "decoder.layer_norm")?;
    for (i, l) in w.encoder_layers.iter().enumerate() {
        let p = format!("encoder.layers.{i}");
        let a = &l.self_attn.f;
        for (x, n) in [(&a.q, "q"), (&a.k, "k"), (&a.v, "v"), (&a.out, "out")] {
            lin(x, de, de, &format!("{p}.self_attn.{n}_proj"))?;
        }
        let ffn = l.ffn.f.fc1.weight.nrows();
        lin(&l.ffn.f.fc1, ffn, de, &format!("{p}.fc1"))?;
        lin(&l.ffn.f.fc2, de, ffn, &format!("{p}.fc2"))?;
    }
    for (i, l) in w.decoder_layers.iter().enumerate() {
        let p = format!("decoder.layers.{i}");
        let a = &l.self_attn.f;
        for (x, n) in [(&a.q, "q"), (&a.k, "k"), (&a.v, "v"), (&a.out, "out")] {
            lin(x, dd, dd, &format!("{p}.self_attn.{n}_proj"))?;
        }
        let a = &l.cross_attn.f;
        lin(&a.q, dd, dd, &format!("{p}.encoder_attn.q_proj"))?;
        lin(&a.k, dd, de, &format!("{p}.encoder_attn.k_proj"))?;
        lin(&a.v, dd, de, &format!("{p}.encoder_attn.v_proj"))?;
        lin(&a.out, dd, dd, &format!("{p}.encoder_attn.out_proj"))?;
        let ffn = l.ffn.f.fc1.weight.nrows();
        lin(&l.ffn.f.fc1, ffn, dd, &format!("{p}.fc1"))?;
        lin(&l.ffn.f.fc2, dd, ffn, &format!("{p}.fc2"))?;
    }
    for s in w.sublayers() {
        let d = match s.stack {
            Stack::Encoder => de,
            Stack::Decoder => dd,
        };
        ln(s.norm, d, &s.norm_name())?;
        res(s.residual, d, &s.name())?;
    }
    Ok(())
}

fn check_positions(e: &Embedding, what: &str) -> Result<()> {
    if let Positions::Learned(t) = &e.positions {
        ensure!(
            t.ncols() == e.tokens.ncols(),
            "{what} learned positions are {:?}, width {} expected",
            t.dim(),
            e.tokens.ncols()
        );
        ensure!(
            t.nrows() > PAD + 1,
            "{what} learned position table has only {} rows",
            t.nrows()
        );
    }
    Ok(())
}
