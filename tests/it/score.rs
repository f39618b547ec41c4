//! `admin-convert score` reproduces fairseq-generate --score-reference of
//! the Admin authors' fork on its own, unfolded checkpoint: H- sentence
//! scores and P- per-token log-probs (natural log) for all 200 sentences.

use crate::common::*;

#[test]
fn unfolded_admin_fork_reproduces_score_reference() {
    check_score_reference(
        "admin-fairseq08/checkpoint_best.pt",
        "data-bin-fairseq08",
        "admin-fairseq08/score-reference.txt",
        false,
        &[],
    );
}

#[test]
fn admin_torch_reproduces_score_reference_in_base_2() {
    check_score_reference(
        "admintorch-fairseq012/checkpoint_best.pt",
        "data-bin",
        "admintorch-fairseq012/score-reference.txt",
        true,
        &[],
    );
}

/// The same check through onnxruntime (CPU). Skipped with a note when the
/// library cannot be found, unless ADMIN_CONVERT_REQUIRE_ORT=1 (CI).
#[test]
fn unfolded_admin_fork_on_onnxruntime() {
    if admin_convert::runtime::ort::find_library(None, &[]).is_err() {
        assert_ne!(
            std::env::var("ADMIN_CONVERT_REQUIRE_ORT").as_deref(),
            Ok("1"),
            "onnxruntime required but not found"
        );
        eprintln!("note: onnxruntime not found, skipping");
        return;
    }
    check_score_reference(
        "admin-fairseq08/checkpoint_best.pt",
        "data-bin-fairseq08",
        "admin-fairseq08/score-reference.txt",
        false,
        &["--backend", "ort"],
    );
}
