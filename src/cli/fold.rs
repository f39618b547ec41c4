//! `admin-convert fold`: fold residual scales, measure the fold, write a
//! standard fairseq 0.12 state dict as safetensors with its config (and
//! dictionaries, when known) in the metadata.

use super::{load, ModelArgs};
use crate::data::locate;
use crate::read::{META_ARGS, META_DICT_SRC, META_DICT_TGT, META_PRODUCER};
use crate::tensor::DType;
use crate::transform::cast::FloatDType;
use crate::transform::fold::{fold_with_summary, FoldMode};
use crate::verify::{self, Probe};
use crate::write;
use crate::write::output::{self, FileFormat, Kind};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct FoldArgs {
    /// Checkpoint to fold (.pt or .safetensors).
    checkpoint: PathBuf,
    /// Output .safetensors, or .pt for a stock fairseq 0.12 checkpoint
    /// (default: beside the input, CKPT.folded.safetensors).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Keep embeddings tied and sinusoidal: fold each stack's first ω as a
    /// scalar (not exact; the measured error is reported).
    #[arg(long)]
    approx: bool,
    /// Output dtype: fp32 (default), fp16, bf16.
    #[arg(long, value_enum, ignore_case = true, default_value = "fp32")]
    dtype: FloatDType,
    /// Write even if values overflow the output dtype or the fold check
    /// fails, or the default output exists.
    #[arg(long)]
    force: bool,
    /// Largest acceptable max |Δ log-prob| between original and folded model.
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true,
        value_parser = super::non_negative_f32)]
    tolerance: f32,
    /// Random probe sentence pairs used for the check (when no test data is given).
    #[arg(long, default_value_t = 16, allow_negative_numbers = true, value_parser = super::in_range(1, super::MAX_PROBES))]
    probe_sentences: usize,
    /// Test sentences to check the fold on (random tokens when absent).
    #[command(flatten)]
    input: super::score::DataArgs,
    /// Print a JSON report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// The output, written before the folded model's check and put in place
/// only when it passes.
enum Pending {
    Pt(write::Pending),
    Safetensors(write::safetensors::PendingSafetensors),
}

/// The output path (default beside the input), checked against the policy
/// of [`output`]: never an input, only regular files; `.safetensors` or a
/// fairseq `.pt` by extension.
fn output_path(a: &FoldArgs) -> Result<PathBuf> {
    let out = output::choose(a.output.as_deref(), &a.checkpoint, Kind::Folded, a.force)?;
    let mut inputs = a.input.input_files();
    inputs.push(a.checkpoint.clone());
    output::check_file(
        &out,
        &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    output::format_of(&out)?;
    Ok(out)
}

pub fn run(a: FoldArgs) -> Result<ExitCode> {
    let dtype = DType::from(a.dtype);
    let out = output_path(&a)?;
    let (ckpt, rec) = load(&a.checkpoint, &a.model)?;
    let q = a.input.query()?;
    let dict_dir = a.input.dict_dir.as_ref().or(a.input.data.as_ref());
    let dicts = super::checkpoint_dicts(&ckpt, dict_dir.map(PathBuf::as_path), &q)?;
    if let Some(d) = &dicts {
        let c = &rec.model.config;
        locate::check_vocab(d, c.src_vocab, c.tgt_vocab, &a.checkpoint)?;
    }
    let mode = if a.approx {
        FoldMode::Approximate
    } else {
        FoldMode::Exact
    };
    let original = rec.model;
    let c = &original.config;
    let probe = if a.input.given() {
        let Some(d) = &dicts else {
            bail!("--src/--ref need --dict-dir DIR to encode the sentences");
        };
        let pairs = a.input.pairs(None, d)?;
        Probe {
            sources: pairs.sources,
            targets: pairs.targets,
        }
    } else {
        Probe::random(a.probe_sentences.max(1), c.src_vocab, c.tgt_vocab, 24, 1)
    };
    // Bounded memory: at most two of {original, folded, one engine} at a
    // time. The original runs first (its engine freed), is folded and freed;
    // the folded model is written (to a temp file, streaming) and then
    // consumed by its engine; the output is renamed into place only when
    // its check passes.
    let kept = verify::reference_lprobs(&original, &probe).context("running the original model")?;
    let (folded, summary) = fold_with_summary(&original, mode);
    let family = original.family.name();
    drop(original);

    let entries = write::fairseq::entries(&folded);
    let stats = write::fairseq::cast_stats(&entries, dtype);
    let damaged = stats.overflow + stats.flushed_to_zero;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        META_PRODUCER.to_string(),
        format!("admin-convert {}", env!("CARGO_PKG_VERSION")),
    );
    let mut args = write::fairseq::fairseq_args(&folded);
    // Record the data directory (absolute) so `eval OUTPUT` finds the test set.
    if let Some(d) = locate::recorded_dir(&ckpt, &q)
        .ok()
        .and_then(|d| d.canonicalize().ok())
    {
        args.insert("data".into(), d.display().to_string().into());
    }
    meta.insert(META_ARGS.to_string(), serde_json::to_string(&args)?);
    if let Some(d) = &dicts {
        meta.insert(META_DICT_SRC.to_string(), d.src_text.clone());
        meta.insert(META_DICT_TGT.to_string(), d.tgt_text.clone());
    }
    let mut input_dtypes = BTreeMap::new();
    for e in &ckpt.entries {
        *input_dtypes.entry(e.dtype.name()).or_insert(0usize) += 1;
    }
    let mixed = ckpt
        .entries
        .iter()
        .filter(|e| e.dtype.is_float())
        .map(|e| e.dtype)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1;
    let report = |diff: f32, passed: bool| {
        serde_json::json!({
            "input": a.checkpoint.display().to_string(),
            "output": out.display().to_string(),
            "fold": summary,
            "mode": if a.approx { "approximate" } else { "exact" },
            "dtype": dtype.name(),
            "input_dtypes": input_dtypes,
            "input_mixed_float_dtypes": mixed,
            "probe_sentences": probe.sources.len(),
            "probe": if a.input.given() { "test data" } else { "random tokens" },
            "max_abs_diff": diff,
            "tolerance": a.tolerance,
            "passed": passed,
            "cast": stats,
            "dictionaries": dicts.is_some(),
            "written": (passed && damaged == 0) || a.force,
        })
    };
    let with_report = |r: &serde_json::Value| {
        let mut m = meta.clone();
        m.insert("admin_convert.fold".to_string(), r.to_string());
        m
    };
    let pending = if damaged == 0 || a.force {
        Some(match output::format_of(&out)? {
            // A stock fairseq 0.12 checkpoint (tied tables kept tied).
            FileFormat::FairseqPt => Pending::Pt(write::torch::write_pending(
                &out,
                &write::fairseq::checkpoint(&folded, dtype).0,
            )?),
            // Streamed from the folded model: no converted copy in memory;
            // the check's result goes into the header at commit.
            FileFormat::Safetensors => Pending::Safetensors(write::safetensors::write_entries(
                &out,
                &entries,
                dtype,
                &with_report(&report(f32::MAX, false)),
            )?),
        })
    } else {
        None
    };
    drop(entries);
    let diff =
        verify::max_diff_against_owned(kept, folded, &probe).context("running the folded model")?;
    let passed = diff <= a.tolerance;
    let report = report(diff, passed);
    let write_it = (passed && damaged == 0) || a.force;
    match pending {
        Some(Pending::Pt(p)) if write_it => p.commit()?,
        Some(Pending::Safetensors(p)) if write_it => p.commit(&with_report(&report))?,
        _ => {} // dropped: the temp file is deleted
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if summary.unchanged {
            println!(
                "{}: already a standard {} model: nothing to fold (written unchanged in fairseq 0.12 naming)",
                a.checkpoint.display(),
                family
            );
        } else {
            println!(
                "folded {} -> {}: {} sublayer scales{}{}",
                summary.from,
                summary.to,
                summary.sublayers_folded,
                if summary.untied_embeddings {
                    ", embeddings untied"
                } else {
                    ""
                },
                if summary.positions_to_learned {
                    ", sinusoidal positions carried as a learned table"
                } else {
                    ""
                }
            );
        }
        for n in &summary.notes {
            println!("note: {n}");
        }
        if mixed {
            let d: Vec<String> = input_dtypes
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            println!(
                "note: input mixes float dtypes ({}): computed in fp32, written as {}",
                d.join(", "),
                dtype.name()
            );
        }
        println!(
            "check: max |Δ log-prob| = {diff:.3e} over {} {} sentence pairs (tolerance {:.0e}): {}",
            probe.sources.len(),
            if a.input.given() {
                "test"
            } else {
                "random probe"
            },
            a.tolerance,
            if passed { "ok" } else { "FAILED" }
        );
        if damaged > 0 {
            println!(
                "cast to {}: {} values overflow, {} flush to zero{}",
                dtype.name(),
                stats.overflow,
                stats.flushed_to_zero,
                if a.force {
                    " (written anyway: --force)"
                } else {
                    ""
                }
            );
        }
        if dicts.is_none() {
            println!("note: no dictionaries embedded (pass --dict-dir DIR to make the output self-contained)");
        }
        if write_it {
            println!("wrote {}", out.display());
        } else {
            println!("not written (use --force to write anyway)");
        }
    }
    Ok(if passed && (damaged == 0 || a.force) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
