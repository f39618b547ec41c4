//! `admin-convert export CKPT (--onnx | --ct2 | --hf) -o DIR`: a model
//! directory for a deployment runtime.
//!
//! - `--onnx`: encoder, incremental decoder and teacher-forced decoder
//!   graphs (fp32, and fp16 with `--fp16`) for our own decoder.
//! - `--ct2`: a CTranslate2 directory ([`crate::write::ct2`]), residual
//!   scales folded and self-checked first, `--quantization` as CTranslate2
//!   names it.
//!
//! The dictionaries come from `--dict-dir` or the checkpoint's metadata.

use super::{load, ModelArgs};
use crate::export::{self, ExportOptions};
use crate::spec::Model;
use crate::transform::fold::{fold_with_summary, FoldMode};
use crate::verify::{self, Probe};
use crate::write::ct2;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct ExportArgs {
    /// Checkpoint (.pt or .safetensors).
    checkpoint: PathBuf,
    /// Write ONNX graphs for admin-convert's decoder.
    #[arg(long)]
    onnx: bool,
    /// Write a CTranslate2 model directory (residual scales folded).
    #[arg(long)]
    ct2: bool,
    /// CTranslate2 weight type: float32 (default), float16, bfloat16, int8,
    /// int8_float32, int8_float16, int8_bfloat16.
    #[arg(long, default_value = "float32")]
    quantization: String,
    /// Output directory (created if missing).
    #[arg(short, long)]
    output: PathBuf,
    /// Also write fp16 graphs (`*_fp16.onnx`).
    #[arg(long)]
    fp16: bool,
    /// Fold residual scales first (ONNX graphs can also carry them unfolded).
    #[arg(long)]
    fold: bool,
    /// Directory with dict.src.txt / dict.tgt.txt to ship with the model.
    #[arg(long)]
    dict_dir: Option<PathBuf>,
    /// Store weights as ONNX external data (automatic above 2 GB).
    #[arg(long)]
    external_data: bool,
    /// Largest acceptable max |Δ log-prob| between original and folded model.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: ExportArgs) -> Result<ExitCode> {
    match (a.onnx, a.ct2) {
        (true, false) => run_onnx(a),
        (false, true) => run_ct2(a),
        _ => bail!("say one of --onnx, --ct2"),
    }
}

fn print_written(written: &[PathBuf]) {
    for p in written {
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        println!(
            "wrote {} ({})",
            p.display(),
            crate::inspect::human_bytes(size)
        );
    }
}

fn dictionaries(
    a: &ExportArgs,
    ckpt: &crate::read::Checkpoint,
) -> Result<Option<(String, String)>> {
    Ok(match &a.dict_dir {
        Some(d) => Some(super::fold::read_dicts(d)?),
        None => ckpt
            .embedded_dicts()
            .map(|(s, t)| (s.to_string(), t.to_string())),
    })
}

fn run_onnx(a: ExportArgs) -> Result<ExitCode> {
    let (ckpt, rec) = load(&a.checkpoint, &a.model)?;
    let dicts = dictionaries(&a, &ckpt)?;
    let model = if a.fold {
        fold_with_summary(&rec.model, FoldMode::Exact).0
    } else {
        rec.model.clone()
    };
    let opts = ExportOptions {
        fp16: a.fp16,
        dictionaries: dicts.clone(),
        external_data: a.external_data,
    };
    let written = export::write_dir(&model, &opts, &a.output)
        .with_context(|| format!("{}: export", a.output.display()))?;
    if let Some((s, t)) = &dicts {
        for (name, text) in [("dict.src.txt", s), ("dict.tgt.txt", t)] {
            let p = a.output.join(name);
            crate::write::atomic_write(&p, |w| {
                std::io::Write::write_all(w, text.as_bytes())?;
                Ok(())
            })?;
        }
    }
    print_written(&written);
    if dicts.is_none() {
        println!(
            "note: no dictionaries shipped (pass --dict-dir DIR so eval/score need nothing else)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Fold `m` exactly and measure the fold on random probe sentences;
/// returns the folded model and max |Δ log-prob|.
pub fn fold_checked(m: &Model) -> Result<(Model, f32)> {
    let (folded, _) = fold_with_summary(m, FoldMode::Exact);
    let c = &m.config;
    let probe = Probe::random(16, c.src_vocab, c.tgt_vocab, 24, 1);
    let diff = verify::max_lprob_diff(m, &folded, &probe)
        .context("running the original and folded models")?;
    Ok((folded, diff))
}

fn need_dicts(d: Option<(String, String)>, path: &Path) -> Result<(String, String)> {
    match d {
        Some(d) => Ok(d),
        None => bail!(
            "{}: no dictionaries in the checkpoint: pass --dict-dir DIR (dict.src.txt, dict.tgt.txt)",
            path.display()
        ),
    }
}

fn run_ct2(a: ExportArgs) -> Result<ExitCode> {
    let q = ct2::Quantization::parse(&a.quantization).with_context(|| {
        format!(
            "unknown --quantization {} ({})",
            a.quantization,
            ct2::Quantization::NAMES
        )
    })?;
    let (ckpt, rec) = load(&a.checkpoint, &a.model)?;
    let (s, t) = need_dicts(dictionaries(&a, &ckpt)?, &a.checkpoint)?;
    let (folded, diff) = fold_checked(&rec.model)?;
    let ok = diff <= a.tolerance;
    println!(
        "fold check: max |Δ log-prob| = {diff:.3e} over 16 random probe sentence pairs (tolerance {:.0e}): {}",
        a.tolerance,
        if ok { "ok" } else { "FAILED" }
    );
    if !ok {
        println!("not written");
        return Ok(ExitCode::from(1));
    }
    let c = &folded.config;
    let src = ct2::vocabulary(&s, c.src_vocab).context("source dictionary")?;
    let tgt = ct2::vocabulary(&t, c.tgt_vocab).context("target dictionary")?;
    let written = ct2::write_dir(&folded, (&src, &tgt), q, &a.output)
        .with_context(|| format!("{}: CTranslate2 export", a.output.display()))?;
    print_written(&written);
    Ok(ExitCode::SUCCESS)
}
