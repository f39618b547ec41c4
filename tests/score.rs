//! `admin-convert score` reproduces fairseq-generate --score-reference of
//! the Admin authors' fork on its own, unfolded checkpoint: H- sentence
//! scores and P- per-token log-probs (natural log) for all 200 sentences.

mod common;
use common::*;
use std::collections::HashMap;

/// id → (H score, P scores) from a fairseq-generate output.
fn parse_reference(text: &str) -> HashMap<usize, (f64, Vec<f64>)> {
    let mut h: HashMap<usize, f64> = HashMap::new();
    let mut p: HashMap<usize, Vec<f64>> = HashMap::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let tag = f.next().unwrap_or("");
        if let Some(id) = tag.strip_prefix("H-") {
            let id: usize = id.parse().expect("id");
            h.insert(id, f.next().expect("score").parse().expect("float"));
        } else if let Some(id) = tag.strip_prefix("P-") {
            let id: usize = id.parse().expect("id");
            let v = f
                .next()
                .expect("scores")
                .split_whitespace()
                .map(|x| x.parse().expect("float"))
                .collect();
            p.insert(id, v);
        }
    }
    h.into_iter()
        .map(|(id, s)| (id, (s, p.remove(&id).expect("P line"))))
        .collect()
}

fn check(model: &str, data: &str, reference: &str, base2: bool, extra: &[&str]) {
    let want = parse_reference(&std::fs::read_to_string(fixture(reference)).expect("read"));
    assert_eq!(want.len(), 200);
    let m = fixture(model);
    let d = fixture(data);
    let mut args = vec![
        "score",
        m.to_str().expect("utf-8"),
        "--data",
        d.to_str().expect("utf-8"),
        "--json",
        "--score-base",
        if base2 { "2" } else { "e" },
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let got = v["scores"].as_array().expect("scores");
    assert_eq!(got.len(), 200);
    let (mut max_h, mut max_p) = (0f64, 0f64);
    for (i, s) in got.iter().enumerate() {
        let (h, p) = &want[&i];
        let score = s["score"].as_f64().expect("score");
        max_h = max_h.max((score - h).abs());
        let pos = s["positional"].as_array().expect("positional");
        assert_eq!(pos.len(), p.len(), "sentence {i}: token count");
        for (x, y) in pos.iter().zip(p) {
            let x = x.as_f64().expect("float");
            // printed with 4 decimals: ours must round to the same value
            // (half a unit of the last digit, plus float noise)
            max_p = max_p.max((x - y).abs());
            assert!(
                (x - y).abs() <= 0.5e-4 + 5e-6,
                "sentence {i}: {x} vs printed {y}"
            );
        }
    }
    assert!(max_h <= 1e-5, "max |ΔH| = {max_h}");
    eprintln!("{model}: max |ΔH| = {max_h:.2e}, max |ΔP| = {max_p:.2e}");
}

#[test]
fn unfolded_admin_fork_reproduces_score_reference() {
    check(
        "admin-fairseq08/checkpoint_best.pt",
        "data-bin-fairseq08",
        "admin-fairseq08/score-reference.txt",
        false,
        &[],
    );
}

#[test]
fn admin_torch_reproduces_score_reference_in_base_2() {
    check(
        "admintorch-fairseq012/checkpoint_best.pt",
        "data-bin",
        "admintorch-fairseq012/score-reference.txt",
        true,
        &[],
    );
}
