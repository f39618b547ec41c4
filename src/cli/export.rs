//! `admin-convert export CKPT (--onnx | --ct2) -o DIR`: a model directory
//! for a deployment runtime.
//!
//! - `--onnx`: encoder, incremental decoder and teacher-forced decoder
//!   graphs (fp32, and fp16 with `--fp16`) for our own decoder, with the
//!   dictionaries beside them so the directory is a complete model.
//! - `--ct2`: a CTranslate2 directory ([`crate::write::ct2`]): residual
//!   scales folded and the fold measured first (exit 1 above
//!   `--tolerance`), weights in CTranslate2's `--quantization`.
//! - `--hf`: a transformers directory ([`crate::write::hf`]), folded and
//!   measured the same way; refused where no class holds the model exactly.

use super::{load, ModelArgs};
use crate::data::locate::{self, Query};
use crate::export::{self, ExportOptions};
use crate::spec::Model;
use crate::transform::fold::{fold_with_summary, FoldMode};
use crate::verify::{self, Probe};
use crate::write::output::{self, Kind};
use crate::write::{ct2, hf};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
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
    /// Write a Hugging Face transformers directory (MarianMTModel; residual
    /// scales folded). Refused (exit 1) where no class holds the model exactly.
    #[arg(long)]
    hf: bool,
    /// CTranslate2 weight type: float32 (default), float16, bfloat16, int8,
    /// int8_float32, int8_float16, int8_bfloat16.
    #[arg(long, default_value = "float32")]
    quantization: String,
    /// Largest acceptable max |Δ log-prob| between original and folded model.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
    /// Output directory (default: beside the input, CKPT.onnx/ or CKPT.ct2/). Written
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
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: ExportArgs) -> Result<ExitCode> {
    match (a.onnx, a.ct2, a.hf) {
        (true, false, false) => run_onnx(a),
        (false, true, false) => run_folded(a, Kind::Ct2),
        (false, false, true) => run_folded(a, Kind::Hf),
        _ => bail!("say one of --onnx, --ct2, --hf"),
    }
}

/// The output directory for `kind`, checked against the inputs.
fn output_dir(a: &ExportArgs, kind: Kind) -> Result<PathBuf> {
    let out = output::choose(a.output.as_deref(), &a.checkpoint, kind, a.force)?;
    let mut inputs = vec![a.checkpoint.clone()];
    if let Some(d) = &a.dict_dir {
        inputs.extend(output::files_in(d));
    }
    output::check_dir(
        &out,
        &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        a.force,
    )?;
    Ok(out)
}

fn run_onnx(a: ExportArgs) -> Result<ExitCode> {
    let out = output_dir(&a, Kind::Onnx)?;
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
        rec.model
    };
    let opts = ExportOptions {
        fp16: a.fp16,
        dictionaries: dicts
            .as_ref()
            .map(|d| (d.src_text.clone(), d.tgt_text.clone())),
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

/// Fold `m` exactly and measure the fold on 16 random probe sentence
/// pairs; returns the folded model and the max |Δ log-prob|.
pub fn fold_checked(m: &Model) -> Result<(Model, f32)> {
    let (folded, _) = fold_with_summary(m, FoldMode::Exact);
    let c = &m.config;
    let probe = Probe::random(16, c.src_vocab, c.tgt_vocab, 24, 1);
    let diff = verify::max_lprob_diff(m, &folded, &probe)
        .context("running the original and folded models")?;
    Ok((folded, diff))
}

fn run_folded(a: ExportArgs, kind: Kind) -> Result<ExitCode> {
    let q = ct2::Quantization::parse(&a.quantization).with_context(|| {
        format!(
            "unknown --quantization {} ({})",
            a.quantization,
            ct2::Quantization::NAMES
        )
    })?;
    let out = output_dir(&a, kind)?;
    let (ckpt, rec) = load(&a.checkpoint, &a.model)?;
    let query = Query::new(a.source_lang.as_deref(), a.target_lang.as_deref(), "test")?;
    let Some(dicts) = super::checkpoint_dicts(&ckpt, a.dict_dir.as_deref(), &query)? else {
        bail!(
            "{}: no dictionaries in or beside the checkpoint: pass --dict-dir DIR",
            a.checkpoint.display()
        );
    };
    drop(ckpt);
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
    if kind == Kind::Hf {
        if let Some(why) = hf::unsupported(&folded) {
            eprintln!(
                "{}: no transformers class holds this model exactly ({why}); not written",
                a.checkpoint.display()
            );
            return Ok(ExitCode::from(1));
        }
    }
    let c = &folded.config;
    let names = if kind == Kind::Hf {
        ct2::symbols
    } else {
        ct2::vocabulary
    };
    let src = names(&dicts.src_text, c.src_vocab).context("source dictionary")?;
    let tgt = names(&dicts.tgt_text, c.tgt_vocab).context("target dictionary")?;
    let written = output::publish_dir(&out, |tmp| {
        match kind {
            Kind::Hf => hf::write_dir(&folded, (&src, &tgt), tmp),
            _ => ct2::write_dir(&folded, (&src, &tgt), q, tmp),
        }
        .with_context(|| format!("{}: export", out.display()))
    })?;
    for p in &written {
        let name = p.file_name().map(PathBuf::from).unwrap_or_default();
        let size = std::fs::metadata(out.join(&name))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "wrote {} ({})",
            out.join(name).display(),
            crate::inspect::human_bytes(size)
        );
    }
    Ok(ExitCode::SUCCESS)
}
