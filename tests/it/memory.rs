//! Peak memory of `fold` and `export --onnx` on a mid-size model, measured
//! as the child's own `ru_maxrss` ([`crate::limits::run_capped`]).
//!
//! The model is the admin-torch fixture scaled up by the crate's own writer
//! (d=512, FFN 2048, 3+3 layers, the fixture's vocabulary: 22M parameters,
//! 88 MB of float32 weights, random values, ω = 1), big enough that the
//! weights dominate the process's fixed cost (~30 MB).
//!
//! The bound is derived from the weight bytes W plus 64 MB of fixed cost:
//! measured on 2026-11-29, fold peaks at 9.7 W (original and folded model,
//! the native engine's packed copies and the self-check's log-probs side by
//! side) and export at 2.1 W (the model and the checkpoint it was read
//! from; the graphs hold no weights, which stream to one data file; 3.4 W
//! before); the bounds (11 W, 2.5 W) guard against regressions. Issue
//! 13's aims (fold ≤ 3 W, export ≤ 2.4 W on the Transformer-big) are
//! stricter and not met yet; see the README's bigmodel table.

use crate::common::fixture;
use crate::limits::run_capped;
use admin_convert::read::Checkpoint;
use admin_convert::tensor::RawTensor;
use admin_convert::write::torch::{self as torch_write, Carried};
use std::path::Path;
use std::time::Duration;

const D: usize = 512;
const F: usize = 2048;
const LAYERS: usize = 3;

/// Scaled copy of the admin-torch fixture; returns the weight bytes.
fn build_mid_size(dst: &Path) -> u64 {
    let ckpt =
        Checkpoint::open(&fixture("admintorch-fairseq012/checkpoint_best.pt")).expect("fixture");
    let mut carried = Carried::from_checkpoint(&ckpt);
    let args = serde_json::json!({
        "encoder_embed_dim": D, "decoder_embed_dim": D, "decoder_output_dim": D,
        "decoder_input_dim": D, "encoder_ffn_embed_dim": F, "decoder_ffn_embed_dim": F,
        "encoder_layers": LAYERS, "decoder_layers": LAYERS,
        "encoder_attention_heads": 8, "decoder_attention_heads": 8,
    });
    carried.set_model_args(args.as_object().expect("an object"));
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut noise = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
            })
            .collect()
    };
    let mut model = vec![];
    let mut bytes = 0u64;
    for e in &ckpt.entries {
        let t = ckpt.tensor(&e.name).expect("tensor");
        let layer0 = e.name.contains(".layers.0.");
        if e.name.contains(".layers.") && !layer0 {
            continue;
        }
        let shape: Vec<usize> = t
            .shape
            .iter()
            .map(|&s| match s {
                64 => D,
                128 => F,
                s => s,
            })
            .collect();
        let n: usize = shape.iter().product();
        let make = |name: &str, noise: &mut dyn FnMut(usize) -> Vec<f32>| {
            if name.ends_with("version") {
                t.clone()
            } else if shape.len() == 1 {
                let v = if name.ends_with("norm.weight") || name.ends_with("omega") {
                    1.0
                } else {
                    0.0
                };
                RawTensor::from_f32(shape.clone(), &vec![v; n])
            } else {
                RawTensor::from_f32(shape.clone(), &noise(n))
            }
        };
        let copies = if layer0 { LAYERS } else { 1 };
        for l in 0..copies {
            let name = e.name.replace(".layers.0.", &format!(".layers.{l}."));
            let t = make(&name, &mut noise);
            if !name.ends_with("version") && name != "decoder.embed_tokens.weight" {
                bytes += (n * 4) as u64;
            }
            model.push((name, t));
        }
    }
    // Shared embeddings, as fairseq saves them.
    let emb = model
        .iter()
        .find(|(k, _)| k == "encoder.embed_tokens.weight")
        .expect("embeddings")
        .1
        .clone();
    for (k, t) in model.iter_mut() {
        if k == "decoder.embed_tokens.weight" || k == "decoder.output_projection.weight" {
            *t = emb.clone();
        }
    }
    torch_write::write(dst, &carried.with_model(model)).expect("write");
    bytes
}

#[test]
fn fold_and_export_peak_rss_follow_the_weight_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ckpt = tmp.path().join("mid.pt");
    let w = build_mid_size(&ckpt);
    assert!(w > 80 << 20, "mid-size model: {w} bytes of weights");
    let (c, dicts) = (ckpt.to_str().expect("utf-8"), fixture("data-bin"));
    let dicts = dicts.to_str().expect("utf-8");
    let base = 64u64 << 20;
    let limit = Duration::from_secs(600);
    let folded = tmp.path().join("folded.safetensors");
    let fold = run_capped(
        &[
            "fold",
            c,
            "-o",
            folded.to_str().expect("utf-8"),
            "--dict-dir",
            dicts,
            "--probe-sentences",
            "8",
        ],
        16 << 30,
        limit,
    );
    assert_eq!(fold.code, Some(0), "fold: {}", fold.stderr);
    let out = tmp.path().join("onnx");
    let export = run_capped(
        &[
            "export",
            c,
            "--onnx",
            "-o",
            out.to_str().expect("utf-8"),
            "--dict-dir",
            dicts,
        ],
        16 << 30,
        limit,
    );
    assert_eq!(export.code, Some(0), "export: {}", export.stderr);
    let mb = |x: u64| x as f64 / (1 << 20) as f64;
    eprintln!(
        "weights {:.0} MB: fold peak {:.0} MB ({:.2} W), export peak {:.0} MB ({:.2} W)",
        mb(w),
        mb(fold.peak_rss),
        fold.peak_rss as f64 / w as f64,
        mb(export.peak_rss),
        export.peak_rss as f64 / w as f64
    );
    for (what, peak, k) in [
        ("fold", fold.peak_rss, FOLD_K),
        ("export", export.peak_rss, EXPORT_K),
    ] {
        let bound = (k * w as f64) as u64 + base;
        assert!(
            peak <= bound,
            "{what}: peak RSS {:.0} MB above {k} × {:.0} MB weights + {:.0} MB",
            mb(peak),
            mb(w),
            mb(base)
        );
    }
}

/// Peak RSS over weight bytes allowed for fold (see the module doc).
const FOLD_K: f64 = 11.0;
/// Peak RSS over weight bytes allowed for export: measured 2.14 W
/// (2026-11-29, weights written once and streamed; 3.4 W before).
const EXPORT_K: f64 = 2.5;
