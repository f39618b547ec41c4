//! `admin-convert export --onnx` end to end: the written graphs pass
//! `onnx.checker.check_model(full_check=True)` and run in Python
//! onnxruntime (tests/check_onnx.py), the exported directory reproduces
//! the Admin fork's --score-reference on tract and onnxruntime, and fp16
//! stays within 2e-2 of fp32.

use crate::common::*;
use std::path::{Path, PathBuf};

fn required(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}

/// The Python that has onnx + onnxruntime: $ADMIN_CONVERT_PYTHON, else ./.venv.
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("ADMIN_CONVERT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = std::process::Command::new(&p)
        .args(["-c", "import onnx, onnxruntime"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(p)
}

fn export(ckpt: &str, dir: &Path, extra: &[&str]) {
    let c = fixture(ckpt);
    let dicts = fixture("data-bin");
    let mut args = vec![
        "export",
        c.to_str().expect("utf-8"),
        "--onnx",
        "-o",
        dir.to_str().expect("utf-8"),
        "--dict-dir",
        dicts.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn graphs_pass_the_onnx_checker_and_run_in_python_onnxruntime() {
    let d = tempfile::tempdir().expect("tempdir");
    export("admin-fairseq08/checkpoint_best.pt", d.path(), &["--fp16"]);
    let Some(py) = python() else {
        assert!(
            !required("ADMIN_CONVERT_REQUIRE_ORT"),
            "python with onnx + onnxruntime required (run scripts/setup-python.sh)"
        );
        eprintln!("note: no python with onnx + onnxruntime; skipping the checker");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/check_onnx.py");
    let o = std::process::Command::new(py)
        .arg(script)
        .arg(d.path())
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("checker ok").count(), 6, "{out}");
    assert_eq!(out.matches("onnxruntime").count(), 2, "{out}");
}

#[test]
fn exported_directory_reproduces_score_reference() {
    let d = tempfile::tempdir().expect("tempdir");
    export("admin-fairseq08/checkpoint_best.pt", d.path(), &[]);
    let dir = d.path().to_str().expect("utf-8");
    check_score_reference(
        dir,
        "data-bin-fairseq08",
        "admin-fairseq08/score-reference.txt",
        false,
        &[],
    );
    if admin_convert::runtime::ort::find_library(None, &[]).is_ok() {
        check_score_reference(
            dir,
            "data-bin-fairseq08",
            "admin-fairseq08/score-reference.txt",
            false,
            &["--backend", "ort"],
        );
    } else {
        assert!(
            !required("ADMIN_CONVERT_REQUIRE_ORT"),
            "onnxruntime required"
        );
    }
}

fn positional(dir: &str, extra: &[&str]) -> Vec<f64> {
    let data = fixture("data-bin-fairseq08");
    let mut args = vec![
        "score",
        dir,
        "--data",
        data.to_str().expect("utf-8"),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    v["scores"]
        .as_array()
        .expect("scores")
        .iter()
        .flat_map(|s| s["positional"].as_array().expect("positional").clone())
        .map(|x| x.as_f64().expect("float"))
        .collect()
}

#[test]
fn fp16_graphs_stay_within_2e_2_of_fp32() {
    let d = tempfile::tempdir().expect("tempdir");
    export(
        "admin-fairseq08/checkpoint_best.pt",
        d.path(),
        &["--fp16", "--fold"],
    );
    let dir = d.path().to_str().expect("utf-8");
    let fp32 = positional(dir, &[]);
    let fp16 = positional(dir, &["--fp16"]);
    assert_eq!(fp32.len(), 2109);
    let max = fp32
        .iter()
        .zip(&fp16)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    eprintln!("fp16 vs fp32: max |Δ log-prob| over 2109 reference tokens = {max:.2e}");
    assert!(max <= 2e-2, "fp16 max |Δ| {max}");
    assert!(max > 0.0, "fp16 graphs must actually run in half precision");
}
