//! Corpora of any size and sharded runs: `translate` (streaming, bounded
//! buffer) prints what `eval` prints; `eval` / `translate` / `score` with
//! `--num-shards 3 --shard-id I`, merged by `merge-shards`, equal the
//! unsharded run on every fixture model, BLEU included.

use crate::common::{assert_one_line_error, fixture, run, stderr, stdout};
use std::io::Write;
use std::process::{Command, Stdio};

fn f(rel: &str) -> String {
    fixture(rel).to_str().expect("utf-8 path").to_string()
}

/// (checkpoint, binarized test set) of every fixture model.
fn models() -> Vec<(String, String)> {
    [
        ("admin-fairseq08/checkpoint_best.pt", "data-bin-fairseq08"),
        ("postln-fairseq012/checkpoint_best.pt", "data-bin"),
        ("admintorch-fairseq012/checkpoint_best.pt", "data-bin"),
    ]
    .iter()
    .map(|(m, d)| (f(m), f(d)))
    .collect()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed ({:?}):\n{}",
        o.status.code(),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs `admin-convert ARGS` with `input` on stdin; its stdout.
fn ok_stdin(args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_admin-convert"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("writes stdin");
    let o = child.wait_with_output().expect("waits");
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
    stdout(&o)
}

/// Writes each shard's output to a temp file, merges them (files given in
/// reverse order), returns (merged stdout, merge's summary on stderr).
fn merge(outputs: &[String], extra: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut args = vec!["merge-shards".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    for (i, text) in outputs.iter().enumerate().rev() {
        let p = dir.path().join(format!("shard{i}.txt"));
        std::fs::write(&p, text).expect("writes a shard");
        args.push(p.to_str().expect("utf-8").to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&args);
    assert!(o.status.success(), "merge failed: {}", stderr(&o));
    (stdout(&o), stderr(&o))
}

/// The BLEU part of a `Generate … : BLEU4 = …` line.
fn bleu_line(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("Generate "))
        .unwrap_or_else(|| panic!("no BLEU line in {text}"));
    line.split_once(": ").expect("a colon").1.to_string()
}

/// Three shards of `cmd` (eval / translate / score args), each different
/// from the whole, merged equal to the unsharded fairseq-format output.
fn check_sharded(base: &[&str]) -> (String, String) {
    let whole = ok(base);
    let shards: Vec<String> = (0..3)
        .map(|i| {
            let id = i.to_string();
            let mut args = base.to_vec();
            args.extend(["--num-shards", "3", "--shard-id", &id]);
            ok(&args)
        })
        .collect();
    for s in &shards {
        assert!(
            !s.is_empty() && s.len() < whole.len(),
            "a real share: {base:?}"
        );
    }
    let (merged, summary) = merge(&shards, &[]);
    assert_eq!(merged, whole, "merged shards differ from one run: {base:?}");
    (whole, summary)
}

#[test]
fn sharded_eval_merged_equals_unsharded_on_every_fixture() {
    for (model, data) in models() {
        let base = [
            "eval",
            model.as_str(),
            "--data",
            &data,
            "--beam",
            "4",
            "--batch-size",
            "16",
            "--max-len-a",
            "1.2",
            "--max-len-b",
            "10",
            "--remove-bpe",
            "--fairseq-format",
        ];
        check_sharded(&base);
        // BLEU of the merge = BLEU of the unsharded run (summary on stdout with -o).
        let whole_summary = {
            let dir = tempfile::tempdir().expect("a temp dir");
            let out = dir.path().join("hyps.txt");
            let mut args = base.to_vec();
            args.extend(["-o", out.to_str().expect("utf-8")]);
            ok(&args)
        };
        let shards: Vec<String> = (0..3)
            .map(|i| {
                let id = i.to_string();
                let mut args = base.to_vec();
                args.extend(["--num-shards", "3", "--shard-id", &id]);
                ok(&args)
            })
            .collect();
        let (_, summary) = merge(&shards, &[]);
        assert_eq!(bleu_line(&summary), bleu_line(&whole_summary), "{model}");
    }
}

#[test]
fn sharded_eval_without_bpe_removal_and_nbest_merges_exactly() {
    let (model, data) = &models()[1];
    let base = [
        "eval",
        model.as_str(),
        "--data",
        data,
        "--beam",
        "4",
        "--nbest",
        "2",
        "--score-base",
        "2",
        "--batch-size",
        "24",
        "--fairseq-format",
    ];
    let (whole, summary) = check_sharded(&base);
    assert!(whole.contains("D-0\t"), "base-2 output has D- lines");
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("hyps.txt");
    let mut args = base.to_vec();
    args.extend(["-o", out.to_str().expect("utf-8")]);
    assert_eq!(bleu_line(&summary), bleu_line(&ok(&args)));
}

#[test]
fn sharded_score_merged_equals_unsharded() {
    for (model, data) in models() {
        check_sharded(&["score", &model, "--data", &data, "--batch-size", "16"]);
    }
}

#[test]
fn translate_prints_evals_hypotheses_from_file_and_stdin() {
    let src = f("corpus/bpe/test.src");
    let input = std::fs::read(&src).expect("reads the source");
    for (model, _) in models() {
        let dict = if model.contains("fairseq08") {
            f("data-bin-fairseq08")
        } else {
            f("data-bin")
        };
        let common = ["--dict-dir", &dict, "--beam", "4", "--batch-size", "16"];
        let mut eval = vec!["eval", &model, "--src", &src, "--remove-bpe"];
        eval.extend(common);
        let want = ok(&eval);
        assert_eq!(want.lines().count(), 200);
        for buffer in ["1", "37", "10000"] {
            let mut t = vec!["translate", &model, "--remove-bpe", "--buffer-size", buffer];
            t.extend(common);
            assert_eq!(
                ok_stdin(&t, &input),
                want,
                "{model}, stdin, buffer {buffer}"
            );
        }
        let mut t = vec!["translate", &model, &src, "--remove-bpe"];
        t.extend(common);
        assert_eq!(ok(&t), want, "{model}, file");
    }
}

#[test]
fn translate_fairseq_format_and_shards() {
    let (model, data) = &models()[2];
    let src = f("corpus/bpe/test.src");
    let common = [
        "--dict-dir",
        data.as_str(),
        "--beam",
        "5",
        "--nbest",
        "3",
        "--batch-size",
        "8",
        "--fairseq-format",
    ];
    let mut eval = vec!["eval", model.as_str(), "--src", &src];
    eval.extend(common);
    let want = ok(&eval);
    let mut t = vec!["translate", model.as_str(), &src, "--buffer-size", "50"];
    t.extend(common);
    assert_eq!(ok(&t), want, "S-/H-/P- lines as eval prints them");
    let (merged, _) = {
        let shards: Vec<String> = (0..3)
            .map(|i| {
                let id = i.to_string();
                let mut args = t.clone();
                args.extend(["--num-shards", "3", "--shard-id", &id]);
                ok(&args)
            })
            .collect();
        merge(&shards, &[])
    };
    assert_eq!(merged, want);
}

#[test]
fn merge_shards_rejects_a_missing_or_repeated_shard() {
    let (model, data) = &models()[1];
    let run_eval = |i: &str| {
        ok(&[
            "eval",
            model,
            "--data",
            data,
            "--beam",
            "2",
            "--batch-size",
            "16",
            "--num-shards",
            "3",
            "--shard-id",
            i,
        ])
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let p0 = dir.path().join("s0");
    let p1 = dir.path().join("s1");
    std::fs::write(&p0, run_eval("0")).expect("writes");
    std::fs::write(&p1, run_eval("1")).expect("writes");
    let (s0, s1) = (p0.to_str().expect("utf-8"), p1.to_str().expect("utf-8"));
    assert_one_line_error(&run(&["merge-shards", s0, s1]), "in none of the files");
    assert_one_line_error(&run(&["merge-shards", s0, s0]), "in both");
    let bad = run(&[
        "eval",
        model,
        "--data",
        data,
        "--num-shards",
        "3",
        "--shard-id",
        "3",
    ]);
    assert_one_line_error(&bad, "--shard-id");
}
