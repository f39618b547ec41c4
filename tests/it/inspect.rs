//! `admin-convert inspect` on every fixture checkpoint: family, naming and
//! hyper-parameters as recorded by the real fairseq runs that made them.

use crate::common::*;
use serde_json::Value;

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// The shape every fixture model shares: 2+2 layers, d=64, FFN 128, 4 heads, vocab 144.
fn assert_toy_shape(v: &Value) {
    for (k, want) in [
        ("encoder_layers", 2),
        ("decoder_layers", 2),
        ("encoder_embed_dim", 64),
        ("decoder_embed_dim", 64),
        ("encoder_ffn_embed_dim", 128),
        ("decoder_ffn_embed_dim", 128),
        ("encoder_attention_heads", 4),
        ("decoder_attention_heads", 4),
        ("src_vocab", 144),
        ("tgt_vocab", 144),
    ] {
        assert_eq!(u(v, k), want, "{k}");
    }
    assert_eq!(v["activation_fn"], "relu");
    assert_eq!(v["share_all_embeddings"], true);
    assert_eq!(v["share_decoder_input_output_embed"], true);
    assert_eq!(v["encoder_normalize_before"], false);
    assert_eq!(v["positions"], "sinusoidal");
    assert_eq!(v["nan_count"], 0);
    assert_eq!(v["inf_count"], 0);
    assert_eq!(v["mixed_float_dtypes"], false);
}

#[test]
fn admin_fork_checkpoint() {
    let v = inspect_json(&fixture("admin-fairseq08/checkpoint_best.pt"), &[]);
    assert_eq!(v["format"], "torch-legacy");
    assert_eq!(v["family"], "admin-fork");
    assert_eq!(v["attention_layout"], "fused");
    assert_eq!(v["config_origin"], "args");
    assert_eq!(v["arch"], "transformer");
    assert_eq!(v["init_type"], "adaptive");
    assert_toy_shape(&v);
    // 2 encoder layers × 2 sublayers + 2 decoder layers × 3, each a trained [64] ω.
    let scales = v["scales"].as_array().expect("scales");
    assert_eq!(scales.len(), 10);
    // Ranges measured independently with torch (fixtures/independent/make.py's
    // reading of the same file): (sublayer, min, mean, max).
    let expected = [
        ("encoder.0.self_attn", 0.925442, 1.038882, 1.181875),
        ("encoder.0.ffn", 1.213625, 1.318232, 1.395808),
        ("encoder.1.self_attn", 1.423334, 1.522989, 1.605532),
        ("encoder.1.ffn", 1.472751, 1.590352, 1.690113),
        ("decoder.0.self_attn", 0.792403, 0.987139, 1.162182),
        ("decoder.0.cross_attn", 1.198953, 1.289001, 1.398300),
        ("decoder.0.ffn", 1.229770, 1.339368, 1.412459),
        ("decoder.1.self_attn", 1.475150, 1.598064, 1.687044),
        ("decoder.1.cross_attn", 1.473759, 1.570646, 1.660857),
        ("decoder.1.ffn", 1.651912, 1.753704, 1.862317),
    ];
    for (s, (name, min, mean, max)) in scales.iter().zip(expected) {
        assert_eq!(s["sublayer"], name);
        assert_eq!(s["kind"], "omega");
        assert_eq!(s["len"], 64);
        for (k, want) in [("min", min), ("mean", mean), ("max", max)] {
            let got = s[k].as_f64().expect("number");
            assert!((got - want).abs() < 2e-6, "{name} {k}: {got} vs {want}");
        }
    }
    // The decoder table is the encoder's (one storage); 0.8 stores no output projection.
    let tied = v["tied_tensors"].as_array().expect("tied");
    assert!(tied
        .iter()
        .any(|p| p[0] == "decoder.embed_tokens.weight" && p[1] == "encoder.embed_tokens.weight"));
    assert_eq!(v["dtypes"]["f32"].as_u64(), Some(u(&v, "tensors")));
}

#[test]
fn fairseq_012_post_ln() {
    let v = inspect_json(&fixture("postln-fairseq012/checkpoint_best.pt"), &[]);
    assert_eq!(v["format"], "torch-zip");
    assert_eq!(v["family"], "post-ln");
    assert_eq!(v["attention_layout"], "separate");
    assert_eq!(v["config_origin"], "cfg");
    assert_toy_shape(&v);
    assert!(v["scales"].as_array().expect("scales").is_empty());
    let tied = v["tied_tensors"].as_array().expect("tied");
    assert!(tied
        .iter()
        .any(|p| p[0] == "decoder.output_projection.weight"));
}

#[test]
fn fairseq_0122_fast_path_shadows_are_ignored() {
    let v = inspect_json(&fixture("postln-fairseq0122/checkpoint_best.pt"), &[]);
    assert_eq!(v["family"], "post-ln");
    assert!(v["naming"].as_str().expect("naming").contains("0.12.2"));
    assert_toy_shape(&v);
    let ignored: Vec<&str> = v["ignored_tensors"]
        .as_array()
        .expect("ignored")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // eight shadows per encoder layer
    let shadows = ignored
        .iter()
        .filter(|n| n.ends_with("_weight") || n.ends_with("_bias"))
        .count();
    assert_eq!(shadows, 16, "{ignored:?}");
    assert!(ignored.contains(&"encoder.embed_positions._float_tensor"));
}

#[test]
fn admin_torch_vector_omega() {
    let v = inspect_json(&fixture("admintorch-fairseq012/checkpoint_best.pt"), &[]);
    assert_eq!(v["family"], "admin-torch-vector");
    assert_eq!(v["arch"], "transformer_admintorch");
    assert_toy_shape(&v);
    let scales = v["scales"].as_array().expect("scales");
    assert_eq!(scales.len(), 10);
    let first = &scales[0];
    assert_eq!(first["sublayer"], "encoder.0.self_attn");
    assert!((first["min"].as_f64().expect("min") - 1.390361).abs() < 2e-6);
    assert!((first["max"].as_f64().expect("max") - 1.651466).abs() < 2e-6);
}

#[test]
fn bare_safetensors_needs_heads_and_says_so() {
    let p = fixture("independent/postln-fairseq012-best.safetensors");
    let o = run(&["inspect", p.to_str().expect("utf-8")]);
    assert_one_line_error(&o, "attention heads");
    assert!(stderr(&o).contains("activation"), "{}", stderr(&o));
    // With the missing facts given as flags, shapes tell the rest.
    let v = inspect_json(&p, &["--heads", "4", "--activation", "relu"]);
    assert_eq!(v["format"], "safetensors");
    assert_eq!(v["config_origin"], "none");
    assert_eq!(v["provenance"]["encoder_attention_heads"], "flag");
    assert_eq!(v["provenance"]["share_all_embeddings"], "tensors");
    assert_toy_shape(&v);
    // An --arch preset supplies heads (8 for `transformer`) and activation.
    let v = inspect_json(&p, &["--arch", "transformer"]);
    assert_eq!(v["encoder_attention_heads"], 8);
    assert_eq!(v["provenance"]["encoder_attention_heads"], "preset");
    assert!(v["notes"]
        .to_string()
        .contains("--arch transformer describes 512d"));
}

#[test]
fn bare_safetensors_of_admin_fork() {
    let p = fixture("independent/admin-fairseq08-best.safetensors");
    let v = inspect_json(&p, &["--heads", "4", "--activation", "relu"]);
    assert_eq!(v["family"], "admin-fork");
    assert_eq!(v["attention_layout"], "fused");
    assert_toy_shape(&v);
}

#[test]
fn human_table_mentions_the_essentials() {
    let o = run(&[
        "inspect",
        fixture("admin-fairseq08/checkpoint_best.pt")
            .to_str()
            .expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for needle in [
        "admin-fork",
        "torch-legacy",
        "2 encoder + 2 decoder",
        "64 / 128 / 4",
        "144",
        "decoder.1.ffn",
    ] {
        assert!(s.contains(needle), "{needle:?} not in:\n{s}");
    }
}
