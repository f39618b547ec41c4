//! Encoding and incremental decoding on the CPU, data-parallel over
//! sentences (encoder) and decoder rows (each thread runs the whole layer
//! stack on its share of rows; one join per step).
//!
//! Beam search reorders rows after every step. Instead of copying the
//! self-attention cache (what fairseq and the graph runtimes do), each step's
//! keys and values are written once and every row keeps the list of rows it
//! descends from (`hist`): reordering copies `rows × step` integers.
//! Cross-attention keys and values are kept once per sentence, not per beam.

use super::model::{activate, attend_heads, log_softmax, NativeModel};
use crate::spec::PAD;
use anyhow::{ensure, Result};
use ndarray::{Array2, ArrayView2};

/// Per-thread buffers, reused from step to step.
#[derive(Default)]
pub(crate) struct Scratch {
    x: Vec<f32>,
    tmp: Vec<f32>,
    out: Vec<f32>,
    wide: Vec<f32>,
    att: Vec<f32>,
    probs: Vec<f32>,
}

/// Cross-attention keys and values of one sentence: per decoder layer,
/// `[src_len, d]` each.
type Cross = Vec<(Vec<f32>, Vec<f32>)>;

/// Splits `n` items into at most `parts` contiguous ranges of near-equal weight.
fn split_by_weight(weights: &[usize], parts: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = weights.iter().sum();
    let parts = parts.clamp(1, weights.len().max(1));
    let mut out = vec![];
    let mut start = 0;
    let mut acc = 0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        let k = out.len() + 1;
        if k < parts && acc * parts >= total * k && i + 1 < weights.len() {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    out.push(start..weights.len());
    out
}

/// Encodes sentences (token ids without padding) into their cross-attention
/// keys and values.
pub(crate) fn encode(
    m: &NativeModel,
    sources: &[Vec<usize>],
    threads: usize,
) -> Result<Vec<Cross>> {
    // Token ids were checked against the vocabulary by the caller (`unpad`).
    for s in sources {
        if let Some(rows) = m.enc_embed.position_rows() {
            ensure!(
                s.len() + PAD < rows,
                "a source has {} tokens, the model takes at most {}",
                s.len(),
                rows - PAD - 1
            );
        }
    }
    let lens: Vec<usize> = sources.iter().map(Vec::len).collect();
    let groups = split_by_weight(&lens, threads);
    let mut results: Vec<Vec<Cross>> = Vec::with_capacity(groups.len());
    std::thread::scope(|sc| {
        let handles: Vec<_> = groups
            .iter()
            .skip(1)
            .map(|g| {
                let part = &sources[g.clone()];
                sc.spawn(move || encode_group(m, part, &mut Scratch::default()))
            })
            .collect();
        results.push(encode_group(
            m,
            &sources[groups[0].clone()],
            &mut Scratch::default(),
        ));
        for h in handles {
            results.push(h.join().expect("encoder thread panicked"));
        }
    });
    Ok(results.into_iter().flatten().collect())
}

fn encode_group(m: &NativeModel, sources: &[Vec<usize>], s: &mut Scratch) -> Vec<Cross> {
    let d = m.enc_d;
    let heads = m.enc_heads;
    let hd = d / heads;
    let scale = (hd as f64).powf(-0.5) as f32;
    let n: usize = sources.iter().map(Vec::len).sum();
    let mut starts = Vec::with_capacity(sources.len());
    let x = &mut s.x;
    x.clear();
    for src in sources {
        starts.push(x.len() / d);
        for (k, &t) in src.iter().enumerate() {
            m.enc_embed.push(t, PAD + 1 + k, x);
        }
    }
    m.enc_embed.finish(x);
    let (tmp, out, wide, att, probs) = (
        &mut s.tmp,
        &mut s.out,
        &mut s.wide,
        &mut s.att,
        &mut s.probs,
    );
    for l in &m.enc_layers {
        l.attn.run(x, d, m.enc_pre, tmp, out, |h, out| {
            let f = &l.attn.f;
            wide.resize(n * 3 * d, 0.0);
            f.qkv.forward(h, n, wide);
            for row in wide.chunks_exact_mut(3 * d) {
                row[..d].iter_mut().for_each(|v| *v *= scale);
            }
            att.resize(n * d, 0.0);
            for (src, &start) in sources.iter().zip(&starts) {
                let len = src.len();
                let rows = &wide[start * 3 * d..(start + len) * 3 * d];
                for i in 0..len {
                    attend_heads(
                        &rows[i * 3 * d..][..d],
                        heads,
                        len,
                        |j| &rows[j * 3 * d + d..][..d],
                        |j| &rows[j * 3 * d + 2 * d..][..d],
                        probs,
                        &mut att[(start + i) * d..][..d],
                    );
                }
            }
            out.resize(n * d, 0.0);
            f.out.forward(att, n, out);
        });
        l.ffn.run(x, d, m.enc_pre, tmp, out, |h, out| {
            ffn(&l.ffn.f, h, n, d, m.activation, wide, out)
        });
    }
    if let Some(nm) = &m.enc_final {
        nm.apply(x);
    }
    let dd = m.dec_d;
    let mut cross: Vec<Cross> = sources.iter().map(|_| Vec::new()).collect();
    for l in &m.dec_layers {
        wide.resize(n * 2 * dd, 0.0);
        l.cross.f.kv.forward(x, n, wide);
        for ((src, &start), c) in sources.iter().zip(&starts).zip(cross.iter_mut()) {
            let mut k = Vec::with_capacity(src.len() * dd);
            let mut v = Vec::with_capacity(src.len() * dd);
            for row in wide[start * 2 * dd..(start + src.len()) * 2 * dd].chunks_exact(2 * dd) {
                k.extend_from_slice(&row[..dd]);
                v.extend_from_slice(&row[dd..]);
            }
            c.push((k, v));
        }
    }
    cross
}

fn ffn(
    f: &super::model::Ffn,
    h: &[f32],
    n: usize,
    d: usize,
    act: crate::spec::Activation,
    wide: &mut Vec<f32>,
    out: &mut Vec<f32>,
) {
    wide.resize(n * f.fc1.n(), 0.0);
    f.fc1.forward(h, n, wide);
    activate(wide, act);
    out.resize(n * d, 0.0);
    f.fc2.forward(wide, n, out);
}

/// Incremental decoding of one batch of sentences.
pub struct Session<'a> {
    m: &'a NativeModel,
    threads: usize,
    cross: Vec<Cross>,
    /// Tokens fed so far.
    t: usize,
    /// Sentence of each current row.
    row_sent: Vec<u32>,
    /// `[rows, t]`: the row each current row descends from at every earlier step.
    hist: Vec<u32>,
    /// Per layer, per step: keys / values `[rows at that step, d]`.
    k: Vec<Vec<Vec<f32>>>,
    v: Vec<Vec<Vec<f32>>>,
    scratch: Vec<Scratch>,
}

impl<'a> Session<'a> {
    /// Encodes `sources` (ids without padding); one decoder row per sentence.
    pub(crate) fn new(m: &'a NativeModel, sources: &[Vec<usize>], threads: usize) -> Result<Self> {
        let cross = encode(m, sources, threads)?;
        let layers = m.dec_layers.len();
        Ok(Session {
            m,
            threads: threads.max(1),
            cross,
            t: 0,
            row_sent: (0..sources.len() as u32).collect(),
            hist: vec![],
            k: vec![vec![]; layers],
            v: vec![vec![]; layers],
            scratch: (0..threads.max(1)).map(|_| Scratch::default()).collect(),
        })
    }

    pub fn rows(&self) -> usize {
        self.row_sent.len()
    }

    /// Feeds one token per row; returns log-probs `[rows, vocab]`.
    pub fn step(&mut self, prev: &[i64]) -> Result<Array2<f32>> {
        let m = self.m;
        let r = self.rows();
        ensure!(
            prev.len() == r,
            "{} tokens for {r} decoder rows",
            prev.len()
        );
        let vocab = m.info.tgt_vocab;
        for &p in prev {
            ensure!(
                p >= 0 && (p as usize) < m.dec_embed_rows(),
                "target token id {p} is outside the vocabulary of {vocab}"
            );
        }
        if let Some(rows) = m.dec_embed.position_rows() {
            ensure!(
                self.t + PAD + 1 < rows,
                "step {} is past the model's {} target positions",
                self.t,
                rows - PAD - 1
            );
        }
        ensure!(
            self.hist.len() == r * self.t,
            "internal error: a decoding step without a reorder after the previous one"
        );
        let d = m.dec_d;
        let layers = m.dec_layers.len();
        let mut new_k: Vec<Vec<f32>> = (0..layers).map(|_| vec![0.0; r * d]).collect();
        let mut new_v: Vec<Vec<f32>> = (0..layers).map(|_| vec![0.0; r * d]).collect();
        let mut out = vec![0.0f32; r * vocab];
        let parts = self.threads.min(r.div_ceil(super::gemm::MR)).max(1);
        let size = r.div_ceil(parts).max(1);
        let shards = r.div_ceil(size);
        let ks = per_shard(&mut new_k, shards, size * d);
        let vs = per_shard(&mut new_v, shards, size * d);
        let t = self.t;
        let ctx = StepCtx {
            m,
            t,
            hist: &self.hist,
            row_sent: &self.row_sent,
            past_k: &self.k,
            past_v: &self.v,
            cross: &self.cross,
        };
        let jobs = ks
            .into_iter()
            .zip(vs)
            .zip(out.chunks_mut(size * vocab))
            .zip(self.scratch.iter_mut())
            .enumerate()
            .map(|(i, (((k, v), o), s))| (i * size, k, v, o, s));
        std::thread::scope(|sc| {
            let mut handles = vec![];
            let mut local = None;
            for (i, job) in jobs.enumerate() {
                if i == 0 {
                    local = Some(job);
                } else {
                    let ctx = &ctx;
                    handles.push(sc.spawn(move || {
                        let (r0, k, v, o, s) = job;
                        ctx.run(r0, &prev[r0..r0 + o.len() / vocab], k, v, o, s)
                    }));
                }
            }
            if let Some((r0, k, v, o, s)) = local {
                ctx.run(r0, &prev[r0..r0 + o.len() / vocab], k, v, o, s);
            }
            for h in handles {
                h.join().expect("decoder thread panicked");
            }
        });
        for (l, (k, v)) in new_k.into_iter().zip(new_v).enumerate() {
            self.k[l].push(k);
            self.v[l].push(v);
        }
        self.t += 1;
        Ok(Array2::from_shape_vec((r, vocab), out)?)
    }

    /// Row `i` of the next step continues row `rows[i]` of the last one.
    pub fn reorder(&mut self, rows: &[usize]) -> Result<()> {
        let t = self.t;
        let old = self.rows();
        let w = t.saturating_sub(1);
        let mut hist = Vec::with_capacity(rows.len() * t);
        let mut row_sent = Vec::with_capacity(rows.len());
        for &r in rows {
            ensure!(r < old, "row {r} out of range: batch has {old} rows");
            hist.extend_from_slice(&self.hist[r * w..(r + 1) * w]);
            if t > 0 {
                hist.push(r as u32);
            }
            row_sent.push(self.row_sent[r]);
        }
        self.hist = hist;
        self.row_sent = row_sent;
        Ok(())
    }
}

/// Cuts every per-layer buffer into `shards` chunks of `chunk` values;
/// returns, per shard, its chunk of every layer.
fn per_shard(bufs: &mut [Vec<f32>], shards: usize, chunk: usize) -> Vec<Vec<&mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..shards).map(|_| vec![]).collect();
    for buf in bufs.iter_mut() {
        for (i, c) in buf.chunks_mut(chunk).enumerate() {
            out[i].push(c);
        }
    }
    out
}

/// What every thread of a step reads.
struct StepCtx<'s> {
    m: &'s NativeModel,
    t: usize,
    hist: &'s [u32],
    row_sent: &'s [u32],
    past_k: &'s [Vec<Vec<f32>>],
    past_v: &'s [Vec<Vec<f32>>],
    cross: &'s [Cross],
}

impl StepCtx<'_> {
    /// Decodes rows `r0..r0 + prev.len()`, writing their new keys / values
    /// (per layer) and log-probs.
    fn run(
        &self,
        r0: usize,
        prev: &[i64],
        mut new_k: Vec<&mut [f32]>,
        mut new_v: Vec<&mut [f32]>,
        lprobs: &mut [f32],
        s: &mut Scratch,
    ) {
        let m = self.m;
        let t = self.t;
        let n = prev.len();
        let d = m.dec_d;
        let heads = m.dec_heads;
        let hd = d / heads;
        let scale = (hd as f64).powf(-0.5) as f32;
        let x = &mut s.x;
        x.clear();
        for &p in prev {
            m.dec_embed.push(p as usize, t + PAD + 1, x);
        }
        m.dec_embed.finish(x);
        let (tmp, out, wide, att, probs) = (
            &mut s.tmp,
            &mut s.out,
            &mut s.wide,
            &mut s.att,
            &mut s.probs,
        );
        for (li, l) in m.dec_layers.iter().enumerate() {
            let nk: &mut [f32] = new_k[li];
            let nv: &mut [f32] = new_v[li];
            let pk = &self.past_k[li];
            let pv = &self.past_v[li];
            l.attn.run(x, d, m.dec_pre, tmp, out, |h, out| {
                let f = &l.attn.f;
                wide.resize(n * 3 * d, 0.0);
                f.qkv.forward(h, n, wide);
                for (i, row) in wide.chunks_exact_mut(3 * d).enumerate() {
                    row[..d].iter_mut().for_each(|v| *v *= scale);
                    nk[i * d..(i + 1) * d].copy_from_slice(&row[d..2 * d]);
                    nv[i * d..(i + 1) * d].copy_from_slice(&row[2 * d..]);
                }
                let (nk, nv): (&[f32], &[f32]) = (nk, nv);
                att.resize(n * d, 0.0);
                for i in 0..n {
                    let hist = &self.hist[(r0 + i) * t..(r0 + i + 1) * t];
                    attend_heads(
                        &wide[i * 3 * d..][..d],
                        heads,
                        t + 1,
                        |j| {
                            if j < t {
                                &pk[j][hist[j] as usize * d..][..d]
                            } else {
                                &nk[i * d..][..d]
                            }
                        },
                        |j| {
                            if j < t {
                                &pv[j][hist[j] as usize * d..][..d]
                            } else {
                                &nv[i * d..][..d]
                            }
                        },
                        probs,
                        &mut att[i * d..][..d],
                    );
                }
                out.resize(n * d, 0.0);
                f.out.forward(att, n, out);
            });
            l.cross.run(x, d, m.dec_pre, tmp, out, |h, out| {
                let f = &l.cross.f;
                wide.resize(n * d, 0.0);
                f.q.forward(h, n, wide);
                wide.iter_mut().for_each(|v| *v *= scale);
                att.resize(n * d, 0.0);
                for i in 0..n {
                    let (ck, cv) = &self.cross[self.row_sent[r0 + i] as usize][li];
                    let len = ck.len() / d;
                    attend_heads(
                        &wide[i * d..][..d],
                        heads,
                        len,
                        |j| &ck[j * d..][..d],
                        |j| &cv[j * d..][..d],
                        probs,
                        &mut att[i * d..][..d],
                    );
                }
                out.resize(n * d, 0.0);
                f.out.forward(att, n, out);
            });
            l.ffn.run(x, d, m.dec_pre, tmp, out, |h, out| {
                ffn(&l.ffn.f, h, n, d, m.activation, wide, out)
            });
        }
        if let Some(nm) = &m.dec_final {
            nm.apply(x);
        }
        let vocab = m.output.n();
        m.output.forward(x, n, lprobs);
        let fast = m.compute_type != super::ComputeType::Float32;
        log_softmax(lprobs, vocab, fast);
    }
}

/// Teacher forcing through the incremental decoder: log-probs
/// `[batch, tgt_len, vocab]` for right-padded `prev_output_tokens`
/// (positions after a row's end are computed and left to the caller).
pub(crate) fn forced(
    m: &NativeModel,
    sources: &[Vec<usize>],
    prev_output_tokens: ArrayView2<i64>,
    threads: usize,
) -> Result<ndarray::Array3<f32>> {
    let (b, len) = prev_output_tokens.dim();
    ensure!(
        b == sources.len(),
        "{b} target rows for {} sources",
        sources.len()
    );
    let vocab = m.info.tgt_vocab;
    let mut s = Session::new(m, sources, threads)?;
    let ident: Vec<usize> = (0..b).collect();
    let mut out = ndarray::Array3::<f32>::zeros((b, len, vocab));
    for j in 0..len {
        let col: Vec<i64> = prev_output_tokens.column(j).to_vec();
        let lp = s.step(&col)?;
        out.slice_mut(ndarray::s![.., j, ..]).assign(&lp);
        s.reorder(&ident)?;
    }
    Ok(out)
}
