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

/// A sublayer's function, as the walk hands it out.
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    Attention(&'a Attention),
    FeedForward(&'a FeedForward),
}

/// One sublayer seen by the walk: where it is, its function, its LayerNorm
/// and its residual. Every consumer applies it in one of the forms of
/// `shared/spec/fold.md` §1: Pre-LN `x + F(LN(x))`, else
/// `LN(x ⊙ ω + g·F(x))` (no LN when `norm` is `None`).
#[derive(Clone, Copy, Debug)]
pub struct SublayerRef<'a> {
    pub stack: Stack,
    pub layer: usize,
    pub kind: SublayerKind,
    pub f: Body<'a>,
    pub norm: &'a Option<LayerNorm>,
    pub residual: &'a Residual,
}

fn stack_name(stack: Stack) -> &'static str {
    match stack {
        Stack::Encoder => "encoder",
        Stack::Decoder => "decoder",
    }
}

impl SublayerRef<'_> {
    /// `encoder.0.self_attn`, `decoder.1.cross_attn`, `decoder.1.ffn`.
    pub fn name(&self) -> String {
        let kind = match self.kind {
            SublayerKind::SelfAttn => "self_attn",
            SublayerKind::CrossAttn => "cross_attn",
            SublayerKind::Ffn => "ffn",
        };
        format!("{}.{}.{kind}", stack_name(self.stack), self.layer)
    }

    /// fairseq's prefix of the layer (`decoder.layers.1`).
    pub fn layer_prefix(&self) -> String {
        format!("{}.layers.{}", stack_name(self.stack), self.layer)
    }

    /// fairseq's name of the sublayer's module (`decoder.layers.1.encoder_attn`;
    /// the FFN, which has no module in fairseq, is `….ffn`): the prefix of
    /// names derived from it (an exported graph's `.omega`, `.gate`).
    pub fn module_name(&self) -> String {
        let m = match self.kind {
            SublayerKind::SelfAttn => "self_attn",
            SublayerKind::CrossAttn => "encoder_attn",
            SublayerKind::Ffn => "ffn",
        };
        format!("{}.{m}", self.layer_prefix())
    }

    /// fairseq's name of the sublayer's LayerNorm (`encoder.layers.0.final_layer_norm`).
    pub fn norm_name(&self) -> String {
        let ln = match self.kind {
            SublayerKind::SelfAttn => "self_attn_layer_norm",
            SublayerKind::CrossAttn => "encoder_attn_layer_norm",
            SublayerKind::Ffn => "final_layer_norm",
        };
        format!("{}.{ln}", self.layer_prefix())
    }
}

/// A sublayer as a transformation of its weights sees it (`fold`): the
/// linear maps that read the residual stream `x` (q, k, v of
/// self-attention; only q of cross-attention, whose k and v read the
/// encoder output; fc1), the one that writes the branch output (out_proj,
/// fc2), its LayerNorm and its residual.
#[derive(Debug)]
pub struct SublayerMut<'a> {
    pub stack: Stack,
    pub layer: usize,
    pub kind: SublayerKind,
    pub readers: Vec<&'a mut Linear>,
    pub output: &'a mut Linear,
    pub norm: &'a mut Option<LayerNorm>,
    pub residual: &'a mut Residual,
}

fn attn_ref(
    stack: Stack,
    layer: usize,
    kind: SublayerKind,
    s: &Sublayer<Attention>,
) -> SublayerRef<'_> {
    SublayerRef {
        stack,
        layer,
        kind,
        f: Body::Attention(&s.f),
        norm: &s.norm,
        residual: &s.residual,
    }
}

fn ffn_ref(stack: Stack, layer: usize, s: &Sublayer<FeedForward>) -> SublayerRef<'_> {
    SublayerRef {
        stack,
        layer,
        kind: SublayerKind::Ffn,
        f: Body::FeedForward(&s.f),
        norm: &s.norm,
        residual: &s.residual,
    }
}

fn attn_mut(
    stack: Stack,
    layer: usize,
    kind: SublayerKind,
    s: &mut Sublayer<Attention>,
) -> SublayerMut<'_> {
    let Attention { q, k, v, out } = &mut s.f;
    let readers = match kind {
        SublayerKind::CrossAttn => vec![q],
        _ => vec![q, k, v],
    };
    SublayerMut {
        stack,
        layer,
        kind,
        readers,
        output: out,
        norm: &mut s.norm,
        residual: &mut s.residual,
    }
}

fn ffn_mut(stack: Stack, layer: usize, s: &mut Sublayer<FeedForward>) -> SublayerMut<'_> {
    SublayerMut {
        stack,
        layer,
        kind: SublayerKind::Ffn,
        readers: vec![&mut s.f.fc1],
        output: &mut s.f.fc2,
        norm: &mut s.norm,
        residual: &mut s.residual,
    }
}

impl EncoderLayer {
    /// Layer `layer`'s sublayers in execution order: self-attention, FFN.
    pub fn sublayers(&self, layer: usize) -> [SublayerRef<'_>; 2] {
        let e = Stack::Encoder;
        [
            attn_ref(e, layer, SublayerKind::SelfAttn, &self.self_attn),
            ffn_ref(e, layer, &self.ffn),
        ]
    }

    /// [`EncoderLayer::sublayers`], mutably.
    pub fn sublayers_mut(&mut self, layer: usize) -> [SublayerMut<'_>; 2] {
        let e = Stack::Encoder;
        [
            attn_mut(e, layer, SublayerKind::SelfAttn, &mut self.self_attn),
            ffn_mut(e, layer, &mut self.ffn),
        ]
    }
}

impl DecoderLayer {
    /// Layer `layer`'s sublayers in execution order: self-attention,
    /// cross-attention, FFN.
    pub fn sublayers(&self, layer: usize) -> [SublayerRef<'_>; 3] {
        let d = Stack::Decoder;
        [
            attn_ref(d, layer, SublayerKind::SelfAttn, &self.self_attn),
            attn_ref(d, layer, SublayerKind::CrossAttn, &self.cross_attn),
            ffn_ref(d, layer, &self.ffn),
        ]
    }

    /// [`DecoderLayer::sublayers`], mutably.
    pub fn sublayers_mut(&mut self, layer: usize) -> [SublayerMut<'_>; 3] {
        let d = Stack::Decoder;
        [
            attn_mut(d, layer, SublayerKind::SelfAttn, &mut self.self_attn),
            attn_mut(d, layer, SublayerKind::CrossAttn, &mut self.cross_attn),
            ffn_mut(d, layer, &mut self.ffn),
        ]
    }
}

impl Weights {
    /// Every sublayer in execution order: encoder layers (self-attention,
    /// FFN), then decoder layers (self-attention, cross-attention, FFN).
    pub fn sublayers(&self) -> Vec<SublayerRef<'_>> {
        let mut v = self.stack_sublayers(Stack::Encoder);
        v.extend(self.stack_sublayers(Stack::Decoder));
        v
    }

    /// The sublayers of one stack, in execution order.
    pub fn stack_sublayers(&self, stack: Stack) -> Vec<SublayerRef<'_>> {
        match stack {
            Stack::Encoder => self
                .encoder_layers
                .iter()
                .enumerate()
                .flat_map(|(i, l)| l.sublayers(i))
                .collect(),
            Stack::Decoder => self
                .decoder_layers
                .iter()
                .enumerate()
                .flat_map(|(i, l)| l.sublayers(i))
                .collect(),
        }
    }

    /// The sublayers of one stack, mutably, in execution order, with the
    /// stack's embedding (the producer of its stream).
    pub fn stack_sublayers_mut(&mut self, stack: Stack) -> (&mut Embedding, Vec<SublayerMut<'_>>) {
        match stack {
            Stack::Encoder => (
                &mut self.encoder_embed,
                self.encoder_layers
                    .iter_mut()
                    .enumerate()
                    .flat_map(|(i, l)| l.sublayers_mut(i))
                    .collect(),
            ),
            Stack::Decoder => (
                &mut self.decoder_embed,
                self.decoder_layers
                    .iter_mut()
                    .enumerate()
                    .flat_map(|(i, l)| l.sublayers_mut(i))
                    .collect(),
            ),
        }
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
    for s in w.sublayers() {
        let (d, d_in) = match s.stack {
            Stack::Encoder => (de, de),
            Stack::Decoder => (dd, de),
        };
        let p = s.layer_prefix();
        match s.f {
            Body::Attention(a) => {
                let m = s.module_name();
                // Cross-attention's k and v read the encoder output.
                let kv_in = if s.kind == SublayerKind::CrossAttn {
                    d_in
                } else {
                    d
                };
                lin(&a.q, d, d, &format!("{m}.q_proj"))?;
                lin(&a.k, d, kv_in, &format!("{m}.k_proj"))?;
                lin(&a.v, d, kv_in, &format!("{m}.v_proj"))?;
                lin(&a.out, d, d, &format!("{m}.out_proj"))?;
            }
            Body::FeedForward(f) => {
                let ffn = f.fc1.weight.nrows();
                lin(&f.fc1, ffn, d, &format!("{p}.fc1"))?;
                lin(&f.fc2, d, ffn, &format!("{p}.fc2"))?;
            }
        }
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
