//! `admin-convert export CKPT --onnx -o DIR`: encoder, incremental decoder
//! and teacher-forced decoder graphs (fp32, and fp16 with `--fp16`), with
//! the dictionaries beside them so the directory is a complete model.

use super::{load, ModelArgs};
use crate::export::{self, ExportOptions};
use crate::transform::fold::{fold_with_summary, FoldMode};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ExportArgs {
    /// Checkpoint (.pt or .safetensors).
    checkpoint: PathBuf,
    /// Write ONNX graphs (the only export format).
    #[arg(long)]
    onnx: bool,
    /// Output directory (created if missing).
    #[arg(short, long)]
    output: PathBuf,
    /// Also write fp16 graphs (`*_fp16.onnx`).
    #[arg(long)]
    fp16: bool,
    /// Fold residual scales first (the graphs can also carry them unfolded).
    #[arg(long)]
    fold: bool,
    /// Directory with dict.src.txt / dict.tgt.txt to ship with the graphs.
    #[arg(long)]
    dict_dir: Option<PathBuf>,
    /// Store weights as ONNX external data (automatic above 2 GB).
    #[arg(long)]
    external_data: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: ExportArgs) -> Result<ExitCode> {
    if !a.onnx {
        bail!("say --onnx (the only export format)");
    }
    let (ckpt, rec) = load(&a.checkpoint, &a.model)?;
    let dicts = match &a.dict_dir {
        Some(d) => Some(super::fold::read_dicts(d)?),
        None => ckpt
            .embedded_dicts()
            .map(|(s, t)| (s.to_string(), t.to_string())),
    };
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
    for p in &written {
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        println!(
            "wrote {} ({})",
            p.display(),
            crate::inspect::human_bytes(size)
        );
    }
    if dicts.is_none() {
        println!(
            "note: no dictionaries shipped (pass --dict-dir DIR so eval/score need nothing else)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
