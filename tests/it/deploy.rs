//! Deployment formats run in their real runtimes (CPU):
//!
//! - `export --ct2`: every fixture family decoded by the `ctranslate2`
//!   Python package (tests/check_ct2.py) gives fairseq-generate's
//!   hypotheses for all 200 test sentences: beam 4 with lenpen 1 and 0.6,
//!   and greedy. int8 / float16 agreement is reported, not asserted.
//! - `fold -o X.pt`: `torch.load(weights_only=True)` reads it, ties are
//!   one storage, `ct2-fairseq-converter` converts it without
//!   `--unsafe_deserialization`, and stock fairseq-generate decodes it
//!   identically (tests/check_fairseq_pt.py; needs torch + fairseq).
//!
//! - `export --hf`: transformers' `generate` gives the same hypotheses
//!   (tests/check_hf.py; needs torch + transformers).
//! - `export --ct2` / `--hf` refuse the ReZero fork (no LayerNorm, which
//!   neither runtime's model class can leave out) with one line.
//!
//! ctranslate2 comes from `.venv` ($ADMIN_CONVERT_PYTHON); torch, stock
//! fairseq 0.12 and transformers from `.venv-torch`
//! ($ADMIN_CONVERT_TORCH_PYTHON), both made by scripts/setup-python.sh, so
//! CI runs every test here. With ADMIN_CONVERT_REQUIRE_ORT=1 (as CI sets) a
//! missing package fails the test; otherwise it is skipped with a note.

use crate::common::*;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of `.venv` ($ADMIN_CONVERT_PYTHON): onnx, ctranslate2.
fn ort_python() -> PathBuf {
    std::env::var_os("ADMIN_CONVERT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

/// The Python of `.venv-torch` ($ADMIN_CONVERT_TORCH_PYTHON): torch,
/// fairseq 0.12, transformers, ctranslate2.
fn torch_python() -> PathBuf {
    std::env::var_os("ADMIN_CONVERT_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-torch/bin/python"))
}

/// `py` when it imports `modules`; otherwise the test fails when
/// ADMIN_CONVERT_REQUIRE_ORT=1 (CI) and is skipped with a note when not.
fn python_with(py: PathBuf, modules: &str) -> Option<PathBuf> {
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var("ADMIN_CONVERT_REQUIRE_ORT").as_deref() != Ok("1"),
        "{} cannot import {modules} (ADMIN_CONVERT_REQUIRE_ORT=1; run scripts/setup-python.sh)",
        py.display()
    );
    eprintln!("note: {} cannot import {modules}; skipping", py.display());
    None
}

/// One fixture family: checkpoint, dictionaries and reference decodes
/// (file, beam, lenpen, scores in base 2).
struct Family {
    ckpt: &'static str,
    dicts: &'static str,
    refs: &'static [(&'static str, u32, f32, bool)],
}

const FAMILIES: &[Family] = &[
    Family {
        ckpt: "admin-fairseq08",
        dicts: "data-bin-fairseq08",
        refs: &[
            ("generate-best.txt", 4, 1.0, false),
            ("generate-best.lenpen06.txt", 4, 0.6, false),
            ("generate-best.beam1.txt", 1, 1.0, false),
        ],
    },
    Family {
        ckpt: "admintorch-fairseq012",
        dicts: "data-bin",
        refs: &[
            ("generate-best.txt", 4, 1.0, true),
            ("generate-best.lenpen06.txt", 4, 0.6, true),
            ("generate-best.beam1.txt", 1, 1.0, true),
        ],
    },
    Family {
        ckpt: "admin-deepnet-fairseq08",
        dicts: "data-bin-deepnet-fairseq08",
        refs: &[
            ("generate-best.txt", 4, 0.6, false),
            ("generate-best.lenpen1.txt", 4, 1.0, false),
            ("generate-best.beam1.txt", 1, 0.6, false),
        ],
    },
    // The fork's `--init-type rezero_postln`: folds to a Post-LN model.
    Family {
        ckpt: "admin-rezero-postln-fairseq08",
        dicts: "data-bin-fairseq08",
        refs: &[
            ("generate-best.txt", 4, 0.6, false),
            ("generate-best.lenpen1.txt", 4, 1.0, false),
            ("generate-best.beam1.txt", 1, 0.6, false),
        ],
    },
    Family {
        ckpt: "postln-fairseq012",
        dicts: "data-bin",
        refs: &[
            ("generate-best.txt", 4, 1.0, true),
            ("generate-best.lenpen06.txt", 4, 0.6, true),
            ("generate-best.beam1.txt", 1, 1.0, true),
        ],
    },
    // Upstream fairseq 0.12.2 (shadow tensors ignored): its one reference decode.
    Family {
        ckpt: "postln-fairseq0122",
        dicts: "data-bin",
        refs: &[("generate-best.sacrebleu.txt", 4, 1.0, true)],
    },
];

fn export_ct2(f: &Family, dir: &Path, quant: &str) {
    let c = fixture(&format!("{}/checkpoint_best.pt", f.ckpt));
    let d = fixture(f.dicts);
    let o = run(&[
        "export",
        c.to_str().expect("utf-8"),
        "--ct2",
        "--quantization",
        quant,
        "-o",
        dir.to_str().expect("utf-8"),
        "--dict-dir",
        d.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("fold check"), "{}", stdout(&o));
}

/// Run tests/check_ct2.py; returns its JSON report.
fn check_ct2(
    py: &Path,
    dir: &Path,
    reference: &Path,
    r: &(&str, u32, f32, bool),
) -> serde_json::Value {
    let mut cmd = std::process::Command::new(py);
    cmd.arg(root().join("tests/check_ct2.py"))
        .arg(dir)
        .arg(fixture("corpus/bpe/test.src"))
        .arg(reference)
        .args(["--beam", &r.1.to_string(), "--lenpen", &r.2.to_string()]);
    if r.3 {
        cmd.arg("--base2");
    }
    let o = cmd.output().expect("python runs");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn ct2_export_decodes_like_fairseq_generate_for_every_family() {
    let Some(py) = python_with(ort_python(), "ctranslate2") else {
        return;
    };
    for f in FAMILIES {
        let d = tempfile::tempdir().expect("tempdir");
        export_ct2(f, d.path(), "float32");
        for r in f.refs {
            let rep = check_ct2(&py, d.path(), &fixture(&format!("{}/{}", f.ckpt, r.0)), r);
            eprintln!("{} {} (beam {}, lenpen {}): {rep}", f.ckpt, r.0, r.1, r.2);
            assert_eq!(rep["agree"], rep["total"], "{} {}: {rep}", f.ckpt, r.0);
            assert_eq!(rep["total"], 200);
            // The same hypotheses rescored by CTranslate2's teacher forcing:
            // fairseq's scores to float32 accumulation error.
            let forced = rep["max_forced_score_diff"].as_f64().expect("number");
            assert!(
                forced < 1e-4,
                "{} {}: forced score diff {forced}",
                f.ckpt,
                r.0
            );
            // CTranslate2's beam-search scores are looser than its own
            // teacher forcing of the same tokens (2.7e-3 on
            // admin-rezero-postln-fairseq08 sentence 86, lenpen 0.6).
            let diff = rep["max_score_diff"].as_f64().expect("number");
            assert!(diff < 5e-3, "{} {}: score diff {diff}", f.ckpt, r.0);
        }
    }
}

#[test]
fn ct2_quantized_exports_run_and_report_agreement() {
    let Some(py) = python_with(ort_python(), "ctranslate2") else {
        return;
    };
    let f = &FAMILIES[0];
    for q in ["int8", "float16", "int8_float32"] {
        let d = tempfile::tempdir().expect("tempdir");
        export_ct2(f, d.path(), q);
        let r = &f.refs[0];
        let rep = check_ct2(&py, d.path(), &fixture(&format!("{}/{}", f.ckpt, r.0)), r);
        // Reported, not asserted: quantization may change a few hypotheses.
        eprintln!(
            "{} --quantization {q}: {}/{} agree",
            f.ckpt, rep["agree"], rep["total"]
        );
        assert_eq!(rep["total"], 200);
    }
}

#[test]
fn ct2_export_refuses_a_missing_dictionary_and_a_bad_quantization() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = fixture("postln-fairseq012/checkpoint_best.pt");
    let out = d.path().join("m");
    let o = run(&[
        "export",
        c.to_str().expect("utf-8"),
        "--ct2",
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--dict-dir"), "{}", stderr(&o));
    let dicts = fixture("data-bin");
    let o = run(&[
        "export",
        c.to_str().expect("utf-8"),
        "--ct2",
        "--quantization",
        "int4",
        "-o",
        out.to_str().expect("utf-8"),
        "--dict-dir",
        dicts.to_str().expect("utf-8"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("int8_float16"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn fold_pt_loads_in_stock_fairseq_torch_weights_only_and_ct2_converter() {
    let Some(py) = python_with(torch_python(), "torch, fairseq, ctranslate2") else {
        return;
    };
    // check_fairseq_pt.py decodes with beam 4, lenpen 1.
    for f in FAMILIES {
        let r = f.refs.iter().find(|r| r.1 == 4 && r.2 == 1.0).expect("ref");
        let (ckpt, dicts, reference, base2) = (f.ckpt, f.dicts, r.0, r.3);
        let d = tempfile::tempdir().expect("tempdir");
        let out = d.path().join("folded.pt");
        let c = fixture(&format!("{ckpt}/checkpoint_best.pt"));
        let o = run(&[
            "fold",
            c.to_str().expect("utf-8"),
            "-o",
            out.to_str().expect("utf-8"),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut cmd = std::process::Command::new(&py);
        cmd.arg(root().join("tests/check_fairseq_pt.py"))
            .arg(&out)
            .arg(fixture(dicts))
            .arg(fixture(&format!("{ckpt}/{reference}")))
            .arg(d.path().join("ct2"));
        if base2 {
            cmd.arg("--base2");
        }
        let o = cmd.output().expect("python runs");
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!("{ckpt}: {text}");
        assert!(text.contains("fairseq-generate: 200/200"), "{text}");
    }
}

/// `export --hf` loads with `AutoModelForSeq2SeqLM.from_pretrained` and its
/// `generate` gives fairseq-generate's hypotheses (tests/check_hf.py).
#[test]
fn hf_export_generates_like_fairseq_for_every_family() {
    let Some(py) = python_with(torch_python(), "torch, transformers") else {
        return;
    };
    for f in FAMILIES {
        let d = tempfile::tempdir().expect("tempdir");
        let out = d.path().join("hf");
        let c = fixture(&format!("{}/checkpoint_best.pt", f.ckpt));
        let dicts = fixture(f.dicts);
        let o = run(&[
            "export",
            c.to_str().expect("utf-8"),
            "--hf",
            "-o",
            out.to_str().expect("utf-8"),
            "--dict-dir",
            dicts.to_str().expect("utf-8"),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        for r in f.refs {
            let o = std::process::Command::new(&py)
                .arg(root().join("tests/check_hf.py"))
                .arg(&out)
                .arg(fixture("corpus/bpe/test.src"))
                .arg(fixture(&format!("{}/{}", f.ckpt, r.0)))
                .args(["--beam", &r.1.to_string(), "--lenpen", &r.2.to_string()])
                .output()
                .expect("python runs");
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            assert!(
                o.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&o.stderr)
            );
            let rep: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
            eprintln!("{} {} hf: {rep}", f.ckpt, r.0);
            assert_eq!(rep["class"], "MarianMTModel");
            assert_eq!(rep["agree"], 200, "{} {}: {rep}", f.ckpt, r.0);
        }
    }
}

/// The ReZero fork folds to a model without LayerNorm, which neither a
/// CTranslate2 Transformer nor a Marian model can hold: both exports refuse
/// it with one line, a non-zero exit and nothing at the output path.
#[test]
fn ct2_and_hf_exports_refuse_the_layernorm_free_rezero_fork() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = fixture("admin-rezero-fairseq08/checkpoint_best.pt");
    let dicts = fixture("data-bin-fairseq08");
    for format in ["--ct2", "--hf"] {
        let out = d.path().join(format.trim_start_matches('-'));
        let o = run(&[
            "export",
            c.to_str().expect("utf-8"),
            format,
            "-o",
            out.to_str().expect("utf-8"),
            "--dict-dir",
            dicts.to_str().expect("utf-8"),
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{format}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{format}: {err}");
        assert!(!out.exists(), "{format} left {}", out.display());
        eprintln!("{format}: {}", err.trim());
    }
    assert_eq!(std::fs::read_dir(d.path()).expect("dir").count(), 0);
}
