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
use crate::data::{BpeMode, Dictionary, IndexedDataset};
use crate::decode::{decode_all, Batching, BeamOptions, Hypothesis};
use crate::export::{GraphKind, Precision};
use crate::metrics::{BleuScorer, SacreBleu};
use crate::runtime::Backend;
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
    /// Source sentences, one per line, already BPE'd (what fairseq-interactive reads).
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
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

    /// Beam width.
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    /// Hypotheses printed per sentence.
    #[arg(long, default_value_t = 1)]
    pub nbest: usize,
    /// Length penalty: score = sum / len^lenpen.
    #[arg(long, default_value_t = 1.0)]
    pub lenpen: f64,
    /// Subtracted from the <unk> log-probability.
    #[arg(long, default_value_t = 0.0)]
    pub unkpen: f64,
    /// At most a·S + b target tokens, S the padded source width of the batch.
    #[arg(long, default_value_t = 0.0)]
    pub max_len_a: f64,
    #[arg(long, default_value_t = 200)]
    pub max_len_b: usize,
    /// No EOS before this many tokens.
    #[arg(long, default_value_t = 1)]
    pub min_len: usize,
    /// Do not divide scores by len^lenpen.
    #[arg(long)]
    pub unnormalized: bool,
    /// Sentences per batch (fairseq --batch-size / --max-sentences).
    #[arg(long, alias = "max-sentences")]
    pub batch_size: Option<usize>,
    /// Tokens per batch (default 12000 when --batch-size is absent, like fairseq).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub required_batch_size_multiple: usize,
    /// Join subwords before printing and scoring: subword_nmt (default), sentencepiece, ...
    #[arg(long, num_args = 0..=1, default_missing_value = "subword_nmt", value_name = "MODE")]
    pub remove_bpe: Option<String>,

    /// Write the hypotheses here instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Print fairseq-generate's S-/T-/H-/P- lines (and D- lines with --score-base 2).
    #[arg(long)]
    pub fairseq_format: bool,
    /// Log base of printed scores: e (fairseq 0.8) or 2 (fairseq ≥ 0.9, adds D- lines).
    #[arg(long, value_enum, default_value_t = ScoreBase::E)]
    pub score_base: ScoreBase,
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
    pub compare_backend: Option<String>,
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
    fn name(self) -> &'static str {
        match self {
            ScoreBase::E => "e",
            ScoreBase::Two => "2",
        }
    }
    /// fairseq's conversion of a float32 natural-log score.
    fn convert(self, x: f32) -> f32 {
        match self {
            ScoreBase::E => x,
            ScoreBase::Two => x / std::f32::consts::LN_2,
        }
    }
}

/// Opens MODEL with the shared [`open`]; an export directory without
/// dictionary files may still carry them in its graphs' metadata.
fn open_model(path: &Path, a: &EvalArgs) -> Result<Opened> {
    open_with(path, a, &a.runtime)
}

fn open_with(path: &Path, a: &EvalArgs, runtime: &RuntimeArgs) -> Result<Opened> {
    let mut opened = open(path, &a.model_args, runtime, None)?;
    if opened.dicts.is_none() && path.is_dir() {
        let precision = if runtime.fp16 {
            Precision::Fp16
        } else {
            Precision::Fp32
        };
        opened.dicts = dictionaries_in_graph(&path.join(GraphKind::Encoder.file_name(precision)))?;
    }
    Ok(opened)
}

/// The `fairseq.dict.src` / `fairseq.dict.tgt` metadata of an exported graph.
pub fn dictionaries_in_graph(path: &Path) -> Result<Option<(Dictionary, Dictionary)>> {
    use prost::Message;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{}: not an ONNX model", path.display()))?;
    let get = |key: &str| {
        model
            .metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.clone())
    };
    match (get("fairseq.dict.src"), get("fairseq.dict.tgt")) {
        (Some(s), Some(t)) => {
            let parse = |text: &str, which: &str| {
                Dictionary::from_dict_txt(text)
                    .with_context(|| format!("{}: fairseq.dict.{which} metadata", path.display()))
            };
            Ok(Some((parse(&s, "src")?, parse(&t, "tgt")?)))
        }
        _ => Ok(None),
    }
}

/// fairseq's language pair of a binarized split: files `SUBSET.A-B.A.idx`.
fn infer_langs(dir: &Path, subset: &str) -> Result<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for n in &names {
        let parts: Vec<&str> = n.split('.').collect();
        if parts.len() == 4 && parts[0] == subset && parts[3] == "idx" {
            if let Some((a, b)) = parts[1].split_once('-') {
                if parts[2] == a && names.contains(&format!("{subset}.{a}-{b}.{b}.idx")) {
                    return Ok((a.to_string(), b.to_string()));
                }
            }
        }
    }
    bail!(
        "{}: no binarized '{subset}' split (SUBSET.SRC-TGT.SRC.idx); give --subset, or --source-lang/--target-lang",
        dir.display()
    )
}

/// `dict.SRC.txt` and `dict.TGT.txt` of `dir`.
fn read_dicts(dir: &Path, langs: Option<(&str, &str)>) -> Result<(Dictionary, Dictionary)> {
    let read = |lang: &str| -> Result<Dictionary> {
        let p = dir.join(format!("dict.{lang}.txt"));
        Dictionary::read(&p).with_context(|| format!("{}", p.display()))
    };
    if let Some((s, t)) = langs {
        return Ok((read(s)?, read(t)?));
    }
    if dir.join("dict.src.txt").is_file() && dir.join("dict.tgt.txt").is_file() {
        return Ok((read("src")?, read("tgt")?));
    }
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("dict.") && n.ends_with(".txt"))
        .collect();
    found.sort();
    match found.as_slice() {
        [] => bail!("{}: no dict.*.txt dictionaries", dir.display()),
        [one] => {
            let d = read(&one["dict.".len()..one.len() - ".txt".len()])?;
            Ok((d.clone(), d))
        }
        _ => bail!(
            "{}: several dictionaries ({}): give --source-lang and --target-lang",
            dir.display(),
            found.join(", ")
        ),
    }
}

/// What is translated: source ids (with EOS) and, when known, reference ids.
struct TestSet {
    src: Vec<Vec<i64>>,
    refs: Option<Vec<Vec<u32>>>,
    src_dict: Dictionary,
    tgt_dict: Dictionary,
}

fn idx_exists(prefix: &Path) -> bool {
    let mut p = prefix.as_os_str().to_owned();
    p.push(".idx");
    Path::new(&p).is_file()
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

fn load_test_set(a: &EvalArgs, stored: Option<(Dictionary, Dictionary)>) -> Result<TestSet> {
    let langs = match (&a.source_lang, &a.target_lang) {
        (Some(s), Some(t)) => Some((s.clone(), t.clone())),
        (None, None) => None,
        _ => bail!("give both --source-lang and --target-lang, or neither"),
    };
    if let Some(dir) = &a.data {
        let (s, t) = match langs {
            Some(l) => l,
            None => infer_langs(dir, &a.subset)?,
        };
        let (src_dict, tgt_dict) = match &a.dict_dir {
            Some(d) => read_dicts(d, Some((&s, &t)))?,
            None => read_dicts(dir, Some((&s, &t)))?,
        };
        let prefix = |lang: &str| -> PathBuf {
            let fwd = dir.join(format!("{}.{s}-{t}.{lang}", a.subset));
            if idx_exists(&fwd) {
                fwd
            } else {
                dir.join(format!("{}.{t}-{s}.{lang}", a.subset))
            }
        };
        let open = |lang: &str| -> Result<IndexedDataset> {
            let p = prefix(lang);
            IndexedDataset::open(&p).with_context(|| format!("{}.{{idx,bin}}", p.display()))
        };
        let read_all = |ds: &IndexedDataset| -> Result<Vec<Vec<u32>>> {
            ds.iter().map(|r| r.map_err(anyhow::Error::from)).collect()
        };
        let src_ds = open(&s)?;
        let src = read_all(&src_ds)?
            .into_iter()
            .map(|v| v.into_iter().map(i64::from).collect())
            .collect::<Vec<Vec<i64>>>();
        let tgt_prefix = prefix(&t);
        let refs = if idx_exists(&tgt_prefix) {
            let r = read_all(&open(&t)?)?;
            ensure!(
                r.len() == src.len(),
                "{}: {} sources but {} targets",
                dir.display(),
                src.len(),
                r.len()
            );
            Some(r)
        } else {
            None
        };
        return Ok(TestSet {
            src,
            refs,
            src_dict,
            tgt_dict,
        });
    }
    let src_path = a.src.as_ref().expect("clap requires --src or --data");
    let (src_dict, tgt_dict) = match (&a.dict_dir, stored) {
        (Some(d), _) => read_dicts(d, langs.as_ref().map(|(s, t)| (s.as_str(), t.as_str())))?,
        (None, Some(d)) => d,
        (None, None) => bail!(
            "no dictionaries: give --dict-dir (a directory with dict.SRC.txt and dict.TGT.txt) \
             or export the model with its dictionaries"
        ),
    };
    let src: Vec<Vec<i64>> = read_lines(src_path)?
        .iter()
        .map(|l| src_dict.encode_line(l).into_iter().map(i64::from).collect())
        .collect();
    let refs = match &a.reference {
        Some(p) => {
            let r: Vec<Vec<u32>> = read_lines(p)?
                .iter()
                .map(|l| tgt_dict.encode_line(l))
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
        src_dict,
        tgt_dict,
    })
}

/// Checks the dictionaries fit the model's embedding tables.
fn check_vocab(backend: &dyn Backend, set: &TestSet, what: &Path) -> Result<()> {
    let info = backend.info();
    for (dict, rows, side) in [
        (&set.src_dict, info.src_vocab, "source"),
        (&set.tgt_dict, info.tgt_vocab, "target"),
    ] {
        ensure!(
            dict.len() == rows,
            "{}: the {side} dictionary has {} entries but the model's {side} embedding has {rows} rows: wrong dictionary?",
            what.display(),
            dict.len()
        );
    }
    Ok(())
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

/// One decoded test set: hypotheses and the texts fairseq prints.
struct Decoded {
    hyps: Vec<Vec<Hypothesis>>,
    /// Per sentence, per hypothesis: the printed (de-BPE'd) text.
    texts: Vec<Vec<String>>,
    seconds: f64,
    tokens: usize,
}

fn decode(
    backend: &mut dyn Backend,
    set: &TestSet,
    a: &EvalArgs,
    bpe: Option<BpeMode>,
    label: &str,
) -> Result<Decoded> {
    let opts = beam_options(a);
    let batching = Batching {
        batch_size: a.batch_size,
        max_tokens: a.max_tokens,
        required_batch_size_multiple: a.required_batch_size_multiple,
    };
    let tgt_lens: Option<Vec<usize>> = set.refs.as_ref().map(|r| r.iter().map(Vec::len).collect());
    let bar = (!a.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(set.src.len() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} sentences {msg}",
            )
            .expect("a valid template"),
        );
        bar.set_prefix(label.to_string());
        bar
    });
    let start = Instant::now();
    let mut done_sents = 0usize;
    let mut done_tokens = 0usize;
    let hyps = decode_all(
        backend,
        &set.src,
        tgt_lens.as_deref(),
        &opts,
        &batching,
        &mut |_, hyps| {
            done_sents += hyps.len();
            done_tokens += hyps.iter().map(|h| h[0].tokens.len()).sum::<usize>();
            if let Some(bar) = &bar {
                let s = start.elapsed().as_secs_f64().max(1e-9);
                bar.set_position(done_sents as u64);
                bar.set_message(format!(
                    "{:.1} sentences/s, {:.1} tokens/s",
                    done_sents as f64 / s,
                    done_tokens as f64 / s
                ));
            }
        },
    )?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let texts = hyps
        .iter()
        .map(|hs| {
            hs.iter()
                .map(|h| set.tgt_dict.string(&ids(&h.tokens), bpe))
                .collect()
        })
        .collect();
    let tokens = hyps.iter().map(|h| h[0].tokens.len()).sum();
    Ok(Decoded {
        hyps,
        texts,
        seconds,
        tokens,
    })
}

fn ids(tokens: &[i64]) -> Vec<u32> {
    tokens.iter().map(|&t| t as u32).collect()
}

fn beam_options(a: &EvalArgs) -> BeamOptions {
    BeamOptions {
        beam: a.beam,
        nbest: a.nbest,
        lenpen: a.lenpen,
        unkpen: a.unkpen,
        max_len_a: a.max_len_a,
        max_len_b: a.max_len_b,
        min_len: a.min_len,
        normalize_scores: !a.unnormalized,
    }
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
    for (i, r) in refs.iter().enumerate() {
        let target_str = set.tgt_dict.string_escape_unk(r, bpe);
        let hyp_str = &d.texts[i][0];
        match bpe {
            Some(_) => bleu.add(&target_str, hyp_str),
            None => bleu.add_ids(r, &ids(&d.hyps[i][0].tokens)),
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
    for (i, hs) in d.hyps.iter().enumerate() {
        if !a.fairseq_format {
            for t in &d.texts[i] {
                out.push_str(t);
                out.push('\n');
            }
            continue;
        }
        out.push_str(&format!(
            "S-{i}\t{}\n",
            set.src_dict.string(&ids(&set.src[i]), bpe)
        ));
        if let Some(refs) = &set.refs {
            out.push_str(&format!(
                "T-{i}\t{}\n",
                set.tgt_dict.string_escape_unk(&refs[i], bpe)
            ));
        }
        for (h, text) in hs.iter().zip(&d.texts[i]) {
            let score = py_float(a.score_base.convert(h.score) as f64);
            out.push_str(&format!("H-{i}\t{score}\t{text}\n"));
            if a.score_base == ScoreBase::Two {
                out.push_str(&format!("D-{i}\t{score}\t{text}\n"));
            }
            let p: Vec<String> = h
                .positional_scores
                .iter()
                .map(|&s| format!("{:.4}", a.score_base.convert(s)))
                .collect();
            out.push_str(&format!("P-{i}\t{}\n", p.join(" ")));
        }
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

fn expect_fairseq(path: &Path, d: &Decoded) -> Result<Expectation> {
    let (want, base2) = read_fairseq(path)?;
    let mut e = Expectation {
        identical: 0,
        total: d.hyps.len(),
        differences: vec![],
        max_score_diff: 0.0,
        base2,
    };
    if let Some(&last) = want.keys().next_back() {
        if last >= d.hyps.len() {
            e.differences.push(format!(
                "{} has sentence ids up to {last}, we translated {}",
                path.display(),
                d.hyps.len()
            ));
        }
    }
    for (i, ours) in d.texts.iter().enumerate() {
        let Some(theirs) = want.get(&i) else {
            e.differences
                .push(format!("{i}: no H-{i} line in {}", path.display()));
            continue;
        };
        let n = ours.len().min(theirs.len());
        let same = ours.len() == theirs.len() && ours.iter().zip(theirs).all(|(o, (_, t))| o == t);
        if same {
            e.identical += 1;
        } else if let Some(k) = (0..n).find(|&k| ours[k] != theirs[k].1) {
            e.differences.push(format!(
                "{i} (hypothesis {}): ours {:?}, fairseq {:?}",
                k + 1,
                ours[k],
                theirs[k].1
            ));
        } else {
            e.differences.push(format!(
                "{i}: {} hypotheses, fairseq has {}",
                ours.len(),
                theirs.len()
            ));
        }
        for (k, (_, text)) in theirs.iter().enumerate().take(n) {
            if &ours[k] == text {
                let theirs_e = if base2 {
                    theirs[k].0 * std::f64::consts::LN_2
                } else {
                    theirs[k].0
                };
                let diff = (d.hyps[i][k].score as f64 - theirs_e).abs();
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
pub fn run(a: EvalArgs) -> Result<ExitCode> {
    beam_options(&a).validate()?;
    let bpe: Option<BpeMode> = match &a.remove_bpe {
        Some(m) => Some(m.parse().map_err(|e| anyhow!("--remove-bpe: {e}"))?),
        None => None,
    };
    let load_start = Instant::now();
    let Opened { mut backend, dicts } = open_model(&a.model, &a)?;
    let set = load_test_set(&a, dicts)?;
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
        std::fs::write(p, &rendered).with_context(|| format!("writing {}", p.display()))?;
    } else if hyps_on_stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(rendered.as_bytes())?;
        out.flush()?;
    }

    let comparison = compare(&a, backend.as_mut(), &set, &d, bpe)?;
    let expectation = match &a.expect_fairseq {
        Some(p) => Some(expect_fairseq(p, &d)?),
        None => None,
    };

    let n = d.hyps.len();
    let per_s = |x: usize, s: f64| if s > 0.0 { x as f64 / s } else { 0.0 };
    if a.json {
        let mut j = json!({
            "model": a.model.display().to_string(),
            "backend": backend.name(),
            "precision": backend.precision().name(),
            "beam": a.beam,
            "nbest": a.nbest,
            "sentences": n,
            "hypotheses": d.hyps.iter().map(Vec::len).sum::<usize>(),
            "tokens": d.tokens,
            "load_seconds": load_seconds,
            "seconds": d.seconds,
            "sentences_per_second": per_s(n, d.seconds),
            "tokens_per_second": per_s(d.tokens, d.seconds),
            "score_base": a.score_base.name(),
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
        let subset = if a.data.is_some() {
            a.subset.as_str()
        } else {
            "input"
        };
        if let Some(s) = &scores {
            lines.push(format!(
                "Generate {subset} with beam={}: {}",
                a.beam,
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
    backend: &mut dyn Backend,
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
            if let Some(b) = &a.compare_backend {
                runtime.backend = b.clone();
            } else if runtime.fp16 && runtime.backend == "native" {
                // The native engine is float32: fp16 runs on the graphs.
                runtime.backend = "auto".into();
            }
            other
        }
        (None, Some(ct)) => {
            runtime.backend = "native".into();
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
    b1: &mut dyn Backend,
    b2: &mut dyn Backend,
    set: &TestSet,
    d: &Decoded,
    a: &EvalArgs,
) -> Result<f64> {
    let targets: Vec<Vec<i64>> = d.hyps.iter().map(|h| h[0].tokens.clone()).collect();
    let batch = a.batch_size.unwrap_or(32).max(1);
    let s1 = crate::score::score(b1, &set.src, &targets, batch)?;
    let s2 = crate::score::score(b2, &set.src, &targets, batch)?;
    Ok(s1
        .iter()
        .zip(&s2)
        .flat_map(|(x, y)| x.positional.iter().zip(&y.positional))
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max))
}
