//! `admin-convert score`: teacher-forced scores of references, like
//! `fairseq-generate --score-reference` (H- sentence score, P- per-token
//! log-probs including EOS), in input order.

use super::eval::ScoreBase;
use super::model::{open, RuntimeArgs};
use super::ModelArgs;
use crate::data::locate::{self, DataSource, Dicts, Query};
use crate::write::output;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct ScoreArgs {
    /// Checkpoint (.pt / .safetensors) or a directory written by `export`.
    model: PathBuf,
    /// fairseq data directory (like `fairseq-generate DATA`; default: the
    /// one the checkpoint records).
    #[arg(conflicts_with_all = ["data", "src"])]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    input: DataArgs,
    #[arg(long, default_value_t = 64, allow_negative_numbers = true, value_parser = super::in_range(1, super::MAX_BATCH))]
    batch_size: usize,
    /// Log base of printed scores: e (natural, fairseq 0.8) or 2 (fairseq 0.12).
    #[arg(long, value_enum, default_value_t = ScoreBase::E)]
    score_base: ScoreBase,
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
    #[command(flatten)]
    shard: super::eval::ShardArgs,
}

/// Where test sentences come from: BPE'd text + dictionaries, or a fairseq
/// binarized split (found by [`crate::data::locate`]).
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
    /// Directory holding the dictionaries (default: --data, or the model's own).
    #[arg(long)]
    pub dict_dir: Option<PathBuf>,
    /// Source language (fairseq's -s; default: from the split's file names).
    #[arg(long, short = 's')]
    pub source_lang: Option<String>,
    /// Target language (fairseq's -t).
    #[arg(long, short = 't')]
    pub target_lang: Option<String>,
}

impl DataArgs {
    /// True when test sentences were given.
    pub fn given(&self) -> bool {
        self.src.is_some() || self.data.is_some()
    }

    /// The language pair and split asked for.
    pub fn query(&self) -> Result<Query> {
        Query::new(
            self.source_lang.as_deref(),
            self.target_lang.as_deref(),
            &self.subset,
        )
    }

    /// The sentence pairs: the split of `data` (else --data), or --src/--ref
    /// encoded with `dicts`.
    pub fn pairs(&self, data: Option<&Path>, dicts: &Dicts) -> Result<Pairs> {
        match data.or(self.data.as_deref()) {
            Some(dir) => split_pairs(dir, &self.query()?, dicts),
            None => text_pairs(self.src.as_deref(), self.reference.as_deref(), dicts),
        }
    }

    /// Every file this names (outputs must not overwrite them).
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = [&self.src, &self.reference]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for d in [&self.data, &self.dict_dir].into_iter().flatten() {
            v.extend(output::files_in(d));
        }
        v
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

/// The binarized split of `dir`, with references.
fn split_pairs(dir: &Path, q: &Query, dicts: &Dicts) -> Result<Pairs> {
    let split = locate::read_split(dir, q)?;
    let tgt = split.tgt.with_context(|| {
        format!(
            "{}: split '{}' has no target side to score",
            dir.display(),
            q.subset
        )
    })?;
    Ok(Pairs {
        target_text: tgt.iter().map(|t| dicts.tgt.string(t, None)).collect(),
        targets: tgt.into_iter().map(to_i64).collect(),
        sources: split.src.into_iter().map(to_i64).collect(),
    })
}

/// --src/--ref text encoded with the dictionaries.
fn text_pairs(src: Option<&Path>, reference: Option<&Path>, dicts: &Dicts) -> Result<Pairs> {
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
        sources: s.iter().map(|l| to_i64(dicts.src.encode_line(l))).collect(),
        targets: t.iter().map(|l| to_i64(dicts.tgt.encode_line(l))).collect(),
        target_text: t,
    })
}

/// The data directory to score when no --src was given: the positional
/// one, --data, the checkpoint's recorded one, or what an export records.
fn data_dir(a: &ScoreArgs, q: &Query) -> Result<Option<PathBuf>> {
    if a.input.src.is_some() {
        return Ok(None);
    }
    let given = a.data_dir.as_deref().or(a.input.data.as_deref());
    match locate::find_data_dir(given, &a.model, q)? {
        DataSource::Dir(d) => Ok(Some(d)),
        DataSource::None(msg) => bail!(
            "{}",
            msg.replace("admin-convert eval", "admin-convert score")
        ),
    }
}

pub fn run(a: ScoreArgs) -> Result<ExitCode> {
    let base2 = a.score_base == ScoreBase::Two;
    let q = a.input.query()?;
    let data = data_dir(&a, &q)?;
    let out_path = match &a.output {
        Some(o) => {
            let mut inputs = a.input.input_files();
            inputs.push(a.model.clone());
            inputs.extend(data.iter().flat_map(|d| output::files_in(d)));
            inputs.extend(output::files_in(&a.model));
            output::check_file(o, &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
            Some(o.clone())
        }
        None => None,
    };
    let mut opened = open(&a.model, &a.model_args, &a.runtime)?;
    let own = opened.dicts.take();
    let dicts = match (&a.input.dict_dir, &data) {
        (Some(d), _) | (None, Some(d)) => Some(locate::dicts_in(d, &q)?),
        (None, None) => own,
    }
    .with_context(|| {
        format!(
            "{}: no dictionaries: pass --dict-dir DIR (with dict.SRC.txt / dict.TGT.txt)",
            a.model.display()
        )
    })?;
    let info = opened.backend.info();
    locate::check_vocab(&dicts, info.src_vocab, info.tgt_vocab, &a.model)?;
    let pairs = a.input.pairs(data.as_deref(), &dicts)?;
    let scored = crate::score::score_shard(
        opened.backend.as_mut(),
        &pairs.sources,
        &pairs.targets,
        a.batch_size,
        a.shard.shard()?,
    )
    .with_context(|| {
        // Name the files: scoring errors (a reference longer than the model's
        // positions) do not know them.
        let files: Vec<String> = [&a.input.src, &a.input.reference, &a.input.data]
            .into_iter()
            .flatten()
            .map(|p| p.display().to_string())
            .collect();
        format!("{}: scoring {}", a.model.display(), files.join(", "))
    })?;
    let k = if base2 { std::f64::consts::LN_2 } else { 1.0 };
    let mut buf: Vec<u8> = vec![];
    let out = &mut buf;
    if a.json {
        let sents: Vec<_> = scored
            .iter()
            .map(|(i, s)| {
                serde_json::json!({
                    "id": i,
                    "score": s.score / k,
                    "positional": s.positional.iter().map(|&x| x as f64 / k).collect::<Vec<_>>(),
                })
            })
            .collect();
        let total: f64 = scored
            .iter()
            .map(|(_, s)| s.positional.iter().map(|&x| x as f64).sum::<f64>())
            .sum();
        let ntok: usize = scored.iter().map(|(_, s)| s.positional.len()).sum();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "sentences": scored.len(),
                "tokens": ntok,
                "score_base": a.score_base.name(),
                "avg_token_logprob": total / ntok.max(1) as f64 / k,
                "scores": sents,
            }))?
        )?;
    } else {
        for (i, s) in &scored {
            writeln!(out, "H-{i}\t{}\t{}", s.score / k, pairs.target_text[*i])?;
            let p: Vec<String> = s
                .positional
                .iter()
                .map(|&x| format!("{:.4}", x as f64 / k))
                .collect();
            writeln!(out, "P-{i}\t{}", p.join(" "))?;
        }
    }
    match out_path {
        Some(p) => {
            crate::write::atomic_write(&p, |w| Ok(w.write_all(&buf)?))?;
            eprintln!("wrote {}", p.display());
        }
        None => {
            let mut o = std::io::stdout().lock();
            o.write_all(&buf)?;
            o.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
