//! Encoding and incremental decoding on the CPU, data-parallel over
//! sentences (encoder) and decoder rows (each thread runs the whole layer
//! stack on its share of rows; one join per step).
//!
//! Beam search reorders rows after every step. Instead of copying the
//! self-attention cache (what fairseq and the graph runtimes do), each step's
//! keys and values are written once and every row keeps the list of rows it
//! descends from (`hist`): reordering copies `rows × step` integers.
//! Cross-attention keys and values are kept once per sentence, not per beam.

use super::model::{
    activate, attend_heads, log_softmax, normaliser, tile_stats, Linear, NativeModel, LOGIT_TILE,
};
use crate::decode::top::{RowBest, TopRequest, TopStep};
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
    top: TopScratch,
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
            m.enc_embed.push(t, PAD + 1 + k, x, &m.output);
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
    /// `[rows, d]`: the decoder's last hidden states (for `row_lprobs`).
    hidden: Vec<f32>,
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
            hidden: vec![],
        })
    }

    pub fn rows(&self) -> usize {
        self.row_sent.len()
    }

    /// Feeds one token per row; returns log-probs `[rows, vocab]`.
    pub fn step(&mut self, prev: &[i64]) -> Result<Array2<f32>> {
        let (r, vocab) = (self.rows(), self.m.info.tgt_vocab);
        let mut out = vec![0.0f32; r * vocab];
        self.run_step(prev, Head::Full(&mut out))?;
        Ok(Array2::from_shape_vec((r, vocab), out)?)
    }

    /// Feeds one token per row; returns each row's best candidates
    /// ([`crate::decode::top`]), the output projection, log-softmax and
    /// selection fused tile by tile (no `[rows, vocab]` array).
    pub fn step_top(&mut self, prev: &[i64], req: &TopRequest) -> Result<TopStep> {
        let r = self.rows();
        let vocab = self.m.output.n();
        ensure!(
            req.always.iter().all(|&a| a < vocab) && req.always.windows(2).all(|w| w[0] < w[1]),
            "internal error: bad candidate request {:?}",
            req.always
        );
        let width = req.always.len() + req.k.min(vocab - req.always.len());
        let mut top = TopStep {
            width,
            tokens: vec![0; r * width],
            lprobs: vec![0.0; r * width],
            bound: vec![0.0; r],
        };
        self.run_step(
            prev,
            Head::Top {
                req,
                tokens: &mut top.tokens,
                lprobs: &mut top.lprobs,
                bound: &mut top.bound,
            },
        )?;
        Ok(top)
    }

    /// Row `row`'s full log-probs at the last step (the values
    /// [`Session::step_top`] returned for its candidates: the same
    /// projection and normaliser, one row alone).
    pub fn row_lprobs(&self, row: usize) -> Result<Vec<f32>> {
        let d = self.m.dec_d;
        ensure!(
            (row + 1) * d <= self.hidden.len(),
            "internal error: row {row} of the last step"
        );
        let mut out = vec![0.0; self.m.output.n()];
        self.m
            .output
            .forward(&self.hidden[row * d..][..d], 1, &mut out);
        log_softmax(&mut out, self.m.output.n());
        Ok(out)
    }

    fn run_step(&mut self, prev: &[i64], head: Head) -> Result<()> {
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
        self.hidden.resize(r * d, 0.0);
        let parts = self.threads.min(r.div_ceil(super::gemm::MR)).max(1);
        let size = r.div_ceil(parts).max(1);
        let shards = r.div_ceil(size);
        let ks = per_shard(&mut new_k, shards, size * d);
        let vs = per_shard(&mut new_v, shards, size * d);
        let heads = head.split(size, vocab);
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
            .zip(heads)
            .zip(self.hidden.chunks_mut(size * d))
            .zip(self.scratch.iter_mut())
            .enumerate()
            .map(|(i, ((((k, v), o), x), s))| (i * size, k, v, o, x, s));
        std::thread::scope(|sc| {
            let mut handles = vec![];
            let mut local = None;
            for (i, job) in jobs.enumerate() {
                if i == 0 {
                    local = Some(job);
                } else {
                    let ctx = &ctx;
                    handles.push(sc.spawn(move || {
                        let (r0, k, v, o, x, s) = job;
                        ctx.run(r0, &prev[r0..r0 + x.len() / d], k, v, o, x, s)
                    }));
                }
            }
            if let Some((r0, k, v, o, x, s)) = local {
                ctx.run(r0, &prev[r0..r0 + x.len() / d], k, v, o, x, s);
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
        Ok(())
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
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        r0: usize,
        prev: &[i64],
        mut new_k: Vec<&mut [f32]>,
        mut new_v: Vec<&mut [f32]>,
        head: Head,
        hidden: &mut [f32],
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
            m.dec_embed.push(p as usize, t + PAD + 1, x, &m.output);
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
        hidden.copy_from_slice(x);
        match head {
            Head::Full(lprobs) => {
                m.output.forward(hidden, n, lprobs);
                log_softmax(lprobs, m.output.n());
            }
            Head::Top {
                req,
                tokens,
                lprobs,
                bound,
            } => top_head(&m.output, hidden, req, tokens, lprobs, bound, &mut s.top),
        }
    }
}

/// What a step returns: the full log-probs, or per-row candidates.
enum Head<'a> {
    Full(&'a mut [f32]),
    Top {
        req: &'a TopRequest,
        tokens: &'a mut [u32],
        lprobs: &'a mut [f32],
        bound: &'a mut [f32],
    },
}

impl<'a> Head<'a> {
    /// Cuts the outputs into shards of `size` rows.
    fn split(self, size: usize, vocab: usize) -> Vec<Head<'a>> {
        match self {
            Head::Full(o) => o.chunks_mut(size * vocab).map(Head::Full).collect(),
            Head::Top {
                req,
                tokens,
                lprobs,
                bound,
            } => {
                let w = tokens.len() / bound.len().max(1);
                tokens
                    .chunks_mut(size * w)
                    .zip(lprobs.chunks_mut(size * w))
                    .zip(bound.chunks_mut(size))
                    .map(|((tokens, lprobs), bound)| Head::Top {
                        req,
                        tokens,
                        lprobs,
                        bound,
                    })
                    .collect()
            }
        }
    }
}

/// Per-thread buffers of [`top_head`].
#[derive(Default)]
pub(crate) struct TopScratch {
    logits: Vec<f32>,
    /// `[rows, tiles]` of [`tile_stats`].
    stats: Vec<(f32, f32)>,
    /// `[rows, always]` logits of the always-returned tokens.
    always: Vec<f32>,
    best: Vec<RowBest>,
}

super::multiversion! {
/// Offers `row` (columns `c0..`) but the `always` tokens to `best`, in
/// increasing index order; chunks of 16 whose maximum is at or below the
/// best's floor are skipped without a look at each value.
fn scan(row: &[f32], c0: usize, always: &[usize], best: &mut RowBest) -> () {
    let mut floor = best.floor();
    for (ci, chunk) in row.chunks(16).enumerate() {
        let mut m = f32::NEG_INFINITY;
        for &v in chunk {
            m = if v > m { v } else { m };
        }
        if m <= floor {
            continue;
        }
        for (j, &val) in chunk.iter().enumerate() {
            let v = c0 + ci * 16 + j;
            if val > floor && always.binary_search(&v).is_err() {
                best.offer(val, v as u32);
                floor = best.floor();
            }
        }
    }
}
}

/// The output projection of `x` (`[n, d]`) in column tiles of
/// [`LOGIT_TILE`], each tile's log-softmax statistics and every row's best
/// tokens, then per row: the `always` tokens' and the best tokens'
/// log-probs, and the bound of the rest (see [`crate::decode::top`]).
fn top_head(
    output: &Linear,
    x: &[f32],
    req: &TopRequest,
    tokens: &mut [u32],
    lprobs: &mut [f32],
    bound: &mut [f32],
    s: &mut TopScratch,
) {
    let n = bound.len();
    let vocab = output.n();
    let na = req.always.len();
    let k = req.k.min(vocab - na);
    let width = na + k;
    let tiles = vocab.div_ceil(LOGIT_TILE);
    s.logits.resize(n * LOGIT_TILE.min(vocab), 0.0);
    s.stats.resize(n * tiles, (0.0, 0.0));
    s.always.resize(n * na, 0.0);
    if s.best.len() < n {
        s.best.resize_with(n, RowBest::default);
    }
    s.best[..n].iter_mut().for_each(|b| b.reset(k));
    for (t, c0) in (0..vocab).step_by(LOGIT_TILE).enumerate() {
        let cols = c0..(c0 + LOGIT_TILE).min(vocab);
        let w = cols.len();
        let logits = &mut s.logits[..n * w];
        output.forward_cols(x, n, cols.clone(), logits);
        for (i, row) in logits.chunks_exact(w).enumerate() {
            s.stats[i * tiles + t] = tile_stats(row);
            for (a, &tok) in req.always.iter().enumerate() {
                if cols.contains(&tok) {
                    s.always[i * na + a] = row[tok - c0];
                }
            }
            scan(row, c0, &req.always, &mut s.best[i]);
        }
    }
    for i in 0..n {
        let (max, lse) = normaliser(&s.stats[i * tiles..][..tiles]);
        let lp = |v: f32| v - max - lse;
        let (tok, lpr) = (
            &mut tokens[i * width..][..width],
            &mut lprobs[i * width..][..width],
        );
        for (a, &t) in req.always.iter().enumerate() {
            tok[a] = t as u32;
            lpr[a] = lp(s.always[i * na + a]);
        }
        let best = s.best[i].best();
        for j in 0..k {
            (tok[na + j], lpr[na + j]) = match best.get(j) {
                Some(&(v, t)) => (t, lp(v)),
                None => (u32::MAX, f32::NEG_INFINITY),
            };
        }
        bound[i] = match best.get(k) {
            _ if lse.is_nan() => f32::NAN,
            Some(&(v, _)) => lp(v),
            None => f32::NEG_INFINITY,
        };
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

#[cfg(test)]
mod tests {
    use super::{top_head, TopScratch};
    use crate::decode::top::TopRequest;
    use crate::native::model::{log_softmax, Linear};
    use crate::native::ComputeType;

    /// The fused head returns the full log-softmax's values for its
    /// candidates, the best tokens in order, and a bound above the rest,
    /// over several column tiles, on every compute type.
    #[test]
    fn fused_head_equals_the_full_log_softmax() {
        let (vocab, d, n) = (2500, 40, 7);
        let mut seed = 3u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let w = ndarray::Array2::from_shape_fn((vocab, d), |_| rnd());
        let mut x: Vec<f32> = (0..n * d).map(|_| rnd() * 8.0).collect();
        x[..d].fill(0.0); // a row of exact ties
        let req = TopRequest {
            k: 10,
            always: vec![1, 2, 3],
        };
        let cts = [
            ComputeType::Float32,
            ComputeType::Int8,
            ComputeType::Bfloat16,
        ];
        for ct in cts {
            if ct == ComputeType::Bfloat16 && crate::native::quant::bf16_kernel().is_none() {
                continue;
            }
            let lin = Linear::new(&[w.view()], None, ct);
            let mut full = vec![0.0; n * vocab];
            lin.forward(&x, n, &mut full);
            log_softmax(&mut full, vocab);
            let width = 13;
            let (mut tok, mut lp, mut bound) =
                (vec![0u32; n * width], vec![0.0; n * width], vec![0.0; n]);
            let mut s = TopScratch::default();
            top_head(&lin, &x, &req, &mut tok, &mut lp, &mut bound, &mut s);
            for i in 0..n {
                let row = &full[i * vocab..][..vocab];
                for j in 0..width {
                    let t = tok[i * width + j] as usize;
                    assert_eq!(lp[i * width + j], row[t], "{ct:?} row {i} token {t}");
                }
                assert_eq!(&tok[i * width..][..3], &[1, 2, 3]);
                // The best others, best first, ties by lower index.
                let mut order: Vec<usize> = (0..vocab).filter(|v| !(1..=3).contains(v)).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                let got: Vec<usize> = tok[i * width + 3..][..10]
                    .iter()
                    .map(|&t| t as usize)
                    .collect();
                if i > 0 {
                    assert_eq!(got, order[..10], "{ct:?} row {i}");
                }
                assert_eq!(bound[i], row[order[10]], "{ct:?} row {i} bound");
                for &v in &order[10..] {
                    assert!(row[v] <= bound[i]);
                }
            }
        }
    }
}
