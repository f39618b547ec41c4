//! fairseq-generate's edge semantics, checked against real fairseq-generate
//! (fairseq 0.12.3.1) outputs on `postln-fairseq012/checkpoint_best.pt`
//! (fixtures/postln-fairseq012/edge/, commands in fixtures/README.md):
//! EOS forced at `max_len` (`--max-len-b 0`: one-token hypotheses), `--min-len`
//! equal to the limit, negative `--lenpen`, `--min-len` and `--max-len-a`
//! written as `-1` (not only `=-1`), and `--min-len` above the length limit
//! refused as fairseq refuses it (its AssertionError "min_len cannot be
//! larger than max_len"), here as one error line with exit 2.

use crate::common::{assert_one_line_error, fixture, run, stderr, stdout};

fn f(rel: &str) -> String {
    fixture(rel).to_str().expect("utf-8 path").to_string()
}

/// `eval` with fairseq-generate's flags; `--expect-fairseq` compares every
/// hypothesis with the fixture (exit 1 if any differs).
fn matches_fairseq(extra: &[&str], name: &str) {
    let expected = f(&format!("postln-fairseq012/edge/generate-{name}.txt"));
    let model = f("postln-fairseq012/checkpoint_best.pt");
    let data = f("data-bin");
    let mut args = vec![
        "eval",
        &model,
        "--data",
        &data,
        "--beam",
        "4",
        "--batch-size",
        "64",
        "--score-base",
        "2",
        "-q",
        "--expect-fairseq",
        &expected,
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
    let out = stdout(&o) + &stderr(&o);
    assert!(
        out.contains("expect-fairseq: 200/200 hypotheses identical"),
        "{extra:?}: {out}"
    );
}

#[test]
fn eos_forced_at_max_len() {
    // max_len 0: every hypothesis is EOS alone, one per sentence.
    matches_fairseq(&["--max-len-b", "0", "--min-len", "0"], "maxlenb0_minlen0");
    // min_len == max_len == 3: exactly three tokens and EOS.
    matches_fairseq(&["--max-len-b", "3", "--min-len", "3"], "maxlenb3_minlen3");
    // A negative a: max_len = int(-0.5·S + 8) for the batch's width S.
    matches_fairseq(
        &["--max-len-a", "-0.5", "--max-len-b", "8", "--min-len", "0"],
        "maxlena-0.5",
    );
}

#[test]
fn negative_numbers_as_fairseq_takes_them() {
    matches_fairseq(&["--lenpen", "-1", "--remove-bpe"], "lenpen-1");
    matches_fairseq(&["--min-len", "-1", "--remove-bpe"], "minlen-1");
}

#[test]
fn min_len_above_max_len_is_refused_like_fairseq() {
    let model = f("postln-fairseq012/checkpoint_best.pt");
    let data = f("data-bin");
    for (extra, tail) in [
        (&["--max-len-b", "0"][..], "maxlenb0"),
        (
            &["--max-len-b", "3", "--min-len", "5"][..],
            "maxlenb3_minlen5",
        ),
        (&["--max-len-b", "-2", "--min-len", "0"][..], "maxlenb-2"),
    ] {
        let theirs = std::fs::read_to_string(fixture(&format!(
            "postln-fairseq012/edge/generate-{tail}.stderr-tail.txt"
        )))
        .expect("fixture");
        assert!(theirs.contains("min_len cannot be larger than max_len"));
        let mut args = vec!["eval", &model, "--data", &data, "--beam", "4", "-q"];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert_one_line_error(&o, "min_len cannot be larger than max_len");
        assert!(stderr(&o).contains("--min-len"), "{}", stderr(&o));
    }
}

#[test]
fn numeric_flags_out_of_range_are_one_line_errors() {
    let model = f("postln-fairseq012/checkpoint_best.pt");
    let data = f("data-bin");
    for (flag, value) in [
        ("--beam", "0"),
        ("--beam", "1000000000"),
        ("--nbest", "-1"),
        ("--batch-size", "0"),
        ("--max-tokens", "0"),
        ("--max-tokens", "99999999999999999999"),
        ("--threads", "0"),
        ("--threads", "100000"),
        ("--required-batch-size-multiple", "0"),
        ("--lenpen", "nan"),
        ("--lenpen", "inf"),
        ("--heads", "0"),
    ] {
        let o = run(&["eval", &model, "--data", &data, flag, value]);
        assert_one_line_error(&o, flag);
    }
    let out = tempfile::tempdir().expect("tempdir");
    let o_path = out.path().join("x.safetensors");
    let o_str = o_path.to_str().expect("utf-8");
    for (flag, value) in [
        ("--probe-sentences", "0"),
        ("--probe-sentences", "1000000000000"),
        ("--threads", "0"),
        ("--tolerance", "-1"),
    ] {
        let o = run(&["fold", &model, "-o", o_str, flag, value]);
        assert_one_line_error(&o, flag);
        assert!(!o_path.exists());
    }
    let o = run(&["score", &model, "--data", &data, "--batch-size", "0"]);
    assert_one_line_error(&o, "--batch-size");
}

#[test]
fn usage_errors_are_one_line() {
    for args in [
        &["inspect"][..],
        &["frobnicate"][..],
        &["inspect", "a.pt", "--no-such-flag"][..],
        &["eval", "m.pt", "--src", "a", "--data", "b"][..],
        &["fold", "x.pt"][..],
    ] {
        let o = run(args);
        assert_one_line_error(&o, "");
        assert!(!stderr(&o).contains("Usage:"), "{}", stderr(&o));
    }
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("Usage:"));
}
