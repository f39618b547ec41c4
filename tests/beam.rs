//! Beam search against real fairseq-generate outputs (fixtures), on tract.

mod common;

use admin_convert::data::{BpeMode, Dictionary, IndexedDataset};
use admin_convert::decode::{decode_all, BeamOptions, Batching, Hypothesis};
use admin_convert::export::{self, ExportOptions, Precision};
use admin_convert::runtime::tract::TractBackend;
use admin_convert::runtime::GraphSource;
use common::fixture;
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
    let mut b = backend("postln-fairseq012/checkpoint_best.pt");
    let src = sources("data-bin");
    let dict = Dictionary::read(fixture("data-bin/dict.tgt.txt")).unwrap();
    let opts = BeamOptions { beam: 4, ..Default::default() };
    let batching = Batching { batch_size: Some(64), ..Default::default() };
    let t = std::time::Instant::now();
    let hyps = decode_all(&mut b, &src, None, &opts, &batching, &mut |_, _| {}).unwrap();
    eprintln!("decoded in {:?}", t.elapsed());
    let want = h_lines("postln-fairseq012/generate-best.sacrebleu.txt");
    let mut same = 0;
    let mut maxd: f64 = 0.0;
    for (i, h) in hyps.iter().enumerate() {
        let got = text(&dict, &h[0], Some(BpeMode::SubwordNmt));
        let (score, w) = &want[&i][0];
        if &got == w { same += 1 } else { eprintln!("{i}: got {got:?}\n   want {w:?}") }
        let ours = (h[0].score / std::f32::consts::LN_2) as f64;
        maxd = maxd.max((ours - score).abs());
    }
    eprintln!("same {same}/200, max score diff {maxd:e}");
    assert_eq!(same, 200);
}
