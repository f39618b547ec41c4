//! Beam search against real fairseq-generate outputs (fixtures), on tract.

use crate::common::fixture;
use admin_convert::data::{BpeMode, Dictionary, IndexedDataset};
use admin_convert::decode::{decode_all, Batching, BeamOptions, Hypothesis};
use admin_convert::export::{self, ExportOptions, Precision};
use admin_convert::runtime::tract::TractBackend;
use admin_convert::runtime::GraphSource;
use std::collections::BTreeMap;
use std::sync::Arc;

fn backend(ckpt: &str) -> TractBackend {
    let (_, rec) = admin_convert::cli::load(&fixture(ckpt), &Default::default()).unwrap();
    let graphs = export::export(&rec.model, Precision::Fp32, &ExportOptions::default()).unwrap();
    TractBackend::new(GraphSource::Memory(Arc::new(graphs))).unwrap()
}

fn sources(data: &str) -> Vec<Vec<i64>> {
    let ds = IndexedDataset::open(fixture(&format!("{data}/test.src-tgt.src"))).unwrap();
    ds.iter()
        .map(|s| s.unwrap().into_iter().map(i64::from).collect())
        .collect()
}

/// fairseq-generate's H- lines per sentence id: (score, text).
fn h_lines(file: &str) -> BTreeMap<usize, Vec<(f64, String)>> {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    let mut out: BTreeMap<usize, Vec<(f64, String)>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("H-") {
            let mut f = rest.splitn(3, '\t');
            let id: usize = f.next().unwrap().parse().unwrap();
            let score: f64 = f.next().unwrap().parse().unwrap();
            let hyp = f.next().unwrap_or("").to_string();
            out.entry(id).or_default().push((score, hyp));
        }
    }
    out
}

fn text(dict: &Dictionary, h: &Hypothesis, bpe: Option<BpeMode>) -> String {
    let ids: Vec<u32> = h.tokens.iter().map(|&t| t as u32).collect();
    dict.string(&ids, bpe)
}

#[test]
fn postln_matches_fairseq() {
    let b = backend("postln-fairseq012/checkpoint_best.pt");
    let src = sources("data-bin");
    let dict = Dictionary::read(fixture("data-bin/dict.tgt.txt")).unwrap();
    let opts = BeamOptions {
        beam: 4,
        ..Default::default()
    };
    let batching = Batching {
        batch_size: Some(64),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let hyps = decode_all(
        &mut GraphEngine(b),
        &src,
        None,
        &opts,
        &batching,
        &mut |_, _| {},
    )
    .unwrap();
    eprintln!("decoded in {:?}", t.elapsed());
    let want = h_lines("postln-fairseq012/generate-best.sacrebleu.txt");
    let mut same = 0;
    let mut maxd: f64 = 0.0;
    for (i, h) in hyps.iter().enumerate() {
        let got = text(&dict, &h[0], Some(BpeMode::SubwordNmt));
        let (score, w) = &want[&i][0];
        if &got == w {
            same += 1
        } else {
            eprintln!("{i}: got {got:?}\n   want {w:?}")
        }
        let ours = (h[0].score / std::f32::consts::LN_2) as f64;
        maxd = maxd.max((ours - score).abs());
    }
    eprintln!("same {same}/200, max score diff {maxd:e}");
    assert_eq!(same, 200);
}

// ---- a mock backend: log-probs from a hash of (source, prefix) ---------------

use admin_convert::decode::{beam_search, plan};
use admin_convert::export::{GraphInfo, GraphKind};
use admin_convert::runtime::{Backend, DecoderState, EncoderState, GraphEngine, Outputs, Value};
use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, Axis, Ix2, Ix3};

const PAD: usize = 1;
const EOS: usize = 2;
const UNK: usize = 3;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The mock model: log-softmax of logits hashed from the source, the
/// prefix and the token, quantized to quarters so that exact ties happen.
#[derive(Clone, Copy)]
struct Toy {
    vocab: usize,
    seed: u64,
    /// How fast EOS becomes likely with the prefix length.
    eos_boost: f32,
}

impl Toy {
    fn lprobs(&self, src: &[i64], prefix: &[i64]) -> Vec<f32> {
        let mut h = self.seed;
        for &t in src.iter().filter(|&&t| t != PAD as i64) {
            h = splitmix(h ^ t as u64);
        }
        for &t in prefix {
            h = splitmix(h ^ (t as u64).wrapping_mul(31));
        }
        let logits: Vec<f32> = (0..self.vocab)
            .map(|v| {
                let r = splitmix(h ^ (v as u64 + 1000)) % 16;
                let mut x = r as f32 * 0.25;
                if v == EOS {
                    x += self.eos_boost * prefix.len() as f32 - 1.0;
                }
                x
            })
            .collect();
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = logits.iter().map(|x| (x - m).exp()).sum::<f32>().ln() + m;
        logits.iter().map(|x| x - z).collect()
    }
}

struct Mock {
    toy: Toy,
    info: GraphInfo,
    /// Decoder rows run so far (to check that finished sentences are dropped).
    rows_run: usize,
}

impl Mock {
    fn new(toy: Toy) -> Mock {
        Mock {
            toy,
            info: GraphInfo {
                decoder_layers: 1,
                src_vocab: 1000,
                tgt_vocab: toy.vocab,
                max_target_positions: Some(1024),
                ..Default::default()
            },
            rows_run: 0,
        }
    }
}

impl Backend for Mock {
    fn name(&self) -> String {
        "mock".into()
    }
    fn info(&self) -> &GraphInfo {
        &self.info
    }
    fn precision(&self) -> Precision {
        Precision::Fp32
    }
    fn run(&mut self, _: GraphKind, _: &[(&str, &Value)]) -> anyhow::Result<Outputs> {
        anyhow::bail!("the mock runs no graphs")
    }
    fn encode(&mut self, src: ArrayView2<i64>) -> anyhow::Result<EncoderState> {
        let (b, s) = src.dim();
        let out = Array3::from_shape_fn((b, s, 1), |(i, j, _)| src[[i, j]] as f32);
        Ok(EncoderState {
            encoder_out: Value::from_array(out),
            padding_mask: Value::from_array(src.mapv(|t| t == PAD as i64)),
            cross: vec![],
        })
    }
    fn start(&self, enc: &EncoderState) -> anyhow::Result<DecoderState> {
        let empty = Value::from_array(Array2::<f32>::zeros((enc.batch(), 0)));
        Ok(DecoderState {
            step: 0,
            cache: vec![(empty.clone(), empty)],
        })
    }
    fn step(
        &mut self,
        enc: &EncoderState,
        dec: &mut DecoderState,
        prev: ArrayView1<i64>,
    ) -> anyhow::Result<Array2<f32>> {
        let src = enc.encoder_out.to_f32()?.into_dimensionality::<Ix3>()?;
        let hist = dec.cache[0].0.to_f32()?.into_dimensionality::<Ix2>()?;
        let b = prev.len();
        assert_eq!(src.shape()[0], b, "encoder rows");
        assert_eq!(hist.nrows(), b, "decoder rows");
        assert_eq!(hist.ncols(), dec.step);
        let mut new_hist = Array2::<f32>::zeros((b, dec.step + 1));
        let mut out = Array2::<f32>::zeros((b, self.toy.vocab));
        for r in 0..b {
            let s: Vec<i64> = src
                .index_axis(Axis(0), r)
                .iter()
                .map(|&x| x as i64)
                .collect();
            let mut prefix: Vec<i64> = hist.row(r).iter().map(|&x| x as i64).collect();
            prefix.push(prev[r]);
            for (j, &t) in prefix.iter().enumerate() {
                new_hist[[r, j]] = t as f32;
            }
            // The prefix starts with the EOS fed at step 0.
            assert_eq!(prefix[0], EOS as i64);
            let lp = self.toy.lprobs(&s, &prefix[1..]);
            out.row_mut(r).assign(&Array1::from(lp));
        }
        self.rows_run += b;
        dec.cache[0] = (
            Value::from_array(new_hist.clone()),
            Value::from_array(new_hist),
        );
        dec.step += 1;
        Ok(out)
    }
}

/// fairseq's SequenceGenerator for one sentence, written as plainly as
/// possible (full sorts instead of top-k, no batching).
fn reference(toy: &Toy, src: &[i64], opts: &BeamOptions, max_len: usize) -> Vec<Hypothesis> {
    let (beam, v) = (opts.beam, toy.vocab);
    let mut tokens: Vec<Vec<i64>> = vec![vec![]; beam];
    let mut scores: Vec<Vec<f32>> = vec![vec![]; beam];
    let mut finalized: Vec<Hypothesis> = vec![];
    for step in 0..=max_len {
        let mut lp: Vec<Vec<f32>> = tokens.iter().map(|t| toy.lprobs(src, t)).collect();
        for row in &mut lp {
            row[PAD] = f32::NEG_INFINITY;
            row[UNK] -= opts.unkpen as f32;
            if step >= max_len {
                for (i, x) in row.iter_mut().enumerate() {
                    if i != EOS {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            if (step as i64) < opts.min_len {
                row[EOS] = f32::NEG_INFINITY;
            }
        }
        let mut cand: Vec<(f32, usize)> = vec![];
        let rows = if step == 0 { 1 } else { beam };
        for (b, row) in lp.iter().enumerate().take(rows) {
            for (t, &x) in row.iter().enumerate() {
                let s = if step == 0 {
                    x
                } else {
                    x + scores[b][step - 1]
                };
                cand.push((s, b * v + t));
            }
        }
        // torch.topk, ties by lower flat index.
        cand.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        let k = (2 * beam).min(cand.len() - 1);
        cand.truncate(k);
        let is_eos = |c: &(f32, usize)| c.1 % v == EOS && c.0 != f32::NEG_INFINITY;
        for c in cand.iter().take(beam) {
            if is_eos(c) && finalized.len() < beam {
                let b = c.1 / v;
                let mut t = tokens[b].clone();
                t.push(EOS as i64);
                let mut cum = scores[b].clone();
                cum.push(c.0);
                let pos = (0..cum.len())
                    .map(|i| if i == 0 { cum[0] } else { cum[i] - cum[i - 1] })
                    .collect();
                let norm = ((step + 1) as f64).powf(opts.lenpen) as f32;
                finalized.push(Hypothesis {
                    tokens: t,
                    score: if opts.normalize_scores {
                        c.0 / norm
                    } else {
                        c.0
                    },
                    positional_scores: pos,
                });
            }
        }
        if finalized.len() == beam {
            break;
        }
        let active: Vec<(f32, usize)> = cand
            .iter()
            .filter(|c| !is_eos(c))
            .take(beam)
            .copied()
            .collect();
        let (old_t, old_s) = (tokens.clone(), scores.clone());
        for (j, c) in active.iter().enumerate() {
            let b = c.1 / v;
            tokens[j] = old_t[b].clone();
            tokens[j].push((c.1 % v) as i64);
            scores[j] = old_s[b].clone();
            scores[j].push(c.0);
        }
    }
    finalized.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap());
    finalized.truncate(opts.nbest);
    finalized
}

fn random_sources(n: usize, seed: u64) -> Vec<Vec<i64>> {
    (0..n as u64)
        .map(|i| {
            let h = splitmix(seed ^ i);
            let len = 1 + (h % 9) as usize;
            let mut s: Vec<i64> = (0..len)
                .map(|j| 4 + (splitmix(h ^ j as u64) % 50) as i64)
                .collect();
            s.push(EOS as i64);
            s
        })
        .collect()
}

#[test]
fn batched_search_equals_the_plain_reference() {
    let mut cases = 0;
    for seed in 0..24u64 {
        let h = splitmix(seed * 7919);
        let toy = Toy {
            vocab: [6, 9, 17, 40][(h % 4) as usize],
            seed: h,
            eos_boost: [0.2, 0.6, 1.5][(h / 4 % 3) as usize],
        };
        let beam = 1 + (h / 16 % 6) as usize;
        let opts = BeamOptions {
            beam,
            nbest: 1 + (h / 128 % beam as u64) as usize,
            lenpen: [1.0, 0.6, 1.7, 0.0][(h / 1024 % 4) as usize],
            unkpen: [0.0, 0.0, 1.5][(h / 4096 % 3) as usize],
            max_len_a: [0.0, 0.5, 1.2][(h / 16384 % 3) as usize],
            max_len_b: [3, 10, 200][(h / 65536 % 3) as usize],
            min_len: [1, 1, 3][(h / 262144 % 3) as usize],
            normalize_scores: !(h / 1048576).is_multiple_of(5),
        };
        let src = random_sources(23, seed);
        let lens: Vec<usize> = src.iter().map(Vec::len).collect();
        for bs in [1usize, 4, 23] {
            let batching = Batching {
                batch_size: Some(bs),
                required_batch_size_multiple: 1,
                ..Default::default()
            };
            let mut mock = GraphEngine(Mock::new(toy));
            let got = decode_all(&mut mock, &src, None, &opts, &batching, &mut |_, _| {}).unwrap();
            // The reference with each sentence's max_len from its batch's width.
            for batch in plan(&lens, None, &batching).unwrap() {
                let width = batch.iter().map(|&i| lens[i]).max().unwrap();
                let max_len = opts.checked_max_len(width, Some(1024)).unwrap();
                for &i in &batch {
                    let want = reference(&toy, &src[i], &opts, max_len);
                    assert_eq!(
                        got[i], want,
                        "seed {seed}, batch size {bs}, sentence {i}, {opts:?}"
                    );
                    assert_eq!(got[i].len(), opts.nbest);
                    cases += 1;
                }
            }
        }
    }
    eprintln!("{cases} sentences checked");
}

#[test]
fn finished_sentences_leave_the_batch() {
    let toy = Toy {
        vocab: 20,
        seed: 5,
        eos_boost: 0.8,
    };
    let src = random_sources(16, 3);
    let opts = BeamOptions {
        beam: 4,
        ..Default::default()
    };
    let mut mock = GraphEngine(Mock::new(toy));
    let hyps = beam_search(&mut mock, &src, &opts).unwrap();
    let steps: usize = hyps.iter().map(|h| h[0].tokens.len()).max().unwrap();
    // Step 0 runs one row per sentence, then beam rows per live sentence.
    let all_kept = 16 + 16 * 4 * (steps - 1);
    assert!(
        mock.0.rows_run < all_kept,
        "{} rows run, {all_kept} without dropping",
        mock.0.rows_run
    );
}

#[test]
fn semantics_on_hand_made_cases() {
    // A sentence is done as soon as `beam` hypotheses are finalized, even if
    // a live beam could still beat them; EOS is never chosen before min_len;
    // at max_len only EOS is allowed; lenpen counts the EOS.
    let toy = Toy {
        vocab: 12,
        seed: 42,
        eos_boost: 3.0,
    };
    let src = vec![vec![7, 8, 9, EOS as i64]];
    for (min_len, max_len_b) in [(1, 200), (4, 200), (1, 2), (3, 3)] {
        let opts = BeamOptions {
            beam: 3,
            nbest: 3,
            min_len,
            max_len_b,
            ..Default::default()
        };
        let mut mock = GraphEngine(Mock::new(toy));
        let got = beam_search(&mut mock, &src, &opts).unwrap();
        assert_eq!(got[0], reference(&toy, &src[0], &opts, max_len_b as usize));
        for h in &got[0] {
            let len = h.tokens.len();
            assert!(
                len as i64 > min_len,
                "EOS at step {} < min_len {min_len}",
                len - 1
            );
            assert!(len as i64 <= max_len_b + 1);
            assert_eq!(*h.tokens.last().unwrap(), EOS as i64);
            assert!(!h.tokens[..len - 1].contains(&(EOS as i64)));
            let sum: f32 = h.positional_scores.iter().sum();
            assert!((h.score - sum / len as f32).abs() < 1e-5, "{h:?}");
        }
        // best first
        assert!(got[0].windows(2).all(|w| w[0].score >= w[1].score));
    }
    // unkpen lowers <unk>: with a huge penalty it never appears.
    let opts = BeamOptions {
        beam: 4,
        nbest: 4,
        unkpen: 1e6,
        ..Default::default()
    };
    let mut mock = GraphEngine(Mock::new(toy));
    let got = beam_search(&mut mock, &src, &opts).unwrap();
    assert!(got[0].iter().all(|h| !h.tokens.contains(&(UNK as i64))));
    // Invalid options are errors, not panics.
    let bad = BeamOptions {
        beam: 2,
        nbest: 3,
        ..Default::default()
    };
    assert!(beam_search(&mut GraphEngine(Mock::new(toy)), &src, &bad).is_err());
    assert!(beam_search(&mut GraphEngine(Mock::new(toy)), &[], &opts)
        .unwrap()
        .is_empty());
}
