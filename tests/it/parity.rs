//! The user's parity check, end to end on the Admin authors' checkpoint:
//! original (unfolded) vs folded vs exported ONNX on tract and onnxruntime
//! vs fp16, all decoded with beam 4 and compared with fairseq-generate.

use crate::common::*;

fn f(rel: &str) -> String {
    fixture(rel).to_str().expect("utf-8").to_string()
}

fn eval_json(model: &str, extra: &[&str]) -> serde_json::Value {
    let data = f("data-bin-fairseq08");
    let mut args = vec![
        "eval",
        model,
        "--data",
        &data,
        "--beam",
        "4",
        "--remove-bpe",
        "--json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "eval {args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("json")
}

const BEST: &str =
    "BLEU4 = 92.18, 98.2/93.8/90.5/86.6 (BP=1.000, ratio=1.013, syslen=1753, reflen=1731)";

#[test]
fn original_folded_onnx_and_fp16_agree() {
    let d = tempfile::tempdir().expect("tempdir");
    let folded = d.path().join("folded.safetensors");
    let onnx = d.path().join("onnx");
    let (fo, on) = (
        folded.to_str().expect("utf-8").to_string(),
        onnx.to_str().expect("utf-8").to_string(),
    );
    let o = run(&[
        "fold",
        &f("admin-fairseq08/checkpoint_best.pt"),
        "-o",
        &fo,
        "--dict-dir",
        &f("data-bin"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["export", &fo, "--onnx", "--fp16", "-o", &on]);
    assert!(o.status.success(), "{}", stderr(&o));

    // The folded model, decoded by us, equals the unfolded fork's decode and
    // stock fairseq 0.12's decode of the same folded file.
    let generate = f("admin-fairseq08/generate-best.txt");
    let stock = f("folded/admin-fairseq08-folded.generate-fairseq012.txt");
    for expect in [&generate, &stock] {
        let j = eval_json(&fo, &["--expect-fairseq", expect]);
        assert_eq!(j["scores"]["bleu"]["string"], BEST);
        assert_eq!(
            j["expect_fairseq"]["identical"], 200,
            "{}",
            j["expect_fairseq"]
        );
    }
    // Original vs exported ONNX on tract: same 200 hypotheses.
    let j = eval_json(
        &f("admin-fairseq08/checkpoint_best.pt"),
        &["--compare", &on],
    );
    assert_eq!(j["compare"]["identical"], 200, "{}", j["compare"]);
    // Sentence scores are averages of log-probs: the log-prob bound of tol.rs.
    assert!(j["compare"]["max_abs_score_diff"].as_f64().expect("diff") < crate::tol::LOGPROB);
    // onnxruntime (when present; required in CI).
    if admin_convert::runtime::ort::find_library(None, &[]).is_ok() {
        let j = eval_json(&on, &["--backend", "ort", "--expect-fairseq", &generate]);
        assert_eq!(
            j["expect_fairseq"]["identical"], 200,
            "{}",
            j["expect_fairseq"]
        );
    } else {
        assert_ne!(
            std::env::var("ADMIN_CONVERT_REQUIRE_ORT").as_deref(),
            Ok("1")
        );
    }
    // fp16: differences are reported, not hidden.
    let j = eval_json(&on, &["--compare", &on, "--compare-fp16"]);
    let same = j["compare"]["identical"].as_u64().expect("identical");
    eprintln!(
        "fp16 vs fp32: {same}/200 identical, max |Δ score| {}, fp16 {}",
        j["compare"]["max_abs_score_diff"], j["compare"]["scores"]["bleu"]["string"]
    );
    assert!(same >= 190, "fp16 diverges on {} sentences", 200 - same);
    assert!(j["compare"]["max_abs_score_diff"].as_f64().expect("diff") > 0.0);
}
