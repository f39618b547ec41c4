//! `admin-convert cast`: convert every float tensor of a state dict to one dtype, saying
//! which dtypes the input mixed, refusing values the target cannot hold (overflow, flush to
//! zero) unless `--force`. Also the output helpers `average` shares: format by extension,
//! never overwriting an input, atomic writes.

use crate::read::{Checkpoint, Entry, Hparams, META_ARGS, META_PRODUCER};
use crate::tensor::{DType, RawTensor};
use crate::transform::cast::{cast_tensor, CastStats, FloatDType};
use crate::write::output::{self, FileFormat};
use crate::write::torch::{self as torch_write, Carried};
use anyhow::{anyhow, Result};
use clap::Args;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct CastArgs {
    /// Checkpoint: fairseq .pt (zip or legacy) or .safetensors.
    checkpoint: PathBuf,
    /// Target float dtype: fp32, fp16 or bf16.
    #[arg(long, value_enum, ignore_case = true)]
    dtype: FloatDType,
    /// Output file; .pt writes a torch zip checkpoint, .safetensors a safetensors file.
    #[arg(short, long)]
    output: PathBuf,
    /// Write even if values overflow or flush to zero (they are reported per tensor).
    #[arg(long)]
    force: bool,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
}

// ---- output helpers shared with `average` -----------------------------------------------

/// The container an output path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum OutFormat {
    TorchZip,
    Safetensors,
}

pub(super) fn out_format(path: &Path) -> Result<OutFormat> {
    Ok(match output::format_of(path)? {
        FileFormat::FairseqPt => OutFormat::TorchZip,
        FileFormat::Safetensors => OutFormat::Safetensors,
    })
}

/// Refuse an output path that is one of the inputs (through any link) or
/// not a regular file ([`output::check_file`]).
pub(super) fn refuse_overwrite(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    output::check_file(
        out,
        &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )
}

/// fairseq model arguments as the JSON object stored in safetensors metadata.
pub(super) fn args_json(h: &Hparams) -> serde_json::Map<String, serde_json::Value> {
    h.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
}

/// Write `tensors` to `path`: a torch checkpoint built from `carried`, or a safetensors
/// file whose metadata (from `metadata`) records `args` under [`META_ARGS`].
pub(super) fn write_output(
    path: &Path,
    format: OutFormat,
    carried: &Carried,
    tensors: Vec<(String, RawTensor)>,
    mut metadata: BTreeMap<String, String>,
    args: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    match format {
        OutFormat::TorchZip => {
            let plain = crate::write::fairseq::plain_carried(carried);
            torch_write::write(path, &plain.with_model(tensors))
        }
        OutFormat::Safetensors => {
            if !args.is_empty() {
                metadata.insert(
                    META_ARGS.into(),
                    serde_json::Value::Object(args.clone()).to_string(),
                );
            }
            metadata.insert(
                META_PRODUCER.into(),
                format!("admin-convert {}", env!("CARGO_PKG_VERSION")),
            );
            crate::write::safetensors::write(path, &tensors, &metadata)
        }
    }
}

/// Conversion losses of one tensor.
#[derive(Clone, Debug, Serialize)]
pub(super) struct TensorLoss {
    pub tensor: String,
    #[serde(flatten)]
    pub stats: CastStats,
}

/// The tensors with values that overflowed or flushed to zero.
pub(super) fn lossy(per: &[(String, CastStats)]) -> Vec<TensorLoss> {
    per.iter()
        .filter(|(_, s)| s.lossy())
        .map(|(n, s)| TensorLoss {
            tensor: n.clone(),
            stats: *s,
        })
        .collect()
}

/// `3 values in 2 tensors (a: 2, b: 1)` for one kind of loss.
pub(super) fn loss_phrase(losses: &[TensorLoss], count: fn(&CastStats) -> usize) -> String {
    let hit: Vec<_> = losses.iter().filter(|l| count(&l.stats) > 0).collect();
    let total: usize = hit.iter().map(|l| count(&l.stats)).sum();
    let mut names: Vec<String> = hit
        .iter()
        .take(4)
        .map(|l| format!("{}: {}", l.tensor, count(&l.stats)))
        .collect();
    if hit.len() > 4 {
        names.push(format!("+{} more", hit.len() - 4));
    }
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    format!(
        "{} in {} ({})",
        plural(total, "value"),
        plural(hit.len(), "tensor"),
        names.join(", ")
    )
}

/// One dtype of the input and the tensors stored in it, layer indices collapsed to `*`.
#[derive(Clone, Debug, Serialize)]
pub(super) struct DTypeGroup {
    #[serde(serialize_with = "dtype_name")]
    pub dtype: DType,
    pub tensors: usize,
    /// Name patterns (`encoder.layers.*.fc1.weight`) with their counts.
    pub names: Vec<(String, usize)>,
}

/// Serialize a dtype by its short name (`f16`), as reports print it.
pub(super) fn dtype_name<S: serde::Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

fn pattern(name: &str) -> String {
    name.split('.')
        .map(|p| {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

pub(super) fn dtype_groups(entries: &[Entry]) -> Vec<DTypeGroup> {
    let mut by: BTreeMap<DType, Vec<(String, usize)>> = BTreeMap::new();
    for e in entries {
        let pats = by.entry(e.dtype).or_default();
        let p = pattern(&e.name);
        match pats.iter_mut().find(|(q, _)| *q == p) {
            Some((_, n)) => *n += 1,
            None => pats.push((p, 1)),
        }
    }
    by.into_iter()
        .map(|(dtype, names)| DTypeGroup {
            dtype,
            tensors: names.iter().map(|(_, n)| n).sum(),
            names,
        })
        .collect()
}

/// `f16 (60 tensors: a, b ×4, ...)`, listing at most `max` patterns.
pub(super) fn render_group(g: &DTypeGroup, max: usize) -> String {
    let mut names: Vec<String> = g
        .names
        .iter()
        .take(max)
        .map(|(p, n)| {
            if *n > 1 {
                format!("{p} ×{n}")
            } else {
                p.clone()
            }
        })
        .collect();
    if g.names.len() > max {
        names.push(format!("+{} more", g.names.len() - max));
    }
    let plural = if g.tensors == 1 { "" } else { "s" };
    format!(
        "{} ({} tensor{plural}: {})",
        g.dtype,
        g.tensors,
        names.join(", ")
    )
}

// ---- cast --------------------------------------------------------------------------------

#[derive(Serialize)]
struct CastReport {
    input: String,
    output: String,
    format: OutFormat,
    #[serde(serialize_with = "dtype_name")]
    dtype: DType,
    input_dtypes: Vec<DTypeGroup>,
    mixed_float_dtypes: bool,
    /// Float tensors whose dtype changed.
    converted: usize,
    /// Tensors written as they were (already in the target dtype, or not float).
    unchanged: usize,
    totals: CastStats,
    /// Tensors with values that overflowed or flushed to zero.
    lossy_tensors: Vec<TensorLoss>,
    notes: Vec<String>,
}

pub fn run(a: CastArgs) -> Result<ExitCode> {
    let dtype = DType::from(a.dtype);
    refuse_overwrite(&a.output, std::slice::from_ref(&a.checkpoint))?;
    let format = out_format(&a.output)?;
    let ckpt = Checkpoint::open(&a.checkpoint)?;
    if ckpt.entries.is_empty() {
        return Err(anyhow!(
            "{}: state dict holds no tensors",
            a.checkpoint.display()
        ));
    }
    let groups = dtype_groups(&ckpt.entries);
    let float_groups = groups.iter().filter(|g| g.dtype.is_float()).count();

    let mut tensors: Vec<(String, RawTensor)> = Vec::with_capacity(ckpt.entries.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut per: Vec<(String, CastStats)> = Vec::new();
    for e in &ckpt.entries {
        // A tied entry reuses its partner's converted tensor, so a .pt output keeps the tie.
        if let Some(&i) = e.tied_to.as_ref().and_then(|t| index.get(t)) {
            let t = tensors[i].1.clone();
            tensors.push((e.name.clone(), t));
            continue;
        }
        let t = ckpt.tensor(&e.name)?;
        let (out, st) = cast_tensor(&t, dtype);
        per.push((e.name.clone(), st));
        index.insert(e.name.clone(), tensors.len());
        tensors.push((e.name.clone(), out));
    }
    let converted = ckpt
        .entries
        .iter()
        .zip(&tensors)
        .filter(|(e, (_, t))| e.dtype != t.dtype)
        .count();
    let unchanged = tensors.len() - converted;
    let mut totals = CastStats::default();
    per.iter().for_each(|(_, s)| totals.add(s));
    let losses = lossy(&per);
    if !losses.is_empty() && !a.force {
        let mut parts = Vec::new();
        if totals.overflow > 0 {
            parts.push(format!("overflow {}", loss_phrase(&losses, |s| s.overflow)));
        }
        if totals.flushed_to_zero > 0 {
            parts.push(format!(
                "flush to zero {}",
                loss_phrase(&losses, |s| s.flushed_to_zero)
            ));
        }
        eprintln!(
            "error: {}: casting to {} would {}; pass --force to write anyway",
            a.checkpoint.display(),
            dtype,
            parts.join(" and ")
        );
        return Ok(ExitCode::from(1));
    }

    let carried = Carried::from_checkpoint(&ckpt);
    let mut notes = carried.notes.clone();
    if float_groups > 1 {
        notes.push(format!(
            "input mixes float dtypes; all float tensors are {} now",
            dtype
        ));
    }
    write_output(
        &a.output,
        format,
        &carried,
        tensors,
        ckpt.metadata.clone(),
        &args_json(&ckpt.hparams),
    )?;

    let report = CastReport {
        input: a.checkpoint.display().to_string(),
        output: a.output.display().to_string(),
        format,
        dtype,
        mixed_float_dtypes: float_groups > 1,
        input_dtypes: groups,
        converted,
        unchanged,
        totals,
        lossy_tensors: losses,
        notes,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(r: &CastReport) -> String {
    let mut s = String::new();
    let groups: Vec<String> = r.input_dtypes.iter().map(|g| render_group(g, 4)).collect();
    s += &format!(
        "input dtypes{}: {}\n",
        if r.mixed_float_dtypes { " (MIXED)" } else { "" },
        groups.join("; ")
    );
    s += &format!(
        "cast to {}: {} tensors converted, {} unchanged\n",
        r.dtype, r.converted, r.unchanged
    );
    let t = &r.totals;
    s += &format!(
        "overflow {}, flushed to zero {}, NaN {}, Inf {}\n",
        t.overflow, t.flushed_to_zero, t.nan, t.inf
    );
    for l in &r.lossy_tensors {
        s += &format!(
            "  {}: overflow {}, flushed to zero {}\n",
            l.tensor, l.stats.overflow, l.stats.flushed_to_zero
        );
    }
    for n in &r.notes {
        s += &format!("note: {n}\n");
    }
    s += &format!("wrote {}\n", r.output);
    s
}
