//! `admin-convert fold`: fold residual scales, measure the fold, write a
//! standard fairseq 0.12 state dict as safetensors with its config (and
//! dictionaries, when known) in the metadata.

use super::{load, ModelArgs};
use crate::read::{META_ARGS, META_DICT_SRC, META_DICT_TGT, META_PRODUCER};
use crate::transform::cast::parse_dtype;
use crate::transform::fold::{fold_with_summary, FoldMode};
use crate::verify::{self, Probe};
use crate::write;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct FoldArgs {
    /// Checkpoint to fold (.pt or .safetensors).
    checkpoint: PathBuf,
    /// Output .safetensors.
    #[arg(short, long)]
    output: PathBuf,
    /// Keep embeddings tied and sinusoidal: fold each stack's first ω as a
    /// scalar (not exact; the measured error is reported).
    #[arg(long)]
    approx: bool,
    /// Output dtype: fp32 (default), fp16, bf16.
    #[arg(long, default_value = "fp32")]
    dtype: String,
    /// Write even if values overflow the output dtype or the fold check fails.
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

/// `dict.src.txt`/`dict.tgt.txt` in `dir`, else the two `dict.*.txt` files.
pub fn read_dicts(dir: &Path) -> Result<(String, String)> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let (s, t) = (dir.join("dict.src.txt"), dir.join("dict.tgt.txt"));
    if s.exists() && t.exists() {
        return Ok((read(s)?, read(t)?));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("dict.") && n.ends_with(".txt"))
        })
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok((read(one.clone())?, read(one.clone())?)),
        [a, b] => Ok((read(a.clone())?, read(b.clone())?)),
        _ => bail!(
            "{}: expected dict.src.txt and dict.tgt.txt (found {} dict.*.txt files)",
            dir.display(),
            found.len()
        ),
    }
}

pub fn run(a: FoldArgs) -> Result<ExitCode> {
    let dtype = parse_dtype(&a.dtype)
        .with_context(|| format!("unknown --dtype {} (fp32, fp16, bf16)", a.dtype))?;
    let (ckpt, rec) = load(&a.checkpoint, &a.model)?;
    let dict_dir = a.input.dict_dir();
    let dicts = match &dict_dir {
        Some(d) => Some(read_dicts(d)?),
        None => ckpt
            .embedded_dicts()
            .map(|(s, t)| (s.to_string(), t.to_string())),
    };
    let mode = if a.approx {
        FoldMode::Approximate
    } else {
        FoldMode::Exact
    };
    let original = &rec.model;
    let (folded, summary) = fold_with_summary(original, mode);
    let c = &original.config;
    let probe = if a.input.given() {
        let d = match &dict_dir {
            Some(d) => super::model::dicts_in(d)?,
            None => bail!("--src/--ref need --dict-dir DIR to encode the sentences"),
        };
        let pairs = a.input.pairs(&d)?;
        Probe {
            sources: pairs.sources,
            targets: pairs.targets,
        }
    } else {
        Probe::random(a.probe_sentences.max(1), c.src_vocab, c.tgt_vocab, 24, 1)
    };
    let diff = verify::max_lprob_diff(original, &folded, &probe)
        .context("running the original and folded models")?;
    let passed = diff <= a.tolerance;

    let sd = write::fairseq::state_dict(&folded, dtype);
    let damaged = sd.stats.overflow + sd.stats.flushed_to_zero;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        META_PRODUCER.to_string(),
        format!("admin-convert {}", env!("CARGO_PKG_VERSION")),
    );
    meta.insert(
        META_ARGS.to_string(),
        serde_json::to_string(&write::fairseq::fairseq_args(&folded))?,
    );
    if let Some((s, t)) = &dicts {
        meta.insert(META_DICT_SRC.to_string(), s.clone());
        meta.insert(META_DICT_TGT.to_string(), t.clone());
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
    let report = serde_json::json!({
        "input": a.checkpoint.display().to_string(),
        "output": a.output.display().to_string(),
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
        "cast": sd.stats,
        "dictionaries": dicts.is_some(),
        "written": (passed && damaged == 0) || a.force,
    });
    meta.insert("admin_convert.fold".to_string(), report.to_string());
    let write_it = (passed && damaged == 0) || a.force;
    if write_it {
        write::safetensors::write(&a.output, &sd.tensors, &meta)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if summary.unchanged {
            println!(
                "{}: already a standard {} model: nothing to fold (written unchanged in fairseq 0.12 naming)",
                a.checkpoint.display(),
                original.family.name()
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
                sd.stats.overflow,
                sd.stats.flushed_to_zero,
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
            println!("wrote {}", a.output.display());
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
