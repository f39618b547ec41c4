//! `admin-convert average`: fairseq's `average_checkpoints.py` (see
//! [`crate::transform::average`]) with optional output dtype and fold. Folding is done after
//! averaging: the average goes to a temporary safetensors file that is recognised and folded.

use super::cast::{
    args_json, dtype_name, loss_phrase, lossy, out_format, refuse_overwrite, write_output,
    OutFormat, TensorLoss,
};
use super::ModelArgs;
use crate::read::Checkpoint;
use crate::recognise;
use crate::tensor::{DType, RawTensor};
use crate::transform::average::{average, last_checkpoints};
use crate::transform::cast::{cast_tensor, CastStats};
use crate::transform::fold::{fold_with_summary, FoldMode, FoldSummary};
use crate::verify::FoldCheck;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
pub struct AverageArgs {
    /// Checkpoints to average, summed in this order (fairseq's --inputs).
    inputs: Vec<PathBuf>,
    /// The N newest checkpointE.pt in DIR by epoch E, newest first (fairseq's --num-epoch-checkpoints).
    #[arg(long, num_args = 2, value_names = ["N", "DIR"], conflicts_with_all = ["inputs", "last_updates"])]
    last: Option<Vec<String>>,
    /// The N newest checkpoint_E_U.pt in DIR by update U, newest first (fairseq's --num-update-checkpoints).
    #[arg(long, num_args = 2, value_names = ["N", "DIR"], conflicts_with = "inputs")]
    last_updates: Option<Vec<String>>,
    /// Output file; .pt writes a torch zip checkpoint, .safetensors a safetensors file.
    #[arg(short, long)]
    output: PathBuf,
    /// Output float dtype (default fp32, as fairseq): fp32, fp16 or bf16.
    #[arg(long, value_enum, ignore_case = true)]
    dtype: Option<crate::transform::cast::FloatDType>,
    /// Write even if values overflow the output dtype.
    #[arg(long)]
    force: bool,
    /// Fold residual scales of the average into a standard fairseq transformer.
    #[arg(long)]
    fold: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Serialize)]
struct AverageReport {
    inputs: Vec<String>,
    output: String,
    format: OutFormat,
    tensors: usize,
    /// Output dtype of the float tensors.
    #[serde(serialize_with = "dtype_name")]
    dtype: DType,
    /// Input tensors per stored dtype (`f32`, `f16`, ...), over all inputs.
    input_dtypes: BTreeMap<&'static str, usize>,
    totals: CastStats,
    lossy_tensors: Vec<TensorLoss>,
    fold: Option<FoldSummary>,
    /// The fold's self-check (original vs folded average on the native engine).
    fold_check: Option<FoldCheck>,
    notes: Vec<String>,
    seconds: f64,
}

/// The inputs named by positional paths, `--last` or `--last-updates`.
fn inputs(a: &AverageArgs) -> Result<Vec<PathBuf>> {
    let pick = |v: &[String], by_update: bool| -> Result<Vec<PathBuf>> {
        let [n, dir] = v else {
            bail!("--last / --last-updates take N and DIR");
        };
        let n: usize = n
            .parse()
            .map_err(|_| anyhow!("N must be a positive integer, got '{n}'"))?;
        Ok(last_checkpoints(Path::new(dir), n, by_update)?)
    };
    let list = match (&a.last, &a.last_updates) {
        (Some(v), _) => pick(v, false)?,
        (None, Some(v)) => pick(v, true)?,
        (None, None) => a.inputs.clone(),
    };
    if list.is_empty() {
        bail!("no checkpoints to average: give paths, --last N DIR or --last-updates N DIR");
    }
    Ok(list)
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("averaging {msg} [{bar:30}] {pos}/{len} tensors {elapsed}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// A folded average: fairseq 0.12 tensors in f32 and the model arguments that rebuild it.
struct Folded {
    tensors: Vec<(String, RawTensor)>,
    summary: FoldSummary,
    check: FoldCheck,
    args: serde_json::Map<String, serde_json::Value>,
}

/// Recognise and fold an average, via a temporary safetensors file beside the output
/// (recognition works on opened checkpoints).
fn fold_average(
    tensors: Vec<(String, RawTensor)>,
    args: &serde_json::Map<String, serde_json::Value>,
    output: &Path,
    model: &ModelArgs,
) -> Result<Folded> {
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".admin-convert-average-")
        .suffix(".safetensors")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    let mut meta = BTreeMap::new();
    meta.insert(
        crate::read::META_ARGS.to_string(),
        serde_json::Value::Object(args.clone()).to_string(),
    );
    crate::write::safetensors::write(tmp.path(), &tensors, &meta)?;
    drop(tensors);
    let ckpt = Checkpoint::open(tmp.path())?;
    let rec = recognise::recognise(&ckpt, &model.overrides())
        .map_err(|e| anyhow!("the averaged model: {e}"))?;
    let (folded, summary) = fold_with_summary(&rec.model, FoldMode::Exact);
    let check = super::fold_check(&rec.model, &folded)?;
    Ok(Folded {
        tensors: {
            let mut t = crate::write::fairseq::state_dict(&folded, DType::F32).tensors;
            crate::write::fairseq::tie(&mut t, folded.tying);
            t
        },
        summary,
        check,
        args: crate::write::fairseq::fairseq_args(&folded),
    })
}

pub fn run(a: AverageArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let inputs = inputs(&a)?;
    refuse_overwrite(&a.output, &inputs)?;
    let format = out_format(&a.output)?;

    let pb = progress_bar(a.quiet);
    let av = average(&inputs, &pb);
    pb.finish_and_clear();
    let av = av?;
    let mut notes = av.notes.clone();
    let mut carried = av.carried;
    let mut args = args_json(&av.hparams);

    let (tensors, fold, fold_check) = if a.fold {
        let f = fold_average(av.tensors, &args, &a.output, &a.model)?;
        carried.set_model_args(&f.args);
        args = f.args;
        notes.push("folded after averaging (the average is exact in f32, then folded)".into());
        (f.tensors, Some(f.summary), Some(f.check))
    } else {
        (av.tensors, None, None)
    };

    let dtype = a.dtype.map_or(DType::F32, DType::from);
    let mut out: Vec<(String, RawTensor)> = Vec::with_capacity(tensors.len());
    let mut per = Vec::new();
    // Tied tensors (one buffer) are cast once and stay tied.
    let mut cast_of: std::collections::HashMap<(usize, usize), usize> = Default::default();
    for (name, t) in tensors {
        if t.dtype.is_float() && t.dtype != dtype && a.dtype.is_some() {
            let id = (
                t.bytes.as_slice().as_ptr() as usize,
                t.bytes.as_slice().len(),
            );
            if let Some(&i) = cast_of.get(&id).filter(|_| id.1 > 0) {
                let c = out[i].1.clone();
                out.push((name, c));
                continue;
            }
            let (c, st) = cast_tensor(&t, dtype);
            per.push((name.clone(), st));
            cast_of.insert(id, out.len());
            out.push((name, c));
        } else {
            out.push((name, t));
        }
    }
    let mut totals = CastStats::default();
    per.iter().for_each(|(_, s)| totals.add(s));
    let losses = lossy(&per);
    if totals.overflow > 0 && !a.force {
        eprintln!(
            "error: casting the average to {dtype} would overflow {}; pass --force to write them as ±Inf",
            loss_phrase(&losses, |s| s.overflow)
        );
        return Ok(ExitCode::from(1));
    }
    let n_tensors = out.len();
    write_output(&a.output, format, &carried, out, av.metadata, &args)?;

    let report = AverageReport {
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        output: a.output.display().to_string(),
        format,
        tensors: n_tensors,
        dtype,
        input_dtypes: av
            .input_dtypes
            .iter()
            .map(|(d, n)| (d.name(), *n))
            .collect(),
        totals,
        lossy_tensors: losses,
        fold,
        fold_check,
        notes,
        seconds: start.elapsed().as_secs_f64(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(r: &AverageReport) -> String {
    let mut s = format!("averaged {} checkpoints:\n", r.inputs.len());
    for i in &r.inputs {
        s += &format!("  {i}\n");
    }
    let dt: Vec<String> = r
        .input_dtypes
        .iter()
        .map(|(d, n)| format!("{d} ×{n}"))
        .collect();
    s += &format!("input tensors: {}\n", dt.join(", "));
    if let Some(f) = &r.fold {
        s += &format!(
            "folded {} → {}: {} sublayers{}\n",
            f.from,
            f.to,
            f.sublayers_folded,
            if f.unchanged {
                " (nothing to fold)"
            } else {
                ""
            }
        );
        for n in &f.notes {
            s += &format!("  {n}\n");
        }
    }
    if let Some(c) = &r.fold_check {
        s += &format!("{}\n", super::fold_check_line(c));
    }
    let t = &r.totals;
    if t.overflow + t.flushed_to_zero + t.nan + t.inf > 0 {
        s += &format!(
            "cast to {}: overflow {}, flushed to zero {}, NaN {}, Inf {}\n",
            r.dtype, t.overflow, t.flushed_to_zero, t.nan, t.inf
        );
        for l in &r.lossy_tensors {
            s += &format!(
                "  {}: overflow {}, flushed to zero {}\n",
                l.tensor, l.stats.overflow, l.stats.flushed_to_zero
            );
        }
    }
    for n in &r.notes {
        s += &format!("note: {n}\n");
    }
    s += &format!(
        "wrote {} ({} tensors, {}) in {:.1} s\n",
        r.output, r.tensors, r.dtype, r.seconds
    );
    s
}
