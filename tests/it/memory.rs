//! Peak memory of `fold`, `export --onnx`, `inspect`, `average` and `eval`
//! on a mid-size model, measured as the child's own `ru_maxrss`
//! ([`crate::limits::run_capped`]; it counts the touched pages of the
//! memory-mapped input too, so a reader that keeps them shows here).
//!
//! The model is the admin-torch fixture scaled up by the crate's own writer
//! (d=512, FFN 2048, 3+3 layers, the fixture's vocabulary: 22M parameters,
//! 88 MB of float32 weights, random values, ω = 1), big enough that the
//! weights dominate the process's fixed cost (~30 MB).
//!
//! The bound is derived from the weight bytes W plus 64 MB of fixed cost.
//! fold peaked at 9.7 W before issue 13 (original and folded model, the
//! engine's packed copies, the mapped input and a converted copy for the
//! writer side by side); it now runs the original, frees it, runs the
//! folded model and streams it to the file: at most two of {original,
//! folded, one engine} at a time, bound 3 W. export peaked at 3.4 W; the
//! graphs now hold no weights, which stream to one data file (measured
//! 2.1 W), bound 2.5 W. `inspect` holds the recognised model and one input
//! tensor (bound 1.5 W), `eval` the model while it is packed layer by layer
//! into the engine (its float32 layers freed as packed; bound 1.5 W),
//! `average` one sum per storage and one input tensor (bound 1.5 W).
//! Measured numbers are printed (`--nocapture`); the README's bigmodel
//! table has the Transformer-big's.

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
const FOLD_K: f64 = 3.0;
/// Peak RSS over weight bytes allowed for export.
const EXPORT_K: f64 = 2.5;

/// Peak RSS over weight bytes allowed for inspect, eval and average.
const READ_K: f64 = 1.5;

#[test]
fn inspect_eval_and_average_peak_rss_follow_the_weight_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ckpt = tmp.path().join("mid.pt");
    let w = build_mid_size(&ckpt);
    let (c, data) = (ckpt.to_str().expect("utf-8"), fixture("data-bin"));
    let data = data.to_str().expect("utf-8");
    let limit = Duration::from_secs(600);
    let avg = tmp.path().join("avg.pt");
    let avg = avg.to_str().expect("utf-8");
    let runs: [(&str, Vec<&str>); 3] = [
        ("inspect", vec!["inspect", c]),
        (
            "eval",
            vec!["eval", c, data, "--beam", "2", "--max-len-b", "4", "-q"],
        ),
        ("average", vec!["average", c, c, c, "-o", avg]),
    ];
    let mb = |x: u64| x as f64 / (1 << 20) as f64;
    for (what, args) in runs {
        let r = run_capped(&args, 16 << 30, limit);
        assert_eq!(r.code, Some(0), "{what}: {}", r.stderr);
        eprintln!(
            "weights {:.0} MB: {what} peak {:.0} MB ({:.2} W)",
            mb(w),
            mb(r.peak_rss),
            r.peak_rss as f64 / w as f64
        );
        let bound = (READ_K * w as f64) as u64 + (64 << 20);
        assert!(
            r.peak_rss <= bound,
            "{what}: peak RSS {:.0} MB above {READ_K} × {:.0} MB weights + 64 MB",
            mb(r.peak_rss),
            mb(w)
        );
    }
}

/// Resident KiB of the mapping that starts at `addr` (`/proc/self/smaps`).
fn mapping_rss_kib(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut inside = false;
    for line in smaps.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        if let Some((a, _)) = range.split_once('-').filter(|_| !line.ends_with(" kB")) {
            inside = usize::from_str_radix(a, 16).ok() == Some(addr);
        } else if inside && line.starts_with("Rss:") {
            return line
                .split_whitespace()
                .nth(1)
                .expect("kB")
                .parse()
                .expect("number");
        }
    }
    panic!("mapping at {addr:#x} not in /proc/self/smaps");
}

#[test]
fn dropping_mapped_bytes_releases_their_pages() {
    use admin_convert::tensor::Bytes;
    use std::io::Write;
    use std::sync::Arc;
    let mut f = tempfile::tempfile().expect("temp file");
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).expect("write");
    // SAFETY: a private temp file nobody else writes.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.expect("map"));
    let addr = map.as_ptr() as usize;
    let t = Bytes::Mapped {
        map: map.clone(),
        start: 4096 + 100,
        len: (12 << 20) + 7,
    };
    let sum: u64 = t.as_slice().iter().map(|&b| b as u64).sum();
    let touched = mapping_rss_kib(addr);
    assert!(touched >= 12 << 10, "read 12 MiB, {touched} KiB resident");
    let again = t.clone();
    drop(t);
    let left = mapping_rss_kib(addr);
    // Whole pages inside the range are gone; the partial ones at its ends
    // and the kernel's fault-around of the pages beside it may stay.
    assert!(left < 1024, "{left} KiB still resident after the drop");
    // Released pages read back from the file: same bytes.
    assert_eq!(again.as_slice().iter().map(|&b| b as u64).sum::<u64>(), sum);
    assert_eq!(
        again.as_slice(),
        &data[4096 + 100..4096 + 100 + (12 << 20) + 7]
    );
}
