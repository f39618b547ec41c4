//! Helpers shared by the integration tests: fixture paths and running the
//! real binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Run `admin-convert ARGS`, returning its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_admin-convert"))
        .args(args)
        .output()
        .expect("the admin-convert binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a failed run: exit code 2, exactly one line on stderr that
/// starts with `error:` and mentions `needle`, and no panic.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

/// `inspect --json` of a fixture, parsed.
pub fn inspect_json(path: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let p = path.to_str().expect("utf-8 path");
    let mut args = vec!["inspect", p, "--json"];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "inspect failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON")
}

/// id → (H score, P scores) from a fairseq-generate output.
pub fn parse_reference(text: &str) -> HashMap<usize, (f64, Vec<f64>)> {
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

/// Score `model` on `data` with `admin-convert score` and compare with a
/// fairseq-generate --score-reference output: H- within 1e-5, P- equal to
/// the printed 4 decimals (half a unit plus float noise).
pub fn check_score_reference(
    model: &str,
    data: &str,
    reference: &str,
    base2: bool,
    extra: &[&str],
) {
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
                (x - y).abs() <= 0.5e-4 + 1e-5,
                "sentence {i}: {x} vs printed {y}"
            );
        }
    }
    assert!(max_h <= 1e-5, "max |ΔH| = {max_h}");
    eprintln!("{model}: max |ΔH| = {max_h:.2e}, max |ΔP| = {max_p:.2e}");
}
