//! `admin-convert export CKPT --onnx -o DIR`: encoder, incremental decoder
//! and teacher-forced decoder graphs (fp32, and fp16 with `--fp16`), with
//! the dictionaries beside them so the directory is a complete model.

use super::{load, ModelArgs};
use crate::data::locate::{self, Query};
use crate::export::{self, ExportOptions};
use crate::transform::fold::{fold_with_summary, FoldMode};
use crate::write::output::{self, Kind};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ExportArgs {
    /// Checkpoint (.pt or .safetensors).
    checkpoint: PathBuf,
    /// Write ONNX graphs (the only export format).
    #[arg(long)]
    onnx: bool,
    /// Output directory (default: beside the input, CKPT.onnx/). Written
    /// into a temporary directory first, then renamed into place.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
    /// Also write fp16 graphs (`*_fp16.onnx`).
    #[arg(long)]
    fp16: bool,
    /// Fold residual scales first (the graphs can also carry them unfolded).
    #[arg(long)]
    fold: bool,
    /// Directory with the dictionaries to ship with the graphs (default: the
    /// checkpoint's own, else those of the data directory it records).
    #[arg(long)]
    dict_dir: Option<PathBuf>,
    /// Source language of --dict-dir's dict.SRC.txt (fairseq's -s).
    #[arg(long, short = 's')]
    source_lang: Option<String>,
    /// Target language (fairseq's -t).
    #[arg(long, short = 't')]
    target_lang: Option<String>,
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
    let out = output::choose(a.output.as_deref(), &a.checkpoint, Kind::Onnx, a.force)?;
    let mut inputs = vec![a.checkpoint.clone()];
    if let Some(d) = &a.dict_dir {
        inputs.extend(output::files_in(d));
    }
    output::check_dir(
        &out,
        &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        a.force,
    )?;
    let (ckpt, rec) = load(&a.checkpoint, &a.model)?;
    let q = Query::new(a.source_lang.as_deref(), a.target_lang.as_deref(), "test")?;
    let dicts = super::checkpoint_dicts(&ckpt, a.dict_dir.as_deref(), &q)?;
    let c = &rec.model.config;
    if let Some(d) = &dicts {
        locate::check_vocab(d, c.src_vocab, c.tgt_vocab, &a.checkpoint)?;
    }
    let data_dir = locate::recorded_dir(&ckpt, &q).ok();
    drop(ckpt);
    let model = if a.fold {
        let folded = fold_with_summary(&rec.model, FoldMode::Exact).0;
        let check = super::fold_check(&rec.model, &folded)?;
        println!("{}", super::fold_check_line(&check));
        folded
    } else {
        rec.model.clone()
    };
    let opts = ExportOptions {
        fp16: a.fp16,
        dictionaries: dicts
            .as_ref()
            .map(|d| (d.src_text.clone(), d.tgt_text.clone())),
        external_data: a.external_data,
    };
    let written = output::publish_dir(&out, |tmp| {
        let graphs = export::write_dir(&model, &opts, tmp)
            .with_context(|| format!("{}: export", out.display()))?;
        let mut names: Vec<PathBuf> = graphs
            .iter()
            .filter_map(|p| p.file_name().map(PathBuf::from))
            .collect();
        let mut text_files: Vec<(&str, String)> = vec![];
        if let Some(d) = &dicts {
            text_files.push(("dict.src.txt", d.src_text.clone()));
            text_files.push(("dict.tgt.txt", d.tgt_text.clone()));
        }
        if let Some(d) = data_dir.as_ref().and_then(|d| d.canonicalize().ok()) {
            text_files.push((locate::EXPORT_DATA_FILE, format!("{}\n", d.display())));
        }
        for (name, text) in text_files {
            crate::write::atomic_write(&tmp.join(name), |w| Ok(w.write_all(text.as_bytes())?))?;
            names.push(PathBuf::from(name));
        }
        Ok(names)
    })?;
    for name in &written {
        let p = out.join(name);
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
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
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
