//! Tensor access for recognition: loading by name with the expected
//! shape (every name used is remembered, so leftovers can be reported), and
//! the [`Shapes`] the state dict itself tells (vocabularies, widths, layer
//! counts, FFN widths): shapes are authoritative for those.

use super::{err, RecogniseError, R};
use crate::read::Checkpoint;
use crate::spec::{LayerNorm, Linear};
use ndarray::{Array1, Array2};
use std::collections::BTreeSet;

/// Tensor access that remembers which names were used, so leftovers can be
/// reported as unexpected.
pub(super) struct Tensors<'a> {
    pub(super) ckpt: &'a Checkpoint,
    pub(super) used: BTreeSet<String>,
}

impl<'a> Tensors<'a> {
    pub(super) fn new(ckpt: &'a Checkpoint) -> Tensors<'a> {
        Tensors {
            ckpt,
            used: BTreeSet::new(),
        }
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.ckpt.contains(name)
    }

    pub(super) fn shape(&self, name: &str) -> Option<&'a [usize]> {
        self.ckpt.entry(name).map(|e| e.shape.as_slice())
    }

    pub(super) fn load(&mut self, name: &str, shape: &[usize]) -> R<Vec<f32>> {
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

    pub(super) fn vec(&mut self, name: &str, n: usize) -> R<Array1<f32>> {
        Ok(Array1::from(self.load(name, &[n])?))
    }

    pub(super) fn mat(&mut self, name: &str, rows: usize, cols: usize) -> R<Array2<f32>> {
        let v = self.load(name, &[rows, cols])?;
        // Cannot fail: load checked the shape.
        Ok(Array2::from_shape_vec((rows, cols), v).expect("shape checked"))
    }

    pub(super) fn opt_vec(&mut self, name: &str, n: usize) -> R<Option<Array1<f32>>> {
        if self.has(name) {
            Ok(Some(self.vec(name, n)?))
        } else {
            Ok(None)
        }
    }

    pub(super) fn linear(&mut self, prefix: &str, out: usize, inp: usize) -> R<Linear> {
        Ok(Linear {
            weight: self.mat(&format!("{prefix}.weight"), out, inp)?,
            bias: self.opt_vec(&format!("{prefix}.bias"), out)?,
        })
    }

    pub(super) fn layer_norm(&mut self, prefix: &str, d: usize) -> R<Option<LayerNorm>> {
        let w = format!("{prefix}.weight");
        if !self.has(&w) {
            return Ok(None);
        }
        Ok(Some(LayerNorm {
            gamma: self.vec(&w, d)?,
            beta: self.vec(&format!("{prefix}.bias"), d)?,
        }))
    }

    pub(super) fn scale(&mut self, name: &str, d: usize) -> R<Option<Vec<f32>>> {
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
pub(super) fn count_layers(ckpt: &Checkpoint, prefix: &str) -> R<usize> {
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

/// The encoder's token table.
pub(super) const ENC_TOKENS: &str = "encoder.embed_tokens.weight";
/// The decoder's token table (absent when tied to the encoder's).
pub(super) const DEC_TOKENS: &str = "decoder.embed_tokens.weight";

/// What the tensors' shapes say about the model.
#[derive(Clone, Debug)]
pub(super) struct Shapes {
    pub src_vocab: usize,
    pub d_enc: usize,
    pub tgt_vocab: usize,
    pub d_dec: usize,
    pub enc_layers: usize,
    pub dec_layers: usize,
    pub enc_ffn: usize,
    pub dec_ffn: usize,
}

/// A `[vocab, dim]` token table's shape.
fn table_shape(t: &Tensors, name: &str) -> R<Option<Vec<usize>>> {
    match t.shape(name) {
        Some(s) if s.len() == 2 => Ok(Some(s.to_vec())),
        Some(s) => err(format!(
            "tensor {name} has shape {s:?}, expected [vocab, dim]"
        )),
        None => Ok(None),
    }
}

impl Shapes {
    /// Reads the shapes; a missing decoder table is taken as tied (noted).
    pub(super) fn read(t: &Tensors, notes: &mut Vec<String>) -> R<Shapes> {
        let Some(enc_shape) = table_shape(t, ENC_TOKENS)? else {
            return err(format!(
                "missing tensor {ENC_TOKENS}: not a fairseq encoder-decoder Transformer state dict"
            ));
        };
        let dec_shape = match table_shape(t, DEC_TOKENS)? {
            Some(s) => s,
            None => {
                notes.push(format!(
                    "{DEC_TOKENS} absent: taken to be tied to {ENC_TOKENS}"
                ));
                enc_shape.clone()
            }
        };
        let enc_layers = count_layers(t.ckpt, "encoder.layers.")?;
        let dec_layers = count_layers(t.ckpt, "decoder.layers.")?;
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
        Ok(Shapes {
            src_vocab: enc_shape[0],
            d_enc: enc_shape[1],
            tgt_vocab: dec_shape[0],
            d_dec: dec_shape[1],
            enc_layers,
            dec_layers,
            enc_ffn: ffn_of("encoder.layers")?,
            dec_ffn: ffn_of("decoder.layers")?,
        })
    }
}
