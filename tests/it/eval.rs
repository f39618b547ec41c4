//! `admin-convert eval` on the real fixtures: hypotheses, scores and BLEU
//! must be those fairseq-generate printed (fixtures/README.md).

use crate::common::{assert_one_line_error, fixture, run, stderr, stdout};
use std::collections::BTreeMap;
use std::path::Path;

fn f(rel: &str) -> String {
    fixture(rel).to_str().expect("utf-8 path").to_string()
}

fn eval(args: &[&str]) -> std::process::Output {
    let mut v = vec!["eval"];
    v.extend_from_slice(args);
    run(&v)
}

/// Runs eval and asserts it succeeded.
fn eval_success(args: &[&str]) -> std::process::Output {
    let o = eval(args);
    assert!(
        o.status.success(),
        "eval {args:?} failed ({:?}):\n{}\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Runs eval, asserts success, returns stdout.
fn eval_ok(args: &[&str]) -> String {
    stdout(&eval_success(args))
}

/// Runs eval, asserts success, returns the hypotheses (stdout) followed by
/// the summary (stderr when the hypotheses are on stdout).
fn eval_both(args: &[&str]) -> String {
    let o = eval_success(args);
    stdout(&o) + &stderr(&o)
}

type Lines = BTreeMap<usize, Vec<(String, String)>>;

/// `PREFIX-id\trest` lines of a fairseq-generate style text, per id, in order.
pub(crate) fn tagged(text: &str, tag: &str) -> BTreeMap<usize, Vec<String>> {
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{tag}-")) {
            let (id, rest) = rest.split_once('\t').expect("a tab after the id");
            out.entry(id.parse().expect("numeric id"))
                .or_default()
                .push(rest.to_string());
        }
    }
    out
}

/// H- lines split into (score, text).
fn hyps(text: &str) -> Lines {
    tagged(text, "H")
        .into_iter()
        .map(|(id, v)| {
            let v = v
                .into_iter()
                .map(|l| {
                    let (s, t) = l.split_once('\t').unwrap_or((&l, ""));
                    (s.to_string(), t.to_string())
                })
                .collect();
            (id, v)
        })
        .collect()
}

/// Same hypotheses, in the same order, and the same scores to the
/// precision the two runtimes share: H- scores within 5e-6 (fairseq prints
/// a float32 whose last digits depend on the matrix kernels: tract and
/// PyTorch/MKL sum in different orders), P- scores within one unit of the
/// printed 4th decimal (a value next to a rounding boundary may print
/// either way).
pub(crate) fn assert_same_as_fairseq(ours: &str, fairseq_file: &str) {
    let theirs = std::fs::read_to_string(fixture(fairseq_file)).unwrap();
    assert_same_lines(ours, &theirs, fairseq_file);
}

fn assert_same_lines(ours: &str, theirs: &str, what: &str) {
    let (h_ours, h_theirs) = (hyps(ours), hyps(theirs));
    assert_eq!(h_theirs.len(), 200, "{what}");
    assert_eq!(h_ours.len(), h_theirs.len(), "{what}");
    let (mut max_diff, mut exact, mut n) = (0f64, 0, 0);
    for (id, want) in &h_theirs {
        let got = &h_ours[id];
        let texts = |v: &Vec<(String, String)>| v.iter().map(|x| x.1.clone()).collect::<Vec<_>>();
        assert_eq!(texts(got), texts(want), "sentence {id} of {what}");
        for ((gs, _), (ws, _)) in got.iter().zip(want) {
            let g: f64 = gs.parse().unwrap();
            let w: f64 = ws.parse().unwrap();
            max_diff = max_diff.max((g - w).abs());
            exact += usize::from(gs == ws);
            n += 1;
            assert!(
                (g - w).abs() <= 5e-6,
                "sentence {id}: score {gs}, {what} {ws}"
            );
        }
    }
    eprintln!("{what}: {exact}/{n} scores printed identically, max difference {max_diff:e}");
    let (p_ours, p_theirs) = (tagged(ours, "P"), tagged(theirs, "P"));
    for (id, want) in &p_theirs {
        assert_eq!(p_ours[id].len(), want.len(), "sentence {id}: P- lines");
        for (g, w) in p_ours[id].iter().zip(want) {
            assert_eq!(
                g.split(' ').count(),
                w.split(' ').count(),
                "sentence {id}: {g} vs {w}"
            );
            for (a, b) in g.split(' ').zip(w.split(' ')) {
                let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
                assert!(
                    (a - b).abs() <= 1.5e-4,
                    "sentence {id}: P- {g} vs {what} {w}"
                );
            }
        }
    }
}

fn summary_has(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

const BEST08_BLEU: &str =
    "BLEU4 = 92.18, 98.2/93.8/90.5/86.6 (BP=1.000, ratio=1.013, syslen=1753, reflen=1731)";

#[test]
fn admin08_best_matches_fairseq_generate() {
    let ckpt = f("admin-fairseq08/checkpoint_best.pt");
    let data = f("data-bin-fairseq08");
    let expect = f("admin-fairseq08/generate-best.txt");
    // The default (native) and the exported graphs on tract.
    for backend in ["auto", "tract"] {
        let out = eval_ok(&[
            &ckpt,
            "--backend",
            backend,
            "--data",
            &data,
            "--beam",
            "4",
            "--remove-bpe",
            "--fairseq-format",
        ]);
        assert_same_as_fairseq(&out, "admin-fairseq08/generate-best.txt");
    }
    let out = eval_ok(&[
        &ckpt,
        "--data",
        &data,
        "--subset",
        "test",
        "--beam",
        "4",
        "--batch-size",
        "64",
        "--remove-bpe",
        "--fairseq-format",
        "--expect-fairseq",
        &expect,
    ]);
    assert_same_as_fairseq(&out, "admin-fairseq08/generate-best.txt");
    // S- and T- lines as fairseq printed them.
    let theirs = std::fs::read_to_string(&expect).unwrap();
    assert_eq!(tagged(&out, "S"), tagged(&theirs, "S"));
    assert_eq!(tagged(&out, "T"), tagged(&theirs, "T"));
    assert!(!out.contains("\nD-"), "no D- lines in base e");

    // --quiet: only the summary, on stdout.
    let out = eval_ok(&[
        &ckpt,
        "--data",
        &data,
        "--beam",
        "4",
        "--remove-bpe",
        "--quiet",
        "--expect-fairseq",
        &expect,
    ]);
    summary_has(&out, &format!("Generate test with beam=4: {BEST08_BLEU}"));
    summary_has(&out, "expect-fairseq: 200/200 hypotheses identical");
    assert!(!out.contains("H-"));
}

#[test]
fn admin08_averaged_bleu() {
    let out = eval_ok(&[
        &f("admin-fairseq08/averaged_last5.pt"),
        "--data",
        &f("data-bin-fairseq08"),
        "--beam",
        "4",
        "--remove-bpe",
        "--quiet",
        "--expect-fairseq",
        &f("admin-fairseq08/generate-avg5.txt"),
    ]);
    summary_has(
        &out,
        "BLEU4 = 95.65, 99.9/96.9/94.8/92.3 (BP=0.997, ratio=0.997, syslen=1726, reflen=1731)",
    );
    summary_has(&out, "200/200 hypotheses identical");
}

#[test]
fn admin08_from_text_files() {
    let dir = tempfile::tempdir().unwrap();
    let hyp = dir.path().join("hyp.txt");
    let out = eval_ok(&[
        &f("admin-fairseq08/checkpoint_best.pt"),
        "--src",
        &f("corpus/bpe/test.src"),
        "--ref",
        &f("corpus/bpe/test.tgt"),
        "--dict-dir",
        &f("data-bin"),
        "--beam",
        "4",
        "--remove-bpe",
        "-o",
        hyp.to_str().unwrap(),
        "--expect-fairseq",
        &f("admin-fairseq08/generate-best.txt"),
    ]);
    summary_has(&out, BEST08_BLEU);
    summary_has(&out, "200/200 hypotheses identical");
    // Plain output: one de-BPE'd hypothesis per input line, in input order.
    let plain = std::fs::read_to_string(&hyp).unwrap();
    let theirs =
        hyps(&std::fs::read_to_string(fixture("admin-fairseq08/generate-best.txt")).unwrap());
    let want: Vec<&str> = theirs.values().map(|v| v[0].1.as_str()).collect();
    assert_eq!(plain.lines().collect::<Vec<_>>(), want);
}

#[test]
fn postln012_sacrebleu_and_base2_scores() {
    let out = eval_both(&[
        &f("postln-fairseq012/checkpoint_best.pt"),
        "--data",
        &f("data-bin"),
        "--beam",
        "4",
        "--batch-size",
        "64",
        "--remove-bpe",
        "--scoring",
        "sacrebleu",
        "--fairseq-format",
        "--score-base",
        "2",
        "--expect-fairseq",
        &f("postln-fairseq012/generate-best.sacrebleu.txt"),
    ]);
    assert_same_as_fairseq(&out, "postln-fairseq012/generate-best.sacrebleu.txt");
    let theirs =
        std::fs::read_to_string(fixture("postln-fairseq012/generate-best.sacrebleu.txt")).unwrap();
    assert_eq!(tagged(&out, "D"), tagged(&out, "H"));
    assert_eq!(tagged(&out, "T"), tagged(&theirs, "T"));
    summary_has(
        &out,
        "Generate test with beam=4: BLEU = 98.80 99.8/99.2/98.7/98.1 (BP = 0.998 ratio = 0.998 hyp_len = 1728 ref_len = 1731)",
    );
    summary_has(
        &out,
        "sacreBLEU signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:",
    );
}

#[test]
fn postln012_nbest4_without_bpe_removal() {
    let out = eval_both(&[
        &f("postln-fairseq012/checkpoint_best.pt"),
        "--data",
        &f("data-bin"),
        "--beam",
        "4",
        "--nbest",
        "4",
        "--fairseq-format",
        "--score-base",
        "2",
        "--scoring",
        "sacrebleu",
        "--expect-fairseq",
        &f("postln-fairseq012/generate-best.nbest4.nobpe.txt"),
    ]);
    assert_same_as_fairseq(&out, "postln-fairseq012/generate-best.nbest4.nobpe.txt");
    assert!(hyps(&out).values().all(|v| v.len() == 4));
    summary_has(&out, "BLEU = 99.08 100.0/99.4/99.0/98.5 (BP = 0.999 ratio = 0.999 hyp_len = 2262 ref_len = 2265)");
}

#[test]
fn output_does_not_depend_on_the_batch_size() {
    let ckpt = f("admin-fairseq08/checkpoint_best.pt");
    let data = f("data-bin-fairseq08");
    let outs: Vec<String> = ["1", "7", "64"]
        .iter()
        .map(|b| {
            eval_ok(&[
                &ckpt,
                "--data",
                &data,
                "--beam",
                "4",
                "--remove-bpe",
                "--batch-size",
                b,
                "--required-batch-size-multiple",
                "1",
                "--fairseq-format",
            ])
        })
        .collect();
    assert_same_as_fairseq(&outs[0], "admin-fairseq08/generate-best.txt");
    // The native engine sums every row in the same order: identical output,
    // scores included, whatever the batch.
    let untimed = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with("Translated "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(untimed(&outs[1]), untimed(&outs[0]), "--batch-size 7 vs 1");
    assert_eq!(untimed(&outs[2]), untimed(&outs[0]), "--batch-size 64 vs 1");
    // On the graphs (tract): same hypotheses; float32 scores equal up to the
    // last bits (a row's rounding depends on its place in the batch and the
    // padded width).
    for b in ["7", "64"] {
        let out = eval_ok(&[
            &ckpt,
            "--backend",
            "tract",
            "--data",
            &data,
            "--beam",
            "4",
            "--remove-bpe",
            "--batch-size",
            b,
            "--required-batch-size-multiple",
            "1",
            "--fairseq-format",
        ]);
        assert_same_lines(
            &out,
            &outs[0],
            &format!("tract --batch-size {b} vs native 1"),
        );
    }
    // --max-tokens batching too.
    let out = eval_ok(&[
        &ckpt,
        "--data",
        &data,
        "--beam",
        "4",
        "--remove-bpe",
        "--max-tokens",
        "100",
        "--fairseq-format",
    ]);
    assert_same_lines(&out, &outs[0], "--max-tokens 100 vs --batch-size 1");
}

#[test]
fn json_summary_and_compare() {
    let o = eval(&[
        &f("admin-fairseq08/checkpoint_best.pt"),
        "--data",
        &f("data-bin-fairseq08"),
        "--beam",
        "4",
        "--remove-bpe",
        "--json",
        "--compare",
        &f("admin-fairseq08/averaged_last5.pt"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(j["sentences"], 200);
    assert_eq!(j["scores"]["bleu"]["string"], BEST08_BLEU);
    assert_eq!(
        j["compare"]["scores"]["bleu"]["string"],
        "BLEU4 = 95.65, 99.9/96.9/94.8/92.3 (BP=0.997, ratio=0.997, syslen=1726, reflen=1731)"
    );
    let identical = j["compare"]["identical"].as_u64().unwrap();
    assert!(identical > 0 && identical < 200, "{identical}");
    assert!(j["compare"]["max_abs_score_diff"].as_f64().unwrap() > 0.0);
    assert!(j["tokens_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn expect_fairseq_mismatch_exits_1() {
    // The averaged model's hypotheses differ from the best checkpoint's.
    let o = eval(&[
        &f("admin-fairseq08/averaged_last5.pt"),
        "--data",
        &f("data-bin-fairseq08"),
        "--beam",
        "4",
        "--remove-bpe",
        "--quiet",
        "--expect-fairseq",
        &f("admin-fairseq08/generate-best.txt"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    summary_has(&out, "differs: ");
    assert!(!out.contains("200/200"));
}

#[test]
fn exported_directory_with_its_dictionaries() {
    use admin_convert::data::Dictionary;
    use admin_convert::export::{self, ExportOptions};
    let (_, rec) = admin_convert::cli::load(
        &fixture("postln-fairseq012/checkpoint_best.pt"),
        &Default::default(),
    )
    .unwrap();
    let dict = std::fs::read_to_string(fixture("data-bin/dict.src.txt")).unwrap();
    let _ = Dictionary::from_dict_txt(&dict).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        dictionaries: Some((dict.clone(), dict)),
        ..Default::default()
    };
    export::write_dir(&rec.model, &opts, dir.path()).unwrap();
    let out = eval_ok(&[
        dir.path().to_str().unwrap(),
        "--src",
        &f("corpus/bpe/test.src"),
        "--ref",
        &f("corpus/bpe/test.tgt"),
        "--beam",
        "4",
        "--remove-bpe",
        "--quiet",
        "--scoring",
        "sacrebleu",
        "--expect-fairseq",
        &f("postln-fairseq012/generate-best.sacrebleu.txt"),
    ]);
    summary_has(&out, "BLEU = 98.80");
    summary_has(&out, "200/200 hypotheses identical");
}

fn ort_available() -> bool {
    match admin_convert::runtime::ort::find_library(None, &[]) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("ADMIN_CONVERT_REQUIRE_ORT").as_deref() == Ok("1") {
                panic!("ADMIN_CONVERT_REQUIRE_ORT=1 but onnxruntime is not available: {e:#}");
            }
            eprintln!("note: skipping the onnxruntime check: {e:#}");
            false
        }
    }
}

#[test]
fn ort_backend_gives_the_same_hypotheses() {
    if !ort_available() {
        return;
    }
    let out = eval_both(&[
        &f("admin-fairseq08/checkpoint_best.pt"),
        "--data",
        &f("data-bin-fairseq08"),
        "--beam",
        "4",
        "--remove-bpe",
        "--backend",
        "ort",
        "--fairseq-format",
        "--expect-fairseq",
        &f("admin-fairseq08/generate-best.txt"),
    ]);
    assert_same_as_fairseq(&out, "admin-fairseq08/generate-best.txt");
    summary_has(&out, BEST08_BLEU);
    summary_has(&out, "with onnxruntime");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let ckpt = f("postln-fairseq012/checkpoint_best.pt");
    let src = f("corpus/bpe/test.src");
    // No dictionaries for a checkpoint read from text.
    assert_one_line_error(&eval(&[&ckpt, "--src", &src]), "--dict-dir");
    // A dictionary that does not fit the model.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dict.src.txt"), "a 1\nb 1\n").unwrap();
    std::fs::write(dir.path().join("dict.tgt.txt"), "a 1\nb 1\n").unwrap();
    assert_one_line_error(
        &eval(&[
            &ckpt,
            "--src",
            &src,
            "--dict-dir",
            dir.path().to_str().unwrap(),
        ]),
        "wrong dictionary",
    );
    // No such split.
    assert_one_line_error(
        &eval(&[&ckpt, "--data", &f("data-bin"), "--subset", "valid"]),
        "valid",
    );
    // Bad options.
    assert_one_line_error(
        &eval(&[
            &ckpt,
            "--data",
            &f("data-bin"),
            "--beam",
            "2",
            "--nbest",
            "3",
        ]),
        "--nbest",
    );
    assert_one_line_error(
        &eval(&[&ckpt, "--data", &f("data-bin"), "--remove-bpe", "bogus"]),
        "--remove-bpe",
    );
    let data = f("data-bin");
    assert_one_line_error(
        &eval(&[
            &ckpt,
            "--data",
            &data,
            "--device",
            "cuda",
            "--backend",
            "tract",
        ]),
        "tract",
    );
    assert_one_line_error(
        &eval(&[
            &ckpt,
            "--data",
            &data,
            "--device",
            "cuda",
            "--backend",
            "native",
        ]),
        "native",
    );
    assert_one_line_error(
        &eval(&[&ckpt, "--data", &data, "--fp16", "--backend", "native"]),
        "float32",
    );
    assert_one_line_error(
        &eval(&[&ckpt, "--data", &data, "--backend", "bogus"]),
        "--backend",
    );
    assert_one_line_error(
        &eval(&[
            &ckpt,
            "--data",
            &f("data-bin"),
            "--backend",
            "ort",
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
        ]),
        "onnxruntime",
    );
    assert!(!Path::new("/nonexistent").exists());
}

#[test]
fn every_generate_fixture() {
    // (checkpoint, data, flags, fairseq output, metric line it printed)
    let cases: [(&str, &str, &[&str], &str, &str); 6] = [
        ("admin-fairseq08/checkpoint_best.pt", "data-bin-fairseq08", &["--remove-bpe", "--scoring", "sacrebleu"],
         "admin-fairseq08/generate-best.sacrebleu.txt",
         "BLEU = 92.18 98.2/93.8/90.5/86.6 (BP = 1.000 ratio = 1.013 hyp_len = 1753 ref_len = 1731)"),
        ("admin-fairseq08/checkpoint_best.pt", "data-bin-fairseq08", &[],
         "admin-fairseq08/generate-best.nobpe.txt",
         "BLEU4 = 93.13, 98.3/94.5/91.6/88.4 (BP=1.000, ratio=1.012, syslen=1931, reflen=1909)"),
        ("admintorch-fairseq012/checkpoint_best.pt", "data-bin", &["--remove-bpe"],
         "admintorch-fairseq012/generate-best.txt",
         "BLEU4 = 84.34, 99.5/91.6/84.0/77.3 (BP=0.962, ratio=0.962, syslen=1666, reflen=1731)"),
        ("postln-fairseq0122/checkpoint_best.pt", "data-bin", &["--remove-bpe", "--scoring", "sacrebleu"],
         "postln-fairseq0122/generate-best.sacrebleu.txt",
         "BLEU = 96.59 99.5/97.5/95.8/93.7 (BP = 1.000 ratio = 1.002 hyp_len = 1735 ref_len = 1731)"),
        ("postln-fairseq012/averaged_last5.pt", "data-bin", &["--remove-bpe"],
         "postln-fairseq012/generate-avg5.txt",
         "BLEU4 = 98.47, 100.0/98.9/98.2/97.3 (BP=0.999, ratio=0.999, syslen=1729, reflen=1731)"),
        ("postln-fairseq012/averaged_last5.pt", "data-bin", &["--remove-bpe", "--scoring", "sacrebleu"],
         "postln-fairseq012/generate-avg5.sacrebleu.txt", "BLEU = "),
    ];
    for (ckpt, data, flags, expect, metric) in cases {
        let (ckpt, data, expect) = (f(ckpt), f(data), f(expect));
        let base = if expect.contains("fairseq08") {
            "e"
        } else {
            "2"
        };
        let mut args = vec![
            &ckpt[..],
            "--data",
            &data,
            "--beam",
            "4",
            "--batch-size",
            "64",
            "--fairseq-format",
            "--score-base",
            base,
            "--expect-fairseq",
            &expect,
        ];
        args.extend_from_slice(flags);
        let out = eval_both(&args);
        assert_same_as_fairseq(
            &out,
            expect.strip_prefix(&f("")).unwrap().trim_start_matches('/'),
        );
        summary_has(&out, "200/200 hypotheses identical");
        let printed = std::fs::read_to_string(&expect).unwrap();
        let line = printed.lines().last().unwrap();
        assert!(line.contains(metric), "{line}");
        let ours = out
            .lines()
            .find(|l| l.starts_with("Generate test"))
            .unwrap();
        let theirs = &line[line.find("Generate test").unwrap()..];
        assert_eq!(ours, theirs, "{expect}");
    }
}

#[test]
fn folded_and_exported_models_decode_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let folded = dir.path().join("folded.safetensors");
    let ckpt = f("admin-fairseq08/checkpoint_best.pt");
    let data = f("data-bin-fairseq08");
    let o = run(&[
        "fold",
        &ckpt,
        "--data",
        &data,
        "--dict-dir",
        &data,
        "-o",
        folded.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "fold: {}", stderr(&o));
    // The folded file decodes like stock fairseq decoded it, and like the
    // unfolded model.
    let folded_s = folded.to_str().unwrap();
    let out = eval_ok(&[
        folded_s,
        "--data",
        &data,
        "--beam",
        "4",
        "--remove-bpe",
        "--quiet",
        "--expect-fairseq",
        &f("folded/admin-fairseq08-folded.generate-fairseq012.txt"),
        "--compare",
        &ckpt,
    ]);
    summary_has(&out, BEST08_BLEU);
    summary_has(&out, "200/200 hypotheses identical");
    summary_has(&out, "compare: 200/200 identical hypotheses");
    // Exported graphs with their dictionaries: no --dict-dir needed; fp16 too.
    let onnx = dir.path().join("onnx");
    let o = run(&[
        "export",
        folded_s,
        "--onnx",
        "--fp16",
        "--dict-dir",
        &data,
        "-o",
        onnx.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "export: {}", stderr(&o));
    let onnx_s = onnx.to_str().unwrap();
    let out = eval_ok(&[
        onnx_s,
        "--src",
        &f("corpus/bpe/test.src"),
        "--ref",
        &f("corpus/bpe/test.tgt"),
        "--beam",
        "4",
        "--remove-bpe",
        "--quiet",
        "--expect-fairseq",
        &f("admin-fairseq08/generate-best.txt"),
    ]);
    summary_has(&out, BEST08_BLEU);
    summary_has(&out, "200/200 hypotheses identical");
    let o = eval(&[
        onnx_s,
        "--src",
        &f("corpus/bpe/test.src"),
        "--ref",
        &f("corpus/bpe/test.tgt"),
        "--beam",
        "4",
        "--remove-bpe",
        "--quiet",
        "--fp16",
        "--json",
    ]);
    assert!(o.status.success(), "fp16: {}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["precision"], "fp16");
    let bleu = j["scores"]["bleu"]["score"].as_f64().unwrap();
    assert!((bleu - 92.18).abs() < 1.0, "fp16 BLEU {bleu}");
}

/// `--compare-compute-type`: the native engine's int8 and bfloat16 against
/// its float32 on every fixture model. Bounds (200 sentences, where one
/// changed hypothesis moves BLEU by ~0.3): int8 loses at most 1.0 BLEU,
/// keeps ≥ 97 % of the hypotheses and moves no teacher-forced token
/// log-prob by more than 0.5; bfloat16 (2⁻⁹ relative rounding, 16× finer
/// than int8) at most 0.3 BLEU, ≥ 98.5 %, 0.1. The int8 integer sums are
/// exact, so these hold on every CPU (VNNI, AVX2, portable alike).
#[test]
fn reduced_compute_types_on_every_fixture() {
    let models = [
        ("admin-fairseq08/checkpoint_best.pt", "data-bin-fairseq08"),
        ("admintorch-fairseq012/checkpoint_best.pt", "data-bin"),
        ("postln-fairseq0122/checkpoint_best.pt", "data-bin"),
        ("postln-fairseq012/checkpoint_best.pt", "data-bin"),
        (
            "admin-rezero-fairseq08/checkpoint_best.pt",
            "data-bin-fairseq08",
        ),
        (
            "admin-rezero-postln-fairseq08/checkpoint_best.pt",
            "data-bin-fairseq08",
        ),
        (
            "admin-deepnet-fairseq08/checkpoint_best.pt",
            "data-bin-deepnet-fairseq08",
        ),
    ];
    let bf16 = admin_convert::native::quant::bf16_kernel().is_some();
    for (ckpt, data) in models {
        for (ct, loss, same, forced) in [("int8", 1.0, 194, 0.5), ("bfloat16", 0.3, 197, 0.1)] {
            let (ckpt, data) = (f(ckpt), f(data));
            let args = [
                &ckpt[..],
                "--data",
                &data,
                "--beam",
                "4",
                "--remove-bpe",
                "--json",
                "--threads",
                "2",
                "--compare-compute-type",
                ct,
            ];
            if ct == "bfloat16" && !bf16 {
                assert_one_line_error(&eval(&args), "AVX512_BF16");
                continue;
            }
            let o = eval(&args);
            assert!(o.status.success(), "{}", stderr(&o));
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
            let c = &j["compare"];
            let b32 = j["scores"]["bleu"]["score"].as_f64().unwrap();
            let b = c["scores"]["bleu"]["score"].as_f64().unwrap();
            let identical = c["identical"].as_u64().unwrap();
            let diff = c["max_abs_forced_logprob_diff"].as_f64().unwrap();
            eprintln!("{ckpt} {ct}: BLEU {b32:.2} -> {b:.2}, {identical}/200 identical, forced {diff:.3e}");
            assert!(c["backend"].as_str().unwrap().contains(ct), "{c}");
            assert!(b32 - b <= loss, "{ckpt} {ct}: BLEU {b32} -> {b}");
            assert!(identical >= same, "{ckpt} {ct}: {identical}/200 identical");
            assert!(diff > 0.0 && diff <= forced, "{ckpt} {ct}: forced Δ {diff}");
        }
    }
}
