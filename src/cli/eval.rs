//! `admin-convert eval`: translate a test set with fairseq-generate's beam
//! search on an exported model (tract or onnxruntime), print the
//! hypotheses and score them with fairseq's BLEU or sacreBLEU.
//!
//! Where things go:
//! * hypotheses (one line each, or fairseq-generate's S-/T-/H-/D-/P- lines
//!   with `--fairseq-format`) go to `-o FILE`, else to stdout unless
//!   `--quiet` or `--json`;
//! * the summary (counts, speed, BLEU, `--compare`, `--expect-fairseq`)
//!   goes to stdout when the hypotheses do not, else to stderr; with
//!   `--json` it is one JSON object on stdout.
//!
//! Exit codes: 0 ok, 1 `--expect-fairseq` found a different hypothesis,
//! 2 bad input.

use super::model::{open, Opened, RuntimeArgs};
use super::ModelArgs;
use crate::data::locate::{self, DataSource, Dicts, Query};
use crate::data::BpeMode;
use crate::decode::{decode_batches, plan_shard, Batching, BeamOptions, Hypothesis, Shard};
use crate::metrics::{BleuScorer, SacreBleu};
use crate::runtime::ModelEngine;
use crate::write::output;
use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint (.pt / .safetensors; exported in memory) or a directory
    /// written by `admin-convert export`.
    pub model: PathBuf,
    /// fairseq data directory (like `fairseq-generate DATA`; default: the
    /// one the checkpoint records).
    #[arg(conflicts_with_all = ["data", "src"])]
    pub data_dir: Option<PathBuf>,
    /// Source sentences, one per line, already BPE'd (what fairseq-interactive reads).
    #[arg(long, conflicts_with = "data")]
    pub src: Option<PathBuf>,
    /// References for --src, one per line, BPE'd like the training data.
    #[arg(long = "ref", requires = "src")]
    pub reference: Option<PathBuf>,
    /// A fairseq-preprocess directory (binarized test set and dictionaries).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The split of --data to translate.
    #[arg(long, default_value = "test")]
    pub subset: String,
    /// Source language suffix (inferred from --data or --dict-dir when absent).
    #[arg(long, short = 's')]
    pub source_lang: Option<String>,
    /// Target language suffix.
    #[arg(long, short = 't')]
    pub target_lang: Option<String>,
    /// Directory with dict.SRC.txt / dict.TGT.txt (default: --data, else the
    /// dictionaries stored in an exported model).
    #[arg(long)]
    pub dict_dir: Option<PathBuf>,

    #[command(flatten)]
    pub decoding: DecodeArgs,

    /// Write the hypotheses here instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No hypotheses on stdout and no progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Also decode with this model; report both BLEU, identical hypotheses, max |Δ score|.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Run the --compare model on its fp16 graphs (fp32 vs fp16 parity).
    #[arg(long)]
    pub compare_fp16: bool,
    /// Backend for the --compare model (default: --backend).
    #[arg(long)]
    #[arg(value_enum)]
    pub compare_backend: Option<super::model::BackendKind>,
    /// Also decode the same model on the native engine in this compute type
    /// (int8, bfloat16, auto); report both BLEU, identical hypotheses, max
    /// |Δ score| and max |Δ log-prob| of our hypotheses under teacher forcing.
    #[arg(long, value_enum)]
    pub compare_compute_type: Option<crate::native::ComputeType>,
    /// A fairseq-generate output: compare its H- lines with ours (exit 1 if any differ).
    #[arg(long)]
    pub expect_fairseq: Option<PathBuf>,
    /// Corpus metric printed: fairseq's tokenized BLEU4 or sacreBLEU.
    #[arg(long, value_enum, default_value_t = Scoring::Bleu)]
    pub scoring: Scoring,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub model_args: ModelArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
}

/// fairseq's decoding flags, shared by `eval` and `translate`.
#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Beam width.
    #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = super::in_range(1, super::MAX_BEAM))]
    pub beam: usize,
    /// Hypotheses printed per sentence.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = super::in_range(1, super::MAX_BEAM))]
    pub nbest: usize,
    /// Length penalty: score = sum / len^lenpen.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = super::finite)]
    pub lenpen: f64,
    /// Subtracted from the <unk> log-probability.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = super::finite)]
    pub unkpen: f64,
    /// At most a·S + b target tokens, S the padded source width of the batch.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = super::finite)]
    pub max_len_a: f64,
    #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
    pub max_len_b: i64,
    /// No EOS before this many tokens.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub min_len: i64,
    /// Do not divide scores by len^lenpen.
    #[arg(long)]
    pub unnormalized: bool,
    /// Sentences per batch (fairseq --batch-size / --max-sentences).
    #[arg(long, alias = "max-sentences", allow_negative_numbers = true, value_parser = super::in_range(1, super::MAX_BATCH))]
    pub batch_size: Option<usize>,
    /// Tokens per batch (default 12000 when --batch-size is absent, like fairseq).
    #[arg(long, allow_negative_numbers = true, value_parser = super::in_range(1, super::MAX_TOKENS))]
    pub max_tokens: Option<usize>,
    #[arg(long, default_value_t = 8, allow_negative_numbers = true, value_parser = super::in_range(1, super::MAX_BATCH))]
    pub required_batch_size_multiple: usize,
    /// Join subwords before printing and scoring: subword_nmt (default), sentencepiece, ...
    #[arg(long, num_args = 0..=1, default_missing_value = "subword_nmt", value_name = "MODE")]
    pub remove_bpe: Option<String>,

    /// Print fairseq-generate's S-/T-/H-/P- lines (and D- lines with --score-base 2).
    #[arg(long)]
    pub fairseq_format: bool,
    /// Log base of printed scores: e (fairseq 0.8) or 2 (fairseq ≥ 0.9, adds D- lines).
    #[arg(long, value_enum, default_value_t = ScoreBase::E)]
    pub score_base: ScoreBase,
}

/// fairseq's `--num-shards N --shard-id I` (see [`crate::decode::Shard`]).
#[derive(Args, Debug, Clone)]
pub struct ShardArgs {
    /// Split the run into this many shards (batch k goes to shard k mod N);
    /// implies --fairseq-format so the outputs can be merged by sentence id
    /// with `admin-convert merge-shards`.
    #[arg(long, default_value_t = 1)]
    pub num_shards: usize,
    /// Which shard this run decodes (0 ≤ I < N).
    #[arg(long, default_value_t = 0)]
    pub shard_id: usize,
}

impl ShardArgs {
    pub fn shard(&self) -> Result<Shard> {
        Shard::new(self.num_shards, self.shard_id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scoring {
    Bleu,
    Sacrebleu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScoreBase {
    /// Natural log (fairseq 0.8).
    E,
    /// Base 2 (fairseq 0.9 and later).
    #[value(name = "2")]
    Two,
}

impl ScoreBase {
    pub fn name(self) -> &'static str {
        match self {
            ScoreBase::E => "e",
            ScoreBase::Two => "2",
        }
    }
    /// fairseq's conversion of a float32 natural-log score.
    pub fn convert(self, x: f32) -> f32 {
        match self {
            ScoreBase::E => x,
            ScoreBase::Two => x / std::f32::consts::LN_2,
        }
    }
}

fn open_model(path: &Path, a: &EvalArgs) -> Result<Opened> {
    open(path, &a.model_args, &a.runtime)
}

fn open_with(path: &Path, a: &EvalArgs, runtime: &RuntimeArgs) -> Result<Opened> {
    open(path, &a.model_args, runtime)
}

/// What is translated: source ids (with EOS) and, when known, reference ids.
struct TestSet {
    src: Vec<Vec<i64>>,
    refs: Option<Vec<Vec<u32>>>,
    dicts: Dicts,
    /// The split's name when read from a data directory.
    split: Option<String>,
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// The data directory to translate when no --src was given: the positional
/// one, --data, the checkpoint's recorded one (see [`locate`]).
fn data_dir(a: &EvalArgs, q: &Query) -> Result<Option<PathBuf>> {
    if a.src.is_some() {
        return Ok(None);
    }
    let given = a.data_dir.as_deref().or(a.data.as_deref());
    match locate::find_data_dir(given, &a.model, q)? {
        DataSource::Dir(d) => Ok(Some(d)),
        DataSource::None(msg) => bail!("{msg}"),
    }
}

fn load_test_set(a: &EvalArgs, data: Option<&Path>, stored: Option<Dicts>) -> Result<TestSet> {
    let q = query(a)?;
    if let Some(dir) = data {
        let dicts = locate::dicts_in(a.dict_dir.as_deref().unwrap_or(dir), &q)?;
        let split = locate::read_split(dir, &q)?;
        return Ok(TestSet {
            src: split
                .src
                .into_iter()
                .map(|v| v.into_iter().map(i64::from).collect())
                .collect(),
            refs: split.tgt,
            dicts,
            split: Some(a.subset.clone()),
        });
    }
    let src_path = a
        .src
        .as_ref()
        .expect("data_dir gives a directory unless --src");
    let dicts = text_dictionaries(a.dict_dir.as_deref(), &q, stored, &a.model)?;
    let src: Vec<Vec<i64>> = read_lines(src_path)?
        .iter()
        .map(|l| {
            dicts
                .src
                .encode_line(l)
                .into_iter()
                .map(i64::from)
                .collect()
        })
        .collect();
    let refs = match &a.reference {
        Some(p) => {
            let r: Vec<Vec<u32>> = read_lines(p)?
                .iter()
                .map(|l| dicts.tgt.encode_line(l))
                .collect();
            ensure!(
                r.len() == src.len(),
                "{} has {} lines but {} has {}",
                p.display(),
                r.len(),
                src_path.display(),
                src.len()
            );
            Some(r)
        }
        None => None,
    };
    Ok(TestSet {
        src,
        refs,
        dicts,
        split: None,
    })
}

fn query(a: &EvalArgs) -> Result<Query> {
    Query::new(
        a.source_lang.as_deref(),
        a.target_lang.as_deref(),
        &a.subset,
    )
}

/// Checks the dictionaries fit the model's embedding tables.
fn check_vocab(backend: &dyn ModelEngine, set: &TestSet, what: &Path) -> Result<()> {
    let info = backend.info();
    locate::check_vocab(&set.dicts, info.src_vocab, info.tgt_vocab, what)
}

/// The dictionaries for text input: `--dict-dir` (the pair from `q`), else
/// those stored with the model, else those of the data directory the model
/// records ([`locate::find_data_dir`]).
pub fn text_dictionaries(
    dict_dir: Option<&Path>,
    q: &Query,
    stored: Option<Dicts>,
    model: &Path,
) -> Result<Dicts> {
    match (dict_dir, stored) {
        (Some(d), _) => locate::dicts_in(d, q),
        (None, Some(d)) => Ok(d),
        (None, None) => match locate::find_data_dir(None, model, q)? {
            DataSource::Dir(d) => locate::dicts_in(&d, q),
            DataSource::None(_) => bail!(
                "{}: no dictionaries (none stored in the model, no recorded data directory found): \
                 give --dict-dir (a directory with dict.SRC.txt and dict.TGT.txt)",
                model.display()
            ),
        },
    }
}

/// Refuse `-o` onto an input or a non-regular file.
fn check_output(a: &EvalArgs, data: Option<&Path>) -> Result<()> {
    let Some(o) = &a.output else { return Ok(()) };
    let mut inputs: Vec<PathBuf> = [&a.src, &a.reference, &a.compare, &a.expect_fairseq]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    inputs.push(a.model.clone());
    for d in [
        Some(a.model.as_path()),
        data,
        a.dict_dir.as_deref(),
        a.compare.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        inputs.extend(output::files_in(d));
    }
    output::check_file(o, &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>())
}

/// Python's `repr(float)`: shortest round-trip digits, `1e-05` style
/// exponents below 1e-4 and from 1e16, `.0` on integers.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let ax = x.abs();
    if ax != 0.0 && !(1e-4..1e16).contains(&ax) {
        let s = format!("{x:e}");
        let (mant, exp) = s.split_once('e').expect("exponent form");
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mant}e{sign}{digits:0>2}");
    }
    if x == x.trunc() {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// One decoded test set (or its shard): hypotheses and the texts fairseq prints.
struct Decoded {
    /// The sentence ids decoded, ascending (all of them unless sharded).
    ids: Vec<usize>,
    /// Per decoded sentence (aligned with `ids`): its hypotheses.
    hyps: Vec<Vec<Hypothesis>>,
    /// Per decoded sentence, per hypothesis: the printed (de-BPE'd) text.
    texts: Vec<Vec<String>>,
    seconds: f64,
    tokens: usize,
}

/// A progress bar on stderr when it is a terminal (and not `--quiet`).
pub fn progress_bar(quiet: bool, len: Option<u64>, label: &str) -> Option<indicatif::ProgressBar> {
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar =
            indicatif::ProgressBar::with_draw_target(len, indicatif::ProgressDrawTarget::stderr());
        let template = match len {
            Some(_) => "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} sentences {msg}",
            None => "{prefix} [{elapsed_precise}] {pos} sentences {msg}",
        };
        bar.set_style(indicatif::ProgressStyle::with_template(template).expect("a valid template"));
        bar.set_prefix(label.to_string());
        bar
    })
}

/// Shows sentences/s and tokens/s on `bar`.
pub fn show_speed(bar: &indicatif::ProgressBar, sents: usize, tokens: usize, start: Instant) {
    let s = start.elapsed().as_secs_f64().max(1e-9);
    bar.set_position(sents as u64);
    bar.set_message(format!(
        "{:.1} sentences/s, {:.1} tokens/s",
        sents as f64 / s,
        tokens as f64 / s
    ));
}

fn decode(
    backend: &mut dyn ModelEngine,
    set: &TestSet,
    a: &EvalArgs,
    bpe: Option<BpeMode>,
    label: &str,
) -> Result<Decoded> {
    let opts = a.decoding.beam_options();
    let tgt_lens: Option<Vec<usize>> = set.refs.as_ref().map(|r| r.iter().map(Vec::len).collect());
    let src_lens: Vec<usize> = set.src.iter().map(Vec::len).collect();
    let batches = plan_shard(
        &src_lens,
        tgt_lens.as_deref(),
        &a.decoding.batching(),
        a.shard.shard()?,
    )?;
    let total = batches.iter().map(Vec::len).sum::<usize>();
    let bar = progress_bar(a.quiet, Some(total as u64), label);
    let start = Instant::now();
    let mut done_sents = 0usize;
    let mut done_tokens = 0usize;
    let decoded = decode_batches(backend, &set.src, &batches, &opts, &mut |_, hyps| {
        done_sents += hyps.len();
        done_tokens += hyps.iter().map(|h| h[0].tokens.len()).sum::<usize>();
        if let Some(bar) = &bar {
            show_speed(bar, done_sents, done_tokens, start);
        }
    })
    .with_context(|| {
        // Name the files: decoding errors (a source longer than the model's
        // positions, a token outside its vocabulary) do not know them.
        let input = match (&a.src, &a.data) {
            (Some(src), _) => src.display().to_string(),
            (None, Some(data)) => format!(
                "{} ({} split)",
                data.display(),
                set.split.as_deref().unwrap_or(&a.subset)
            ),
            (None, None) => "the test set".into(),
        };
        format!("{}: decoding {input}", a.model.display())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (ids, hyps): (Vec<usize>, Vec<Vec<Hypothesis>>) = decoded.into_iter().unzip();
    let texts = hyps
        .iter()
        .map(|hs| {
            hs.iter()
                .map(|h| set.dicts.tgt.string(&ids_u32(&h.tokens), bpe))
                .collect()
        })
        .collect();
    let tokens = hyps.iter().map(|h| h[0].tokens.len()).sum();
    Ok(Decoded {
        ids,
        hyps,
        texts,
        seconds,
        tokens,
    })
}

fn ids_u32(tokens: &[i64]) -> Vec<u32> {
    tokens.iter().map(|&t| t as u32).collect()
}

impl DecodeArgs {
    /// The beam search's options.
    pub fn beam_options(&self) -> BeamOptions {
        BeamOptions {
            beam: self.beam,
            nbest: self.nbest,
            lenpen: self.lenpen,
            unkpen: self.unkpen,
            max_len_a: self.max_len_a,
            max_len_b: self.max_len_b,
            min_len: self.min_len,
            normalize_scores: !self.unnormalized,
        }
    }

    /// fairseq's batching flags.
    pub fn batching(&self) -> Batching {
        Batching {
            batch_size: self.batch_size,
            max_tokens: self.max_tokens,
            required_batch_size_multiple: self.required_batch_size_multiple,
        }
    }

    /// `--remove-bpe`, parsed.
    pub fn bpe(&self) -> Result<Option<BpeMode>> {
        match &self.remove_bpe {
            Some(m) => Ok(Some(m.parse().map_err(|e| anyhow!("--remove-bpe: {e}"))?)),
            None => Ok(None),
        }
    }

    /// Appends sentence `id`'s output: its hypotheses, one a line, or
    /// fairseq-generate's S-/T-/H-/D-/P- lines with `--fairseq-format`.
    pub fn render_sentence(&self, out: &mut String, s: &Rendered) {
        let id = s.id;
        if !self.fairseq_format {
            for t in s.texts {
                out.push_str(t);
                out.push('\n');
            }
            return;
        }
        out.push_str(&format!("S-{id}\t{}\n", s.source));
        if let Some(t) = &s.target {
            out.push_str(&format!("T-{id}\t{t}\n"));
        }
        for (h, text) in s.hyps.iter().zip(s.texts) {
            let score = py_float(self.score_base.convert(h.score) as f64);
            out.push_str(&format!("H-{id}\t{score}\t{text}\n"));
            if self.score_base == ScoreBase::Two {
                out.push_str(&format!("D-{id}\t{score}\t{text}\n"));
            }
            let p: Vec<String> = h
                .positional_scores
                .iter()
                .map(|&x| format!("{:.4}", self.score_base.convert(x)))
                .collect();
            out.push_str(&format!("P-{id}\t{}\n", p.join(" ")));
        }
    }
}

/// One sentence's output, as [`DecodeArgs::render_sentence`] prints it.
pub struct Rendered<'a> {
    /// The global sentence id.
    pub id: usize,
    /// The source as fairseq prints it (S- line).
    pub source: String,
    /// The reference (T- line), when known.
    pub target: Option<String>,
    pub hyps: &'a [Hypothesis],
    pub texts: &'a [String],
}

/// Both corpus metrics over the first hypotheses, as fairseq-generate adds them.
struct Scores {
    bleu: crate::metrics::BleuResult,
    sacrebleu: crate::metrics::SacreBleuScore,
    signature: String,
}

fn score(set: &TestSet, d: &Decoded, bpe: Option<BpeMode>) -> Option<Scores> {
    let refs = set.refs.as_ref()?;
    let mut bleu = BleuScorer::new();
    let mut sacre = SacreBleu::new();
    for (k, &i) in d.ids.iter().enumerate() {
        let r = &refs[i];
        let target_str = set.dicts.tgt.string_escape_unk(r, bpe);
        let hyp_str = &d.texts[k][0];
        match bpe {
            Some(_) => bleu.add(&target_str, hyp_str),
            None => bleu.add_ids(r, &ids_u32(&d.hyps[k][0].tokens)),
        }
        sacre.add(&target_str, hyp_str);
    }
    Some(Scores {
        bleu: bleu.result(),
        sacrebleu: sacre.result(),
        signature: sacre.signature(),
    })
}

impl Scores {
    fn line(&self, scoring: Scoring) -> String {
        match scoring {
            Scoring::Bleu => self.bleu.fairseq_string(),
            Scoring::Sacrebleu => self.sacrebleu.format(),
        }
    }
    fn json(&self) -> Json {
        json!({
            "bleu": {
                "score": self.bleu.score,
                "string": self.bleu.fairseq_string(),
                "precisions": self.bleu.precisions.map(|p| p * 100.0),
                "bp": self.bleu.bp,
                "ratio": self.bleu.ratio,
                "syslen": self.bleu.syslen,
                "reflen": self.bleu.reflen,
            },
            "sacrebleu": {
                "score": self.sacrebleu.score,
                "string": self.sacrebleu.format(),
                "signature": self.signature,
            },
        })
    }
}

/// The hypotheses as text: plain lines or fairseq-generate's lines.
fn render(a: &EvalArgs, set: &TestSet, d: &Decoded, bpe: Option<BpeMode>) -> String {
    let mut out = String::new();
    for (k, &i) in d.ids.iter().enumerate() {
        a.decoding.render_sentence(
            &mut out,
            &Rendered {
                id: i,
                source: set.dicts.src.string(&ids_u32(&set.src[i]), bpe),
                target: set
                    .refs
                    .as_ref()
                    .map(|r| set.dicts.tgt.string_escape_unk(&r[i], bpe)),
                hyps: &d.hyps[k],
                texts: &d.texts[k],
            },
        );
    }
    out
}

/// H- lines of a fairseq-generate output, per sentence id: (score in its
/// base, text). The base is 2 when the file has D- lines (fairseq ≥ 0.9).
/// Per sentence id: (score as printed, text) of each H- line.
type FairseqHyps = BTreeMap<usize, Vec<(f64, String)>>;

fn read_fairseq(path: &Path) -> Result<(FairseqHyps, bool)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = FairseqHyps::new();
    let mut base2 = false;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("D-") {
            base2 = true;
        }
        let Some(rest) = line.strip_prefix("H-") else {
            continue;
        };
        let mut f = rest.splitn(3, '\t');
        let bad = || anyhow!("{}:{}: malformed H- line", path.display(), n + 1);
        let id: usize = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let score: f64 = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let hyp = f.next().unwrap_or("").to_string();
        out.entry(id).or_default().push((score, hyp));
    }
    ensure!(
        !out.is_empty(),
        "{}: no H- lines (not a fairseq-generate output?)",
        path.display()
    );
    Ok((out, base2))
}

struct Expectation {
    identical: usize,
    total: usize,
    differences: Vec<String>,
    max_score_diff: f64,
    base2: bool,
}

fn expect_fairseq(path: &Path, d: &Decoded, set_len: usize) -> Result<Expectation> {
    let (want, base2) = read_fairseq(path)?;
    let mut e = Expectation {
        identical: 0,
        total: d.hyps.len(),
        differences: vec![],
        max_score_diff: 0.0,
        base2,
    };
    if let Some(&last) = want.keys().next_back() {
        if last >= set_len {
            e.differences.push(format!(
                "{} has sentence ids up to {last}, the test set has {set_len}",
                path.display()
            ));
        }
    }
    for (k, (&i, ours)) in d.ids.iter().zip(&d.texts).enumerate() {
        let Some(theirs) = want.get(&i) else {
            e.differences
                .push(format!("{i}: no H-{i} line in {}", path.display()));
            continue;
        };
        let n = ours.len().min(theirs.len());
        let same = ours.len() == theirs.len() && ours.iter().zip(theirs).all(|(o, (_, t))| o == t);
        if same {
            e.identical += 1;
        } else if let Some(j) = (0..n).find(|&j| ours[j] != theirs[j].1) {
            e.differences.push(format!(
                "{i} (hypothesis {}): ours {:?}, fairseq {:?}",
                j + 1,
                ours[j],
                theirs[j].1
            ));
        } else {
            e.differences.push(format!(
                "{i}: {} hypotheses, fairseq has {}",
                ours.len(),
                theirs.len()
            ));
        }
        for (j, (_, text)) in theirs.iter().enumerate().take(n) {
            if &ours[j] == text {
                let theirs_e = if base2 {
                    theirs[j].0 * std::f64::consts::LN_2
                } else {
                    theirs[j].0
                };
                let diff = (d.hyps[k][j].score as f64 - theirs_e).abs();
                e.max_score_diff = e.max_score_diff.max(diff);
            }
        }
    }
    Ok(e)
}

struct Comparison {
    other: PathBuf,
    identical: usize,
    max_score_diff: f64,
    /// `--compare-compute-type`: the other compute type and the largest
    /// |Δ log-prob| of a token of our hypotheses under teacher forcing.
    forced: Option<(String, f64)>,
    scores: Option<Scores>,
    decoded_seconds: f64,
}

/// Runs `admin-convert eval`.
pub fn run(mut a: EvalArgs) -> Result<ExitCode> {
    a.decoding.beam_options().validate()?;
    let bpe = a.decoding.bpe()?;
    if a.shard.shard()?.is_sharded() {
        a.decoding.fairseq_format = true;
    }
    let load_start = Instant::now();
    let data = data_dir(&a, &query(&a)?)?;
    check_output(&a, data.as_deref())?;
    let Opened { mut backend, dicts } = open_model(&a.model, &a)?;
    let set = load_test_set(&a, data.as_deref(), dicts)?;
    check_vocab(backend.as_ref(), &set, &a.model)?;
    let load_seconds = load_start.elapsed().as_secs_f64();

    let label = if a.compare.is_some() || a.compare_compute_type.is_some() {
        "model 1"
    } else {
        "translating"
    };
    let d = decode(backend.as_mut(), &set, &a, bpe, label)?;
    let scores = score(&set, &d, bpe);

    let hyps_on_stdout = a.output.is_none() && !a.quiet && !a.json;
    let rendered = render(&a, &set, &d, bpe);
    if let Some(p) = &a.output {
        crate::write::atomic_write(p, |w| Ok(w.write_all(rendered.as_bytes())?))?;
        if !a.json {
            println!("wrote {}", p.display());
        }
    } else if hyps_on_stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(rendered.as_bytes())?;
        out.flush()?;
    }

    let comparison = compare(&a, backend.as_mut(), &set, &d, bpe)?;
    let expectation = match &a.expect_fairseq {
        Some(p) => Some(expect_fairseq(p, &d, set.src.len())?),
        None => None,
    };

    let n = d.hyps.len();
    let per_s = |x: usize, s: f64| if s > 0.0 { x as f64 / s } else { 0.0 };
    if a.json {
        let mut j = json!({
            "model": a.model.display().to_string(),
            "backend": backend.name(),
            "precision": backend.precision().name(),
            "beam": a.decoding.beam,
            "nbest": a.decoding.nbest,
            "sentences": n,
            "hypotheses": d.hyps.iter().map(Vec::len).sum::<usize>(),
            "tokens": d.tokens,
            "load_seconds": load_seconds,
            "seconds": d.seconds,
            "sentences_per_second": per_s(n, d.seconds),
            "tokens_per_second": per_s(d.tokens, d.seconds),
            "score_base": a.decoding.score_base.name(),
        });
        let obj = j.as_object_mut().expect("an object");
        obj.insert(
            "scores".into(),
            scores.as_ref().map_or(Json::Null, Scores::json),
        );
        if let Some(c) = &comparison {
            obj.insert(
                "compare".into(),
                json!({
                    "model": c.other.display().to_string(),
                    "identical": c.identical,
                    "sentences": n,
                    "max_abs_score_diff": c.max_score_diff,
                    "backend": c.forced.as_ref().map(|f| f.0.clone()),
                    "max_abs_forced_logprob_diff": c.forced.as_ref().map(|f| f.1),
                    "seconds": c.decoded_seconds,
                    "scores": c.scores.as_ref().map_or(Json::Null, Scores::json),
                }),
            );
        }
        if let Some(e) = &expectation {
            obj.insert(
                "expect_fairseq".into(),
                json!({
                    "file": a.expect_fairseq.as_ref().map(|p| p.display().to_string()),
                    "identical": e.identical,
                    "sentences": e.total,
                    "differences": e.differences,
                    "max_abs_score_diff": e.max_score_diff,
                }),
            );
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        let mut lines = vec![format!(
            "Translated {n} sentences ({} tokens) in {:.1}s ({:.2} sentences/s, {:.2} tokens/s) with {}",
            d.tokens,
            d.seconds,
            per_s(n, d.seconds),
            per_s(d.tokens, d.seconds),
            backend.name()
        )];
        let subset = set.split.as_deref().unwrap_or("input");
        if let Some(s) = &scores {
            lines.push(format!(
                "Generate {subset} with beam={}: {}",
                a.decoding.beam,
                s.line(a.scoring)
            ));
            if a.scoring == Scoring::Sacrebleu {
                lines.push(format!("sacreBLEU signature: {}", s.signature));
            }
        }
        if let Some(c) = &comparison {
            if let (Some(s1), Some(s2)) = (&scores, &c.scores) {
                lines.push(format!(
                    "model 1 {}: {}",
                    a.model.display(),
                    s1.line(a.scoring)
                ));
                lines.push(format!(
                    "model 2 {}: {}",
                    c.other.display(),
                    s2.line(a.scoring)
                ));
            }
            lines.push(format!(
                "compare: {}/{n} identical hypotheses, max |Δ score| {:.3e} (natural log)",
                c.identical, c.max_score_diff
            ));
            if let Some((b2, diff)) = &c.forced {
                lines.push(format!(
                    "compare {b2}: max |Δ log-prob| {diff:.3e} under teacher forcing of model 1's hypotheses (natural log)"
                ));
            }
        }
        if let Some(e) = &expectation {
            lines.push(format!(
                "expect-fairseq: {}/{} hypotheses identical to {}, max |Δ score| {:.3e} (natural log; file in base {})",
                e.identical,
                e.total,
                a.expect_fairseq.as_ref().expect("set").display(),
                e.max_score_diff,
                if e.base2 { "2" } else { "e" }
            ));
            for diff in e.differences.iter().take(10) {
                lines.push(format!("  differs: {diff}"));
            }
            if e.differences.len() > 10 {
                lines.push(format!("  ... and {} more", e.differences.len() - 10));
            }
        }
        let text = lines.join("\n") + "\n";
        if hyps_on_stdout {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    if expectation.is_some_and(|e| !e.differences.is_empty()) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--compare` (another model) or `--compare-compute-type` (this model on
/// the native engine in another precision).
fn compare(
    a: &EvalArgs,
    backend: &mut dyn ModelEngine,
    set: &TestSet,
    d: &Decoded,
    bpe: Option<BpeMode>,
) -> Result<Option<Comparison>> {
    let mut runtime = a.runtime.clone();
    let other = match (&a.compare, a.compare_compute_type) {
        (Some(_), Some(_)) => bail!("--compare and --compare-compute-type exclude each other"),
        (None, None) => return Ok(None),
        (Some(other), None) => {
            runtime.fp16 |= a.compare_fp16;
            if let Some(b) = a.compare_backend {
                runtime.backend = b;
            } else if runtime.fp16 && runtime.backend == super::model::BackendKind::Native {
                // The native engine is float32: fp16 runs on the graphs.
                runtime.backend = super::model::BackendKind::Auto;
            }
            other
        }
        (None, Some(ct)) => {
            runtime.backend = super::model::BackendKind::Native;
            runtime.compute_type = ct;
            &a.model
        }
    };
    let Opened {
        backend: mut b2, ..
    } = open_with(other, a, &runtime)?;
    check_vocab(b2.as_ref(), set, other)?;
    let d2 = decode(b2.as_mut(), set, a, bpe, "model 2")?;
    let identical = d
        .texts
        .iter()
        .zip(&d2.texts)
        .filter(|(x, y)| x == y)
        .count();
    let max_score_diff = d
        .hyps
        .iter()
        .zip(&d2.hyps)
        .map(|(x, y)| (x[0].score as f64 - y[0].score as f64).abs())
        .fold(0.0, f64::max);
    let forced = match a.compare_compute_type {
        Some(_) => Some((b2.name(), forced_diff(backend, b2.as_mut(), set, d, a)?)),
        None => None,
    };
    Ok(Some(Comparison {
        other: other.clone(),
        identical,
        max_score_diff,
        forced,
        scores: score(set, &d2, bpe),
        decoded_seconds: d2.seconds,
    }))
}

/// The largest |Δ log-prob| of a token of `d`'s best hypotheses, teacher
/// forced through both backends.
fn forced_diff(
    b1: &mut dyn ModelEngine,
    b2: &mut dyn ModelEngine,
    set: &TestSet,
    d: &Decoded,
    a: &EvalArgs,
) -> Result<f64> {
    let targets: Vec<Vec<i64>> = d.hyps.iter().map(|h| h[0].tokens.clone()).collect();
    let batch = a.decoding.batch_size.unwrap_or(32).max(1);
    let s1 = crate::score::score(b1, &set.src, &targets, batch)?;
    let s2 = crate::score::score(b2, &set.src, &targets, batch)?;
    Ok(s1
        .iter()
        .zip(&s2)
        .flat_map(|(x, y)| x.positional.iter().zip(&y.positional))
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max))
}
