//! The Admin authors' fork's own layouts (fixtures/admin-deepnet-fairseq08/,
//! fixtures/admin-rezero-fairseq08/, read their NOTES.md): DeepNet with bare
//! `q/k/v_proj_weight` + fused `in_proj_bias` and α derived from the layer
//! counts, ReZero with one `rezero_weight` per layer and no LayerNorm, and
//! ReZero with Post-LN kept (fixtures/admin-rezero-postln-fairseq08/).
//! Every command against what the fork itself printed or wrote.

use crate::average::assert_bit_identical;
use crate::common::*;
use crate::eval::{assert_same_as_fairseq, tagged};
use serde_json::Value;
use std::path::{Path, PathBuf};

const DEEPNET: &str = "admin-deepnet-fairseq08";
const REZERO: &str = "admin-rezero-fairseq08";
const REZERO_POSTLN: &str = "admin-rezero-postln-fairseq08";

/// The fixture folder and the data-bin its decodes used.
fn data_of(dir: &str) -> &'static str {
    if dir == DEEPNET {
        "data-bin-deepnet-fairseq08"
    } else {
        "data-bin-fairseq08"
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs the binary, asserts success, returns stdout.
fn ok(args: &[&str]) -> String {
    ok_both(args).0
}

/// Runs the binary, asserts success, returns (stdout, stderr).
fn ok_both(args: &[&str]) -> (String, String) {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed ({:?}): {}",
        o.status.code(),
        stderr(&o)
    );
    (stdout(&o), stderr(&o))
}

/// `eval MODEL --data DATA` with the fork's decoding flags, fairseq format.
fn eval_fork_flags(model: &Path, data: &Path, extra: &[&str]) -> String {
    eval_fork_flags_both(model, data, extra).0
}

/// [`eval_fork_flags`], also returning the summary (stderr).
fn eval_fork_flags_both(model: &Path, data: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "eval",
        s(model),
        "--data",
        s(data),
        "--beam",
        "4",
        "--lenpen",
        "0.6",
        "--batch-size",
        "64",
        "--remove-bpe",
        "--fairseq-format",
    ];
    args.extend_from_slice(extra);
    ok_both(&args)
}

#[test]
fn inspect_names_family_and_layout() {
    let j = inspect_json(&fixture(&format!("{DEEPNET}/checkpoint_best.pt")), &[]);
    assert_eq!(j["family"], "deep-net");
    assert_eq!(j["attention_layout"], "bare");
    assert!(j["naming"].as_str().unwrap().contains("q/k/v_proj_weight"));
    assert_eq!(
        (j["src_vocab"].as_u64(), j["tgt_vocab"].as_u64()),
        (Some(88), Some(64))
    );
    assert_eq!(j["share_all_embeddings"], false);
    assert_eq!(j["share_decoder_input_output_embed"], true);
    // α from N = 3, M = 2 (NOTES.md): every sublayer of a stack the same.
    let scales = j["scales"].as_array().expect("scales");
    assert_eq!(scales.len(), 3 * 2 + 2 * 3);
    for sc in scales {
        let want = if sc["sublayer"].as_str().unwrap().starts_with("encoder") {
            0.81 * (3f64.powi(4) * 2.0).powf(1.0 / 16.0)
        } else {
            6f64.powf(0.25)
        };
        assert_eq!(sc["kind"], "omega");
        assert!((sc["mean"].as_f64().unwrap() - want).abs() < 1e-6, "{sc}");
    }

    let j = inspect_json(&fixture(&format!("{REZERO}/checkpoint_best.pt")), &[]);
    assert_eq!(j["family"], "re-zero");
    assert_eq!(j["attention_layout"], "fused");
    assert_eq!(j["init_type"], "rezero");
    let scales = j["scales"].as_array().expect("scales");
    assert_eq!(scales.len(), 2 * 2 + 2 * 3);
    // One gate per layer, shared by that layer's sublayers.
    let gate = |name: &str| {
        scales
            .iter()
            .find(|s| s["sublayer"] == name)
            .map(|s| s["mean"].as_f64().unwrap())
            .unwrap()
    };
    assert!(scales.iter().all(|s| s["kind"] == "gate"));
    assert_eq!(gate("encoder.1.self_attn"), gate("encoder.1.ffn"));
    assert_eq!(gate("decoder.0.self_attn"), gate("decoder.0.cross_attn"));
    assert_eq!(gate("decoder.0.self_attn"), gate("decoder.0.ffn"));
    assert_ne!(gate("decoder.0.ffn"), gate("decoder.1.ffn"));
}

/// Token-identical to the fork's fairseq-generate, best and averaged, with
/// the summary's BLEU equal to the one the fork printed.
#[test]
fn eval_matches_the_forks_generate() {
    for (dir, bleu_best, bleu_avg) in [
        (
            DEEPNET,
            "BLEU4 = 97.79, 99.7/98.6/97.4/96.2 (BP=0.998, ratio=0.998, syslen=1728, reflen=1731)",
            "BLEU4 = 98.13, 99.7/98.8/97.7/96.6 (BP=0.999, ratio=0.999, syslen=1730, reflen=1731)",
        ),
        (
            REZERO,
            "BLEU4 = 93.13, 99.1/94.9/91.4/87.9 (BP=0.999, ratio=0.999, syslen=1729, reflen=1731)",
            "BLEU4 = 92.28, 99.2/94.2/90.3/86.5 (BP=0.998, ratio=0.998, syslen=1728, reflen=1731)",
        ),
    ] {
        let data = fixture(data_of(dir));
        for (ckpt, want, bleu) in [
            ("checkpoint_best.pt", "generate-best.txt", bleu_best),
            ("averaged_last5.pt", "generate-avg5.txt", bleu_avg),
        ] {
            let expect = fixture(&format!("{dir}/{want}"));
            let (out, summary) = eval_fork_flags_both(
                &fixture(&format!("{dir}/{ckpt}")),
                &data,
                &["--expect-fairseq", s(&expect)],
            );
            assert_same_as_fairseq(&out, &format!("{dir}/{want}"));
            let theirs = std::fs::read_to_string(&expect).unwrap();
            assert_eq!(tagged(&out, "S"), tagged(&theirs, "S"), "{dir}/{ckpt}");
            assert_eq!(tagged(&out, "T"), tagged(&theirs, "T"), "{dir}/{ckpt}");
            let all = format!("{out}{summary}");
            assert!(
                all.contains(&format!("beam=4: {bleu}")),
                "{dir}/{ckpt}:\n{summary}"
            );
            assert!(all.contains("200/200 hypotheses identical"), "{dir}/{ckpt}");
        }
    }
}

/// `average --last 5` sums 60, 59, …, 56 like the fork's script: bit for bit
/// (the uninitialised `embed_positions._float_tensor` dummies included: their
/// average is as deterministic as any other tensor's).
#[test]
fn average_equals_the_forks_average() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in [DEEPNET, REZERO] {
        let out = tmp.path().join(format!("{dir}.pt"));
        let d = fixture(dir);
        ok(&["average", "--last", "5", s(&d), "-o", s(&out), "-q"]);
        assert_bit_identical(&out, &fixture(&format!("{dir}/averaged_last5.pt")));
        // Explicit inputs in the fork's order give the same file.
        let inputs: Vec<PathBuf> = (56..=60)
            .rev()
            .map(|e| fixture(&format!("{dir}/checkpoint{e}.pt")))
            .collect();
        let out2 = tmp.path().join(format!("{dir}.safetensors"));
        let mut args = vec!["average"];
        args.extend(inputs.iter().map(|p| s(p)));
        args.extend(["-o", s(&out2), "-q"]);
        ok(&args);
        assert_bit_identical(&out2, &fixture(&format!("{dir}/averaged_last5.pt")));
    }
}

fn fold_json(ckpt: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["fold", s(ckpt), "-o", s(out), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args)).expect("fold --json")
}

/// `fold` within the tool's 1e-4 bar on the 200 test sentences; the folded
/// model decodes exactly like the fork and scores the references like it.
#[test]
fn fold_is_exact_and_decodes_like_the_fork() {
    let tmp = tempfile::tempdir().unwrap();
    for (dir, to) in [(DEEPNET, "post-ln"), (REZERO, "layer-norm-free")] {
        let data = fixture(data_of(dir));
        let out = tmp.path().join(format!("{dir}.safetensors"));
        let v = fold_json(
            &fixture(&format!("{dir}/checkpoint_best.pt")),
            &out,
            &["--data", s(&data)],
        );
        assert_eq!(v["fold"]["to"], to, "{v}");
        assert_eq!(v["probe_sentences"], 200);
        assert_eq!(v["dictionaries"], true);
        // Measured 7.2e-6 (DeepNet) and 6.7e-6 (ReZero): float32 reordering
        // of log-probs that reach about -30 (ulp 2e-6); the bar is the tool's.
        let diff = v["max_abs_diff"].as_f64().expect("diff");
        assert!(diff <= 1e-4, "{dir}: max |Δ log-prob| {diff}");
        eprintln!("{dir}: fold max |Δ log-prob| = {diff:e}");
        assert_eq!(inspect_json(&out, &[])["family"], to);
        let got = eval_fork_flags(&out, &data, &[]);
        assert_same_as_fairseq(&got, &format!("{dir}/generate-best.txt"));
        check_score_reference(
            s(&out),
            data_of(dir),
            &format!("{dir}/score-reference.txt"),
            false,
            &[],
        );
    }
}

/// The folded DeepNet model, loaded strictly into stock fairseq 0.12 and
/// decoded there (fixtures/folded/, made by scripts/peer/fairseq_load.py),
/// printed the same hypotheses as the fork and as our decode of the fold.
#[test]
fn folded_deepnet_decodes_in_stock_fairseq_012() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture(data_of(DEEPNET));
    let out = tmp.path().join("folded.safetensors");
    fold_json(
        &fixture(&format!("{DEEPNET}/checkpoint_best.pt")),
        &out,
        &["--data", s(&data)],
    );
    let stock = "folded/admin-deepnet-fairseq08-folded.generate-fairseq012.txt";
    let got = eval_fork_flags(&out, &data, &["--score-base", "2"]);
    assert_same_as_fairseq(&got, stock);
    let fork = std::fs::read_to_string(fixture(&format!("{DEEPNET}/generate-best.txt"))).unwrap();
    let stock_text = std::fs::read_to_string(fixture(stock)).unwrap();
    let texts = |t: &str| {
        tagged(t, "H")
            .into_iter()
            .map(|(id, v)| {
                (
                    id,
                    v.iter()
                        .map(|l| l.split_once('\t').unwrap().1.to_string())
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&stock_text), texts(&fork));
}

/// A copy of the DeepNet data-bin whose language names sort the wrong way
/// round (source `xx`, target `aa`): every command pairs by name.
fn reversed_names(root: &Path) -> PathBuf {
    let src = fixture(data_of(DEEPNET));
    let dir = root.join("xx-aa");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(src.join("dict.src.txt"), dir.join("dict.xx.txt")).unwrap();
    std::fs::copy(src.join("dict.tgt.txt"), dir.join("dict.aa.txt")).unwrap();
    for ext in ["bin", "idx"] {
        for (from, to) in [("src", "xx"), ("tgt", "aa")] {
            std::fs::copy(
                src.join(format!("test.src-tgt.{from}.{ext}")),
                dir.join(format!("test.xx-aa.{to}.{ext}")),
            )
            .unwrap();
        }
    }
    dir
}

#[test]
fn separate_dictionaries_are_paired_by_language_never_alphabetically() {
    let tmp = tempfile::tempdir().unwrap();
    let data = reversed_names(tmp.path());
    let ckpt = fixture(&format!("{DEEPNET}/checkpoint_best.pt"));
    // From the split's file names.
    let got = eval_fork_flags(&ckpt, &data, &[]);
    assert_same_as_fairseq(&got, &format!("{DEEPNET}/generate-best.txt"));
    let scored = ok(&["score", s(&ckpt), "--data", s(&data)]);
    let want = ok(&["score", s(&ckpt), "--data", s(&fixture(data_of(DEEPNET)))]);
    assert_eq!(scored, want);
    let folded = tmp.path().join("f.safetensors");
    fold_json(&ckpt, &folded, &["--data", s(&data)]);
    // The dictionaries embedded by fold are the right way round: decode text with them.
    let expect = fixture(&format!("{DEEPNET}/generate-best.txt"));
    let (srct, reft) = (
        fixture("corpus/bpe/test.src"),
        fixture("corpus/bpe/test.tgt"),
    );
    let (out, summary) = ok_both(&[
        "eval",
        s(&folded),
        "--src",
        s(&srct),
        "--ref",
        s(&reft),
        "--beam",
        "4",
        "--lenpen",
        "0.6",
        "--remove-bpe",
        "--expect-fairseq",
        s(&expect),
    ]);
    let all = format!("{out}{summary}");
    assert!(all.contains("200/200 hypotheses identical"), "{all}");

    // Text input and a dictionary folder without a split: the pair must be
    // named; with the flags it works, without them it is one clear error.
    let dicts = tmp.path().join("dicts");
    std::fs::create_dir(&dicts).unwrap();
    for l in ["xx", "aa"] {
        std::fs::copy(
            data.join(format!("dict.{l}.txt")),
            dicts.join(format!("dict.{l}.txt")),
        )
        .unwrap();
    }
    let text = [
        "--src",
        s(&srct),
        "--ref",
        s(&reft),
        "--dict-dir",
        s(&dicts),
    ];
    for cmd in ["eval", "score", "fold"] {
        let out = tmp.path().join(format!("{cmd}.safetensors"));
        let mut args = vec![cmd, s(&ckpt)];
        args.extend_from_slice(&text);
        if cmd == "fold" {
            args.extend(["-o", s(&out)]);
        }
        let o = run(&args);
        assert_one_line_error(&o, "give --source-lang and --target-lang");
        args.extend(["--source-lang", "xx", "--target-lang", "aa"]);
        ok(&args);
        // The wrong way round is caught by the embedding tables' sizes.
        let n = args.len();
        args[n - 3] = "aa";
        args[n - 1] = "xx";
        let o = run(&args);
        assert_one_line_error(&o, "wrong dictionary?");
    }
}

/// The fork's `--init-type rezero_postln` (commit 287abc5): LayerNorms kept
/// and one gate per layer, `LN(x + a·F(x))`. Recognised as ReZero with
/// LayerNorms, decoded like the fork's generate (beam 4 / 1, lenpen 0.6 / 1),
/// folded (gates into the output projections) to a plain Post-LN model
/// that decodes the same and scores the references like the fork.
#[test]
fn rezero_postln_decodes_like_the_fork_and_folds_to_post_ln() {
    let ckpt = fixture(&format!("{REZERO_POSTLN}/checkpoint_best.pt"));
    let j = inspect_json(&ckpt, &[]);
    assert_eq!(j["family"], "re-zero");
    assert_eq!(j["init_type"], "rezero_postln");
    let scales = j["scales"].as_array().expect("scales");
    assert_eq!(scales.len(), 2 * 2 + 2 * 3);
    assert!(scales.iter().all(|s| s["kind"] == "gate"), "{j}");
    let data = fixture("data-bin-fairseq08");
    for (want, beam, lenpen) in [
        ("generate-best.txt", "4", "0.6"),
        ("generate-best.lenpen1.txt", "4", "1"),
        ("generate-best.beam1.txt", "1", "0.6"),
    ] {
        let expect = fixture(&format!("{REZERO_POSTLN}/{want}"));
        let (out, summary) = ok_both(&[
            "eval",
            s(&ckpt),
            "--data",
            s(&data),
            "--beam",
            beam,
            "--lenpen",
            lenpen,
            "--batch-size",
            "64",
            "--remove-bpe",
            "--fairseq-format",
            "--expect-fairseq",
            s(&expect),
        ]);
        assert_same_as_fairseq(&out, &format!("{REZERO_POSTLN}/{want}"));
        assert!(
            format!("{out}{summary}").contains("200/200 hypotheses identical"),
            "{want}: {summary}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("folded.safetensors");
    let v = fold_json(&ckpt, &out, &["--data", s(&data)]);
    assert_eq!(v["fold"]["from"], "re-zero", "{v}");
    assert_eq!(v["fold"]["to"], "post-ln", "{v}");
    let diff = v["max_abs_diff"].as_f64().expect("diff");
    eprintln!("rezero_postln: fold max |Δ log-prob| = {diff:e}");
    assert!(diff <= 1e-4, "max |Δ log-prob| {diff}");
    let j = inspect_json(&out, &[]);
    assert_eq!(j["family"], "post-ln");
    assert!(j["scales"].as_array().is_none_or(|a| a.is_empty()), "{j}");
    let got = eval_fork_flags(&out, &data, &[]);
    assert_same_as_fairseq(&got, &format!("{REZERO_POSTLN}/generate-best.txt"));
    check_score_reference(
        s(&out),
        "data-bin-fairseq08",
        &format!("{REZERO_POSTLN}/score-reference.txt"),
        false,
        &[],
    );
}
