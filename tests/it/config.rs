//! Recorded configs are validated, never silently replaced (issue "Hardening"
//! item 3): a bad head count, an unknown activation, a non-boolean flag,
//! heads that do not divide the width, absurd position counts: exit 2 with
//! one line naming the key and the value. Checkpoints are crafted here: a
//! real model's tensors with an edited `fairseq.args` safetensors metadata.

use crate::common::*;
use admin_convert::read::{Checkpoint, META_ARGS};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A safetensors copy of the DeepNet fork checkpoint (4 heads, 64 wide,
/// separate dictionaries) whose recorded args get `edits`
/// (`Value::Null` removes a key).
fn crafted(dir: &Path, name: &str, edits: &[(&str, Value)]) -> PathBuf {
    let base = dir.join("base.safetensors");
    if !base.exists() {
        let ckpt = fixture("admin-deepnet-fairseq08/checkpoint_best.pt");
        let o = run(&["fold", s(&ckpt), "-o", s(&base)]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let c = Checkpoint::open(&base).expect("open base");
    let mut args: serde_json::Map<String, Value> =
        serde_json::from_str(&c.metadata[META_ARGS]).expect("args JSON");
    for (k, v) in edits {
        if v.is_null() {
            args.remove(*k);
        } else {
            args.insert(k.to_string(), v.clone());
        }
    }
    let mut meta = c.metadata.clone();
    meta.insert(META_ARGS.into(), Value::Object(args).to_string());
    let tensors: Vec<_> = c
        .entries
        .iter()
        .map(|e| (e.name.clone(), c.tensor(&e.name).expect("tensor")))
        .collect();
    let out = dir.join(format!("{name}.safetensors"));
    admin_convert::write::safetensors::write(&out, &tensors, &meta).expect("write");
    out
}

/// `inspect` (and `eval`) refuse the crafted file naming key and value.
fn refused(dir: &Path, key: &str, value: Value, needles: &[&str]) {
    let p = crafted(dir, key, &[(key, value.clone())]);
    for cmd in ["inspect", "score"] {
        let o = run(&[cmd, s(&p)]);
        for n in needles {
            assert_one_line_error(&o, n);
        }
        assert!(stderr(&o).contains(key), "{key} = {value}: {}", stderr(&o));
        assert!(stderr(&o).contains(s(&p)), "names the file: {}", stderr(&o));
    }
}

#[test]
fn bad_head_counts_are_refused_not_replaced() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // The untouched file: 4 heads, from the file.
    let ok = crafted(d, "ok", &[]);
    let j = inspect_json(&ok, &[]);
    assert_eq!(j["encoder_attention_heads"], 4);
    assert_eq!(j["provenance"]["encoder_attention_heads"], "checkpoint");
    for (v, shown) in [
        (json!(-4), "-4"),
        (json!(0), "0"),
        (json!(4.5), "4.5"),
        (json!("four"), "\"four\""),
        (json!(true), "True"),
    ] {
        refused(
            d,
            "encoder_attention_heads",
            v,
            &[shown, "not a positive integer"],
        );
    }
    // Absurd or not dividing the width: the divisibility rule names both.
    for v in [3u64, 1_000_000_000, 1 << 62] {
        refused(
            d,
            "decoder_attention_heads",
            json!(v),
            &[&v.to_string(), "does not divide decoder_embed_dim = 64"],
        );
    }
}

#[test]
fn unknown_activation_and_non_boolean_flags_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    refused(
        d,
        "activation_fn",
        json!("sigmoid"),
        &["\"sigmoid\"", "not a known activation"],
    );
    refused(
        d,
        "activation_fn",
        json!(3),
        &["= 3", "not a known activation"],
    );
    for (v, shown) in [
        (json!("maybe"), "\"maybe\""),
        (json!(2), "= 2"),
        (json!(0.5), "0.5"),
    ] {
        refused(d, "encoder_normalize_before", v, &[shown, "not a boolean"]);
    }
    refused(
        d,
        "no_scale_embedding",
        json!("yes"),
        &["\"yes\"", "not a boolean"],
    );
    // What fairseq itself writes stays accepted: 0/1 and "true"/"false".
    let p = crafted(
        d,
        "bools",
        &[
            ("encoder_normalize_before", json!(0)),
            ("decoder_normalize_before", json!("false")),
        ],
    );
    inspect_json(&p, &[]);
}

#[test]
fn absurd_position_counts_are_refused_and_large_ones_cost_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for key in ["max_source_positions", "max_target_positions"] {
        for v in [1_000_000_000u64, 1 << 62] {
            refused(d, key, json!(v), &[&v.to_string(), "absurd"]);
        }
        refused(d, key, json!(0), &["= 0", "not a positive integer"]);
        refused(d, key, json!(-1), &["= -1", "not a positive integer"]);
    }
    // The largest accepted value decodes like the original: the native
    // engine computes sinusoidal rows past its first 1026 when it meets
    // them, it never sizes a table from the config's claim.
    let max = admin_convert::spec::MAX_POSITIONS as u64;
    let big = crafted(
        d,
        "big",
        &[
            ("max_source_positions", json!(max)),
            ("max_target_positions", json!(max)),
        ],
    );
    let data = fixture("data-bin-deepnet-fairseq08");
    let expect = fixture("admin-deepnet-fairseq08/generate-best.txt");
    let o = run(&[
        "eval",
        s(&big),
        "--data",
        s(&data),
        "--beam",
        "4",
        "--lenpen",
        "0.6",
        "--remove-bpe",
        "--quiet",
        "--expect-fairseq",
        s(&expect),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("200/200 hypotheses identical"),
        "{}",
        stdout(&o)
    );
    assert_eq!(inspect_json(&big, &[])["max_target_positions"], max);
}

/// `score` checks the dictionaries against the embedding tables, like `eval`.
#[test]
fn score_refuses_a_dictionary_that_does_not_fit() {
    let ckpt = fixture("admin-deepnet-fairseq08/checkpoint_best.pt");
    let wrong = fixture("data-bin-fairseq08");
    let o = run(&[
        "score",
        s(&ckpt),
        "--src",
        s(&fixture("corpus/bpe/test.src")),
        "--ref",
        s(&fixture("corpus/bpe/test.tgt")),
        "--dict-dir",
        s(&wrong),
    ]);
    assert_one_line_error(
        &o,
        "has 144 entries but the model's source embedding has 88 rows",
    );
    // Binarized data whose dictionaries do not fit: the same error.
    let o = run(&["score", s(&ckpt), "--data", s(&wrong)]);
    assert_one_line_error(&o, "wrong dictionary?");
}
