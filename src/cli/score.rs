//! `admin-convert score`: teacher-forced scores of references, like
//! `fairseq-generate --score-reference` (H- sentence score, P- per-token
//! log-probs including EOS), in input order.

use super::model::{open, RuntimeArgs};
use super::ModelArgs;
use crate::data::dict::Dictionary;
use crate::data::indexed::IndexedDataset;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct ScoreArgs {
    /// Checkpoint (.pt / .safetensors) or a directory written by `export`.
    model: PathBuf,
    #[command(flatten)]
    input: DataArgs,
    #[arg(long, default_value_t = 64, allow_negative_numbers = true, value_parser = super::in_range(1, super::MAX_BATCH))]
    batch_size: usize,
    /// Log base of printed scores: e (natural, fairseq 0.8) or 2 (fairseq 0.12).
    #[arg(long, default_value = "e")]
    score_base: String,
    /// Write here instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print JSON instead of H-/P- lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    model_args: ModelArgs,
}

/// Where test sentences come from: BPE'd text + dictionaries, or a fairseq
/// binarized split.
#[derive(Args, Clone, Debug, Default)]
pub struct DataArgs {
    /// Source sentences, one per line (BPE applied, as the model was trained).
    #[arg(long, requires = "reference")]
    pub src: Option<PathBuf>,
    /// Reference translations, one per line.
    #[arg(long = "ref")]
    pub reference: Option<PathBuf>,
    /// fairseq binarized data directory (instead of --src/--ref).
    #[arg(long, conflicts_with = "src")]
    pub data: Option<PathBuf>,
    /// Split of --data.
    #[arg(long, default_value = "test")]
    pub subset: String,
    /// Directory holding dict.src.txt / dict.tgt.txt (default: --data, or the model's own).
    #[arg(long)]
    pub dict_dir: Option<PathBuf>,
}

impl DataArgs {
    /// True when test sentences were given.
    pub fn given(&self) -> bool {
        self.src.is_some() || self.data.is_some()
    }

    /// The dictionary directory: --dict-dir, else --data.
    pub fn dict_dir(&self) -> Option<PathBuf> {
        self.dict_dir.clone().or_else(|| self.data.clone())
    }

    /// The sentence pairs, encoded with `dicts` where text is given.
    pub fn pairs(&self, dicts: &(Dictionary, Dictionary)) -> Result<Pairs> {
        load_pairs(
            self.src.as_deref(),
            self.reference.as_deref(),
            self.data.as_deref(),
            &self.subset,
            dicts,
        )
    }
}

/// Source and reference token ids (each ending in EOS) plus reference text.
pub struct Pairs {
    pub sources: Vec<Vec<i64>>,
    pub targets: Vec<Vec<i64>>,
    pub target_text: Vec<String>,
}

fn to_i64(v: Vec<u32>) -> Vec<i64> {
    v.into_iter().map(i64::from).collect()
}

/// `{subset}.{src}-{tgt}.{src}` and `.{tgt}` prefixes in a fairseq data dir.
pub fn find_split(dir: &Path, subset: &str) -> Result<(PathBuf, PathBuf)> {
    let mut prefixes = vec![];
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".idx") {
            if let Some(rest) = stem.strip_prefix(&format!("{subset}.")) {
                prefixes.push(rest.to_string());
            }
        }
    }
    prefixes.sort();
    // rest = "src-tgt.lang"
    for p in &prefixes {
        if let Some((pair, lang)) = p.rsplit_once('.') {
            if let Some((s, t)) = pair.split_once('-') {
                if lang == s {
                    let src = dir.join(format!("{subset}.{pair}.{s}"));
                    let tgt = dir.join(format!("{subset}.{pair}.{t}"));
                    return Ok((src, tgt));
                }
            }
        }
    }
    bail!(
        "{}: no binarized '{subset}' split (expected {subset}.SRC-TGT.SRC.idx/.bin)",
        dir.display()
    )
}

/// Load sentence pairs from text (encoded with the dictionaries) or a data dir.
pub fn load_pairs(
    src: Option<&Path>,
    reference: Option<&Path>,
    data: Option<&Path>,
    subset: &str,
    dicts: &(Dictionary, Dictionary),
) -> Result<Pairs> {
    let (sd, td) = dicts;
    if let Some(dir) = data {
        let (sp, tp) = find_split(dir, subset)?;
        let open = |p: &Path| IndexedDataset::open(p).with_context(|| format!("{}", p.display()));
        let (s, t) = (open(&sp)?, open(&tp)?);
        if s.len() != t.len() {
            bail!(
                "{}: {} sources but {} targets",
                dir.display(),
                s.len(),
                t.len()
            );
        }
        let mut p = Pairs {
            sources: vec![],
            targets: vec![],
            target_text: vec![],
        };
        for i in 0..s.len() {
            let tt = t.get(i).with_context(|| format!("{}", tp.display()))?;
            p.target_text.push(td.string(&tt, None));
            p.targets.push(to_i64(tt));
            p.sources.push(to_i64(
                s.get(i).with_context(|| format!("{}", sp.display()))?,
            ));
        }
        return Ok(p);
    }
    let (Some(src), Some(reference)) = (src, reference) else {
        bail!("give --src and --ref, or --data DIR");
    };
    let read = |p: &Path| -> Result<Vec<String>> {
        Ok(std::fs::read_to_string(p)
            .with_context(|| format!("{}: cannot read", p.display()))?
            .lines()
            .map(str::to_string)
            .collect())
    };
    let (s, t) = (read(src)?, read(reference)?);
    if s.len() != t.len() {
        bail!(
            "{} has {} lines but {} has {}",
            src.display(),
            s.len(),
            reference.display(),
            t.len()
        );
    }
    Ok(Pairs {
        sources: s.iter().map(|l| to_i64(sd.encode_line(l))).collect(),
        targets: t.iter().map(|l| to_i64(td.encode_line(l))).collect(),
        target_text: t,
    })
}

pub fn run(a: ScoreArgs) -> Result<ExitCode> {
    let base2 = match a.score_base.as_str() {
        "e" => false,
        "2" => true,
        b => bail!("unknown --score-base {b} (e, 2)"),
    };
    let dict_dir = a.input.dict_dir();
    let mut opened = open(&a.model, &a.model_args, &a.runtime, dict_dir.as_deref())?;
    let dicts = opened.dicts.take().with_context(|| {
        format!(
            "{}: no dictionaries: pass --dict-dir DIR (with dict.src.txt / dict.tgt.txt)",
            a.model.display()
        )
    })?;
    let pairs = a.input.pairs(&dicts)?;
    let scored = crate::score::score(
        opened.backend.as_mut(),
        &pairs.sources,
        &pairs.targets,
        a.batch_size,
    )?;
    let k = if base2 { std::f64::consts::LN_2 } else { 1.0 };
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("{}: cannot create", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    if a.json {
        let sents: Vec<_> = scored
            .iter()
            .map(|s| {
                serde_json::json!({
                    "score": s.score / k,
                    "positional": s.positional.iter().map(|&x| x as f64 / k).collect::<Vec<_>>(),
                })
            })
            .collect();
        let total: f64 = scored
            .iter()
            .map(|s| s.positional.iter().map(|&x| x as f64).sum::<f64>())
            .sum();
        let ntok: usize = scored.iter().map(|s| s.positional.len()).sum();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "sentences": scored.len(),
                "tokens": ntok,
                "score_base": a.score_base,
                "avg_token_logprob": total / ntok.max(1) as f64 / k,
                "scores": sents,
            }))?
        )?;
    } else {
        for (i, s) in scored.iter().enumerate() {
            writeln!(out, "H-{i}\t{}\t{}", s.score / k, pairs.target_text[i])?;
            let p: Vec<String> = s
                .positional
                .iter()
                .map(|&x| format!("{:.4}", x as f64 / k))
                .collect();
            writeln!(out, "P-{i}\t{}", p.join(" "))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
