//! Command-line interface: clap definitions and one function per
//! subcommand. Kept thin: each command parses its flags into library types
//! and prints what the library returns.

mod average;
mod cast;
pub mod eval;
mod export;
mod fold;
mod merge;
pub mod model;
mod score;
mod translate;

use crate::data::locate::{self, Dicts, Query};
use crate::read::Checkpoint;
use crate::recognise::{self, Overrides, Recognised};
use crate::spec::{Activation, Family};
use anyhow::{anyhow, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "admin-convert",
    version,
    about = "Fold, repair, average, export and decode Admin / DeepNet / ReZero Transformer checkpoints",
    after_help = WORKFLOW
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The example workflow `admin-convert` prints with no arguments.
const WORKFLOW: &str = "\
Example workflow (outputs land beside the checkpoint; the test set is the data directory it records):
  admin-convert fold checkpoint_best.pt          # -> checkpoint_best.folded.safetensors
  admin-convert export checkpoint_best.pt --onnx # -> checkpoint_best.onnx/
  admin-convert eval checkpoint_best.pt --beam 4 # translate the test set, print BLEU";

#[derive(Subcommand)]
enum Command {
    /// What a checkpoint is: family, shape, dtypes, scales, problems.
    #[command(after_help = "Example:\n  admin-convert inspect checkpoint_best.pt")]
    Inspect(InspectArgs),
    /// Fold ω / α / gates into a standard Transformer, exactly, and measure it.
    #[command(
        after_help = "Example:\n  admin-convert fold checkpoint_best.pt    (writes checkpoint_best.folded.safetensors)"
    )]
    Fold(fold::FoldArgs),
    /// Export a model directory: ONNX graphs (--onnx), CTranslate2 (--ct2) or Hugging Face (--hf).
    #[command(
        after_help = "Example:\n  admin-convert export checkpoint_best.pt --onnx    (writes checkpoint_best.onnx/)"
    )]
    Export(export::ExportArgs),
    /// Teacher-forced scores of references (like fairseq-generate --score-reference).
    #[command(
        after_help = "Example:\n  admin-convert score checkpoint_best.pt data-bin --score-base 2"
    )]
    Score(score::ScoreArgs),
    /// Average checkpoints as fairseq's average_checkpoints.py does, in bounded memory.
    #[command(
        after_help = "Example:\n  admin-convert average checkpoint36.pt checkpoint37.pt checkpoint38.pt -o averaged.pt"
    )]
    Average(average::AverageArgs),
    /// Convert every float tensor to one dtype (fp32, fp16, bf16).
    #[command(
        after_help = "Example:\n  admin-convert cast checkpoint_best.pt --dtype fp16 -o checkpoint_best.fp16.pt"
    )]
    Cast(cast::CastArgs),
    /// Translate a test set with fairseq's beam search and score it (BLEU, sacreBLEU).
    #[command(
        after_help = "Example:\n  admin-convert eval checkpoint_best.pt --beam 4    (test set: the data directory the checkpoint records)\n  admin-convert eval checkpoint_best.onnx data-bin --beam 4 --remove-bpe"
    )]
    Eval(Box<eval::EvalArgs>),
    /// Translate text of any size from a file or stdin, in bounded memory (like fairseq-interactive).
    Translate(Box<translate::TranslateArgs>),
    /// Merge the outputs of a sharded run (--num-shards/--shard-id) in sentence order; BLEU over all.
    MergeShards(merge::MergeArgs),
}

/// Hyper-parameters a checkpoint may not record (bare safetensors).
#[derive(Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// fairseq --arch preset for values the file does not record (e.g. transformer, transformer_iwslt_de_en).
    #[arg(long)]
    pub arch: Option<String>,
    /// Attention heads (encoder and decoder).
    #[arg(long, allow_negative_numbers = true, value_parser = in_range(1, MAX_HEADS))]
    pub heads: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = in_range(1, MAX_HEADS))]
    pub encoder_heads: Option<usize>,
    #[arg(long, allow_negative_numbers = true, value_parser = in_range(1, MAX_HEADS))]
    pub decoder_heads: Option<usize>,
    /// Feed-forward activation: relu, gelu, gelu_accurate, tanh, linear, swish.
    #[arg(long, value_parser = parse_activation)]
    pub activation: Option<Activation>,
    /// Pre-LN model (encoder and decoder normalize_before).
    #[arg(long)]
    pub normalize_before: Option<bool>,
    /// fairseq --no-scale-embedding.
    #[arg(long)]
    pub no_scale_embedding: Option<bool>,
    /// Residual family when the tensors cannot tell it (deep-net leaves no trace).
    #[arg(long, value_parser = parse_family)]
    pub family: Option<Family>,
}

// Upper bounds of numeric flags: far above any real use, low enough that
// nothing sized by them can exhaust memory before the work starts.
pub const MAX_BEAM: usize = 1024;
pub const MAX_BATCH: usize = 1 << 20;
pub const MAX_TOKENS: usize = 1 << 27;
pub const MAX_THREADS: usize = 1024;
pub const MAX_PROBES: usize = 100_000;
pub const MAX_HEADS: usize = 4096;

/// A clap value parser for an integer flag in `lo..=hi`.
pub fn in_range(
    lo: usize,
    hi: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| match s.trim().parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {lo} to {hi}")),
    }
}

/// A clap value parser for a finite float (negative allowed, as in fairseq).
pub fn finite(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err("expected a finite number".into()),
    }
}

/// A clap value parser for a finite float ≥ 0.
pub fn non_negative_f32(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err("expected a finite number ≥ 0".into()),
    }
}

fn parse_activation(s: &str) -> Result<Activation, String> {
    Activation::parse(s).ok_or_else(|| format!("unknown activation '{s}'"))
}

fn parse_family(s: &str) -> Result<Family, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        let known: Vec<&str> = recognise::FAMILIES
            .iter()
            .map(|r| r.family.name())
            .collect();
        format!("unknown family '{s}' ({})", known.join(", "))
    })
}

impl ModelArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            arch: self.arch.clone(),
            encoder_heads: self.encoder_heads.or(self.heads),
            decoder_heads: self.decoder_heads.or(self.heads),
            activation: self.activation,
            encoder_normalize_before: self.normalize_before,
            decoder_normalize_before: self.normalize_before,
            no_scale_embedding: self.no_scale_embedding,
            max_source_positions: None,
            max_target_positions: None,
            family: self.family,
        }
    }
}

#[derive(Args)]
struct InspectArgs {
    /// Checkpoint: fairseq .pt (zip or legacy) or .safetensors.
    checkpoint: PathBuf,
    /// Print a JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// Open and recognise a checkpoint, errors naming the file.
pub fn load(path: &Path, model: &ModelArgs) -> Result<(Checkpoint, Recognised)> {
    let ckpt = Checkpoint::open(path)?;
    let rec = recognise::recognise(&ckpt, &model.overrides())
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((ckpt, rec))
}

/// Dictionaries for a checkpoint being written out (`fold`, `export`):
/// those in `dir` (--dict-dir / --data), else the ones embedded in it, else
/// those of the data directory it records (see [`locate`]).
pub fn checkpoint_dicts(ckpt: &Checkpoint, dir: Option<&Path>, q: &Query) -> Result<Option<Dicts>> {
    if let Some(d) = dir {
        return Ok(Some(locate::dicts_in(d, q)?));
    }
    if let Some(d) = locate::embedded_dicts(ckpt)? {
        return Ok(Some(d));
    }
    match locate::recorded_dir(ckpt, q) {
        Ok(d) => Ok(Some(locate::dicts_in(&d, q)?)),
        Err(_) => Ok(None),
    }
}

/// Parse the command line and run the command. `--help` and `--version`
/// print and succeed; any other command-line mistake becomes one error line
/// (clap's first line, without its usage dump) for `main` to print, exit 2.
pub fn run() -> Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let Some(command) = cli.command else {
        use clap::CommandFactory;
        print!("{}", Cli::command().render_help());
        return Ok(ExitCode::SUCCESS);
    };
    match command {
        Command::Inspect(a) => inspect(a),
        Command::Fold(a) => fold::run(a),
        Command::Score(a) => score::run(a),
        Command::Export(a) => export::run(a),
        Command::Average(a) => average::run(a),
        Command::Cast(a) => cast::run(a),
        Command::Eval(a) => eval::run(*a),
        Command::Translate(a) => translate::run(*a),
        Command::MergeShards(a) => merge::run(a),
    }
}

fn usage_error(e: clap::Error) -> Result<ExitCode> {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            e.print()?;
            Ok(ExitCode::SUCCESS)
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Err(anyhow!(
            "a command is required: inspect, fold, export, score, average, cast or eval (see admin-convert --help)"
        )),
        _ => {
            // The paragraph before the usage dump, e.g. "the following required
            // arguments were not provided:\n  <CHECKPOINT>", joined into one line.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            Err(anyhow!("{first} (see --help)"))
        }
    }
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let (ckpt, rec) = load(&a.checkpoint, &a.model)?;
    let report = crate::inspect::report(&ckpt, &rec)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::inspect::render_text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Probe sentence pairs of the self-check of `average --fold` and `export --fold`.
const FOLD_CHECK_SENTENCES: usize = 16;
/// Largest acceptable max |Δ log-prob| of that check (`fold`'s default).
const FOLD_CHECK_TOLERANCE: f32 = 1e-4;

/// The self-check `average --fold` and `export --fold` run (as `fold` does
/// without test data): original and folded model on the native engine over
/// random probe sentences; an error when they differ beyond the tolerance.
pub fn fold_check(
    original: &crate::spec::Model,
    folded: &crate::spec::Model,
) -> Result<crate::verify::FoldCheck> {
    let c = crate::verify::check_fold_random(
        original,
        folded,
        FOLD_CHECK_SENTENCES,
        FOLD_CHECK_TOLERANCE,
    )
    .map_err(|e| anyhow!("checking the fold: {e}"))?;
    if !c.passed {
        anyhow::bail!(
            "the folded model differs from the original by {:.3e} in log-prob (tolerance {:e}): nothing written",
            c.max_abs_diff,
            c.tolerance
        );
    }
    Ok(c)
}

/// `check: max |Δ log-prob| = … over N random probe sentence pairs (tolerance …): ok`.
pub fn fold_check_line(c: &crate::verify::FoldCheck) -> String {
    format!(
        "check: max |Δ log-prob| = {:.3e} over {} random probe sentence pairs (tolerance {:e}): {}",
        c.max_abs_diff,
        c.probe_sentences,
        c.tolerance,
        if c.passed { "ok" } else { "FAILED" }
    )
}
