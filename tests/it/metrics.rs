//! fairseq BLEU and sacreBLEU reproduce, to the printed string, the scores that
//! real fairseq-generate runs wrote into `fixtures/*/generate-*.txt`.

use std::collections::HashMap;
use std::path::PathBuf;

use admin_convert::metrics::sacrebleu::{tokenize_13a, Smooth, Tokenizer};
use admin_convert::metrics::{BleuScorer, SacreBleu, SacreBleuConfig, SACREBLEU_VERSION};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// A fairseq-generate log: (reference, first hypothesis) per sentence in
/// output order, and the score as printed on the last line (from "BLEU").
struct Generate {
    pairs: Vec<(String, String)>,
    printed: String,
}

fn read_generate(rel: &str) -> Generate {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    let mut targets: HashMap<&str, &str> = HashMap::new();
    let mut pairs = Vec::new();
    let mut printed = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.splitn(3, '\t').collect();
        if let Some(id) = fields[0].strip_prefix("T-") {
            targets.insert(id, fields.get(1).copied().unwrap_or(""));
        } else if let Some(id) = fields[0].strip_prefix("H-") {
            // Only the first (best) hypothesis of a sentence is scored.
            if let Some(target) = targets.remove(id) {
                pairs.push((
                    target.to_string(),
                    fields.get(2).copied().unwrap_or("").to_string(),
                ));
            }
        } else if let Some(at) = line.find("BLEU") {
            printed = Some(line[at..].to_string());
        }
    }
    assert_eq!(pairs.len(), 200, "{rel}");
    Generate {
        pairs,
        printed: printed.expect("no BLEU line"),
    }
}

fn fairseq_bleu(rel: &str) -> (String, String) {
    let g = read_generate(rel);
    let mut scorer = BleuScorer::new();
    for (r, h) in &g.pairs {
        scorer.add(r, h);
    }
    (scorer.result().fairseq_string(), g.printed)
}

fn sacrebleu(rel: &str) -> (String, String) {
    let g = read_generate(rel);
    let mut scorer = SacreBleu::new();
    for (r, h) in &g.pairs {
        scorer.add(r, h);
    }
    (scorer.result().format(), g.printed)
}

#[test]
fn fairseq_bleu_admin_fork_best() {
    let (ours, printed) = fairseq_bleu("admin-fairseq08/generate-best.txt");
    assert_eq!(
        printed,
        "BLEU4 = 92.18, 98.2/93.8/90.5/86.6 (BP=1.000, ratio=1.013, syslen=1753, reflen=1731)"
    );
    assert_eq!(ours, printed);
}

#[test]
fn fairseq_bleu_admin_fork_avg5() {
    let (ours, printed) = fairseq_bleu("admin-fairseq08/generate-avg5.txt");
    assert!(printed.starts_with("BLEU4 = 95.65,"));
    assert_eq!(ours, printed);
}

#[test]
fn fairseq_bleu_admin_fork_over_bpe_tokens() {
    let (ours, printed) = fairseq_bleu("admin-fairseq08/generate-best.nobpe.txt");
    assert!(printed.starts_with("BLEU4 = 93.13,"));
    assert_eq!(ours, printed);
}

#[test]
fn fairseq_bleu_postln_fairseq012_avg5() {
    let (ours, printed) = fairseq_bleu("postln-fairseq012/generate-avg5.txt");
    assert!(printed.starts_with("BLEU4 = 98.47,"));
    assert_eq!(ours, printed);
}

#[test]
fn fairseq_bleu_admintorch_fairseq012() {
    let (ours, printed) = fairseq_bleu("admintorch-fairseq012/generate-best.txt");
    assert_eq!(
        printed,
        "BLEU4 = 84.34, 99.5/91.6/84.0/77.3 (BP=0.962, ratio=0.962, syslen=1666, reflen=1731)"
    );
    assert_eq!(ours, printed);
}

#[test]
fn sacrebleu_postln_fairseq012_best() {
    let (ours, printed) = sacrebleu("postln-fairseq012/generate-best.sacrebleu.txt");
    assert!(printed.starts_with("BLEU = 98.80 "));
    assert_eq!(ours, printed);
}

#[test]
fn sacrebleu_postln_fairseq012_avg5() {
    let (ours, printed) = sacrebleu("postln-fairseq012/generate-avg5.sacrebleu.txt");
    assert!(printed.starts_with("BLEU = 98.47 "));
    assert_eq!(ours, printed);
}

#[test]
fn sacrebleu_postln_fairseq012_nbest4_over_bpe_tokens() {
    let (ours, printed) = sacrebleu("postln-fairseq012/generate-best.nbest4.nobpe.txt");
    assert!(printed.starts_with("BLEU = 99.08 "));
    assert_eq!(ours, printed);
}

#[test]
fn sacrebleu_postln_fairseq0122() {
    let (ours, printed) = sacrebleu("postln-fairseq0122/generate-best.sacrebleu.txt");
    assert!(printed.starts_with("BLEU = 96.59 "));
    assert_eq!(ours, printed);
}

#[test]
fn sacrebleu_admin_fork() {
    // Printed by the fork's `--sacrebleu` with an older sacreBLEU 1.x, whose
    // string format is the same.
    let (ours, printed) = sacrebleu("admin-fairseq08/generate-best.sacrebleu.txt");
    assert_eq!(
        printed,
        "BLEU = 92.18 98.2/93.8/90.5/86.6 (BP = 1.000 ratio = 1.013 hyp_len = 1753 ref_len = 1731)"
    );
    assert_eq!(ours, printed);
}

#[test]
fn signature() {
    assert_eq!(SACREBLEU_VERSION, "2.6.0");
    assert_eq!(
        SacreBleu::new().signature(),
        "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    );
    let lc_floor = SacreBleuConfig {
        lowercase: true,
        smooth: Smooth::Floor(0.1),
        ..Default::default()
    };
    assert_eq!(
        lc_floor.signature(),
        "nrefs:1|case:lc|eff:no|tok:13a|smooth:floor[0.10]|version:2.6.0"
    );
    let addk = SacreBleuConfig {
        smooth: Smooth::AddK(1.0),
        ..Default::default()
    };
    assert_eq!(
        addk.signature(),
        "nrefs:1|case:mixed|eff:no|tok:13a|smooth:add-k[1.00]|version:2.6.0"
    );
}

// Expected values below were printed once by the real Python sacrebleu 2.6.0
// (`Tokenizer13a()(line)`, `sacrebleu.corpus_bleu(hyps, [refs], ...)`).

#[test]
fn tokenizer_13a_matches_sacrebleu() {
    let cases = [
        (
            "Hello, world! It's 3.14 -- or 1,000.5 e.g. U.S.A.",
            "Hello , world ! It's 3.14 -- or 1,000.5 e . g . U . S . A .",
        ),
        (
            "a-\nb c\nd <skipped> &quot;q&quot; &amp;lt; &lt;tag&gt; x&y",
            "ab c d \" q \" < < tag > x & y",
        ),
        (
            "10-20 km/h (approx.) $5.00; 50% [sic] {x} ~y~ `z` ^ _ | \\ @ # * + = ?",
            "10 - 20 km / h ( approx . ) $ 5.00 ; 50 % [ sic ] { x } ~ y ~ ` z ` ^ _ | \\ @ # * + = ?",
        ),
        (
            "end.. .5 ,a a, 3, 3,4 x.y 4.x ...",
            "end . . . 5 , a a , 3 , 3,4 x . y 4 . x . . .",
        ),
        (
            "  tabs\there\u{a0}nbsp\u{3000}ideo\u{1f}sep  ",
            "tabs here nbsp ideo sep",
        ),
        (
            "Ünïcödé «quotes» — dash – en 'single' naïve café.",
            "Ünïcödé «quotes» — dash – en 'single' naïve café .",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(tokenize_13a(input), expected, "{input:?}");
    }
}

fn corpus(config: SacreBleuConfig, hyps: &[&str], refs: &[&str]) -> (f64, String) {
    let mut s = SacreBleu::with_config(config);
    for (r, h) in refs.iter().zip(hyps) {
        s.add(r, h);
    }
    let r = s.result();
    (r.score, r.format())
}

fn assert_close(ours: f64, python: f64) {
    assert!((ours - python).abs() < 1e-9, "{ours} vs sacrebleu {python}");
}

#[test]
fn sacrebleu_tricky_corpus() {
    let hyps = [
        "The cat sat on a mat .",
        "Its 3.14 , isnt it ?",
        "Hello , world! a-b 1 - 2",
        "one two three",
        "something",
        "",
    ];
    let refs = [
        "The cat sat on the mat.",
        "It's 3.14, isn't it?",
        "Hello,world!  A-B 1-2",
        "one two three four five six",
        "",
        "x",
    ];
    let (score, s) = corpus(SacreBleuConfig::default(), &hyps, &refs);
    assert_close(score, 37.65784837045273);
    assert_eq!(
        s,
        "BLEU = 37.66 80.0/65.0/37.5/16.7 (BP = 0.887 ratio = 0.893 hyp_len = 25 ref_len = 28)"
    );

    let hyps = [
        "a b c d e",
        "Hello, world! It's 3.14 -- or 1,000.5 e.g. U.S.A.",
        "a-\nb c\nd <skipped> &quot;q&quot; &amp;lt; x&y  \n",
    ];
    let refs = [
        "a b c x d e",
        "Hello world! It is 3.14 - or 1,000.5 e.g. USA.",
        "ab c d \"q\" &lt; x & y",
    ];
    let (score, s) = corpus(SacreBleuConfig::default(), &hyps, &refs);
    assert_close(score, 53.587394144489075);
    assert_eq!(
        s,
        "BLEU = 53.59 76.5/58.1/46.4/40.0 (BP = 1.000 ratio = 1.097 hyp_len = 34 ref_len = 31)"
    );
    let addk = SacreBleuConfig {
        smooth: Smooth::AddK(1.0),
        ..Default::default()
    };
    let (score, s) = corpus(addk, &hyps, &refs);
    assert_close(score, 55.1838322871409);
    assert_eq!(
        s,
        "BLEU = 55.18 76.5/59.4/48.3/42.3 (BP = 1.000 ratio = 1.097 hyp_len = 34 ref_len = 31)"
    );
}

#[test]
fn sacrebleu_smoothing_of_a_zero_count() {
    // No 4-gram matches: each smoothing method treats it differently.
    let hyps = ["a b c d e"];
    let refs = ["a b c x d e"];
    let with = |smooth| SacreBleuConfig {
        smooth,
        ..Default::default()
    };
    let expected = [
        (
            Smooth::Exp,
            40.93653765389909,
            "BLEU = 40.94 100.0/75.0/33.3/25.0",
        ),
        (Smooth::None, 0.0, "BLEU = 0.00 100.0/75.0/33.3/0.0"),
        (
            Smooth::Floor(0.1),
            27.37591267534726,
            "BLEU = 27.38 100.0/75.0/33.3/5.0",
        ),
        (
            Smooth::AddK(1.0),
            49.473859088183865,
            "BLEU = 49.47 100.0/80.0/50.0/33.3",
        ),
    ];
    for (smooth, python, head) in expected {
        let (score, s) = corpus(with(smooth), &hyps, &refs);
        assert_close(score, python);
        assert_eq!(
            s,
            format!("{head} (BP = 0.819 ratio = 0.833 hyp_len = 5 ref_len = 6)")
        );
    }
    let none_tok = SacreBleuConfig {
        tokenizer: Tokenizer::None,
        ..Default::default()
    };
    assert_close(corpus(none_tok, &hyps, &refs).0, 40.93653765389909);
}

#[test]
fn sacrebleu_no_matches_and_no_4grams() {
    let (score, s) = corpus(SacreBleuConfig::default(), &["x y"], &["a b"]);
    assert_eq!(score, 0.0);
    assert_eq!(
        s,
        "BLEU = 0.00 0.0/0.0/0.0/0.0 (BP = 1.000 ratio = 1.000 hyp_len = 2 ref_len = 2)"
    );
    let (score, s) = corpus(
        SacreBleuConfig::default(),
        &["a b c", "d e"],
        &["a b c", "d f"],
    );
    assert_eq!(score, 0.0);
    assert_eq!(
        s,
        "BLEU = 0.00 80.0/66.7/100.0/0.0 (BP = 1.000 ratio = 1.000 hyp_len = 5 ref_len = 5)"
    );
}

#[test]
fn sacrebleu_lowercase() {
    let lc = SacreBleuConfig {
        lowercase: true,
        ..Default::default()
    };
    let (score, s) = corpus(lc, &["The Quick, brown fox"], &["the quick brown Fox ."]);
    assert_close(score, 30.213753973567677);
    assert_eq!(
        s,
        "BLEU = 30.21 80.0/50.0/16.7/12.5 (BP = 1.000 ratio = 1.000 hyp_len = 5 ref_len = 5)"
    );
    let (score, _) = corpus(lc, &["The Quick brown fox"], &["the quick Brown fox"]);
    assert_close(score, 100.00000000000004);
}

#[test]
fn format_with_signature() {
    let mut s = SacreBleu::new();
    s.add("a b c d", "a b c d");
    assert_eq!(
        s.result().format_with_signature(&s.signature()),
        "BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0 = 100.00 100.0/100.0/100.0/100.0 (BP = 1.000 ratio = 1.000 hyp_len = 4 ref_len = 4)"
    );
}
