//! `admin-convert merge-shards FILES…`: puts the outputs of a sharded run
//! (`eval` / `translate` / `score` with `--num-shards N --shard-id I`,
//! fairseq-generate's `TAG-<id>` lines) back in sentence order and, when
//! they carry references (T- lines), computes BLEU over the whole set.
//!
//! Each shard's file is already in ascending id order, so the files are
//! merged as sorted streams: memory does not grow with the corpus. Every id
//! from 0 to the last must come from exactly one file; a gap or a duplicate
//! is an error naming the id and the files. Lines without a `TAG-<id>\t`
//! prefix (summaries) are skipped.

use crate::metrics::{BleuScorer, SacreBleu};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use super::eval::Scoring;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' outputs (any order).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print only the hypotheses' text, one line each, in sentence order.
    #[arg(long)]
    pub plain: bool,
    /// Write the merged lines here instead of stdout (the summary then goes to stdout).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Corpus metric printed when the files carry T- lines.
    #[arg(long, value_enum, default_value_t = Scoring::Bleu)]
    pub scoring: Scoring,
}

/// All lines of one sentence id in one file.
struct Group {
    id: usize,
    lines: Vec<String>,
}

/// One shard's file, read group by group in ascending id order.
struct ShardReader {
    name: String,
    reader: Box<dyn BufRead>,
    line_no: usize,
    pending: Option<(usize, String)>,
    last: Option<usize>,
}

/// `TAG-<id>\t…` → id, for one-letter upper-case tags.
fn tagged_id(line: &str) -> Option<usize> {
    let (head, _) = line.split_once('\t')?;
    let (tag, id) = head.split_once('-')?;
    if tag.len() != 1 || !tag.chars().all(|c| c.is_ascii_uppercase()) {
        return None;
    }
    id.parse().ok()
}

impl ShardReader {
    fn open(path: &PathBuf) -> Result<Self> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(ShardReader {
            name: path.display().to_string(),
            reader: Box::new(std::io::BufReader::new(f)),
            line_no: 0,
            pending: None,
            last: None,
        })
    }

    /// The next tagged line, skipping untagged ones.
    fn next_line(&mut self) -> Result<Option<(usize, String)>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        loop {
            let mut line = String::new();
            self.line_no += 1;
            let n = self.reader.read_line(&mut line).with_context(|| {
                format!("{}:{}: cannot read (not UTF-8?)", self.name, self.line_no)
            })?;
            if n == 0 {
                return Ok(None);
            }
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            if let Some(id) = tagged_id(&line) {
                return Ok(Some((id, line)));
            }
        }
    }

    /// The next sentence's lines.
    fn next_group(&mut self) -> Result<Option<Group>> {
        let Some((id, first)) = self.next_line()? else {
            return Ok(None);
        };
        if self.last.is_some_and(|l| id <= l) {
            bail!(
                "{}:{}: sentence {id} after sentence {} (not one shard's output in order?)",
                self.name,
                self.line_no,
                self.last.expect("set")
            );
        }
        self.last = Some(id);
        let mut lines = vec![first];
        while let Some((next, line)) = self.next_line()? {
            if next != id {
                self.pending = Some((next, line));
                break;
            }
            lines.push(line);
        }
        Ok(Some(Group { id, lines }))
    }
}

/// The text after `TAG-<id>\t` (and after the score for H- lines).
fn field(line: &str, scored: bool) -> &str {
    let rest = line.split_once('\t').map_or("", |(_, r)| r);
    if scored {
        rest.split_once('\t').map_or("", |(_, r)| r)
    } else {
        rest
    }
}

/// Running corpus scores over (T-, first H-) pairs.
struct Metrics {
    bleu: BleuScorer,
    sacre: SacreBleu,
    pairs: usize,
}

/// Runs `admin-convert merge-shards`.
pub fn run(a: MergeArgs) -> Result<ExitCode> {
    let mut shards: Vec<ShardReader> = a
        .files
        .iter()
        .map(ShardReader::open)
        .collect::<Result<_>>()?;
    let mut heads: Vec<Option<Group>> = shards
        .iter_mut()
        .map(ShardReader::next_group)
        .collect::<Result<_>>()?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("{}: cannot create", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut m = Metrics {
        bleu: BleuScorer::new(),
        sacre: SacreBleu::new(),
        pairs: 0,
    };
    let mut expected = 0usize;
    loop {
        let mut owners = heads
            .iter()
            .enumerate()
            .filter_map(|(k, g)| g.as_ref().map(|g| (g.id, k)));
        let Some((id, k)) = owners.clone().min() else {
            break;
        };
        if let Some((_, other)) = owners.find(|&(i, o)| i == id && o != k) {
            bail!(
                "sentence {id} is in both {} and {} (the same shard twice?)",
                shards[k].name,
                shards[other].name
            );
        }
        if id != expected {
            bail!("sentence {expected} is in none of the files (a shard missing?)");
        }
        let group = heads[k].take().expect("a head");
        write_group(&mut out, &group, a.plain, &mut m)?;
        heads[k] = shards[k].next_group()?;
        expected += 1;
    }
    out.flush()?;
    let summary = summary(expected, a.files.len(), &m, a.scoring);
    if a.output.is_none() && !summary.is_empty() {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

fn write_group(out: &mut dyn Write, g: &Group, plain: bool, m: &mut Metrics) -> Result<()> {
    let target = g.lines.iter().find(|l| l.starts_with("T-"));
    let hyp = g.lines.iter().find(|l| l.starts_with("H-"));
    if let (Some(t), Some(h)) = (target, hyp) {
        m.bleu.add(field(t, false), field(h, true));
        m.sacre.add(field(t, false), field(h, true));
        m.pairs += 1;
    }
    for line in &g.lines {
        if !plain {
            writeln!(out, "{line}")?;
        } else if line.starts_with("H-") {
            writeln!(out, "{}", field(line, true))?;
        }
    }
    Ok(())
}

fn summary(n: usize, files: usize, m: &Metrics, scoring: Scoring) -> String {
    let mut text = format!("Merged {n} sentences from {files} files\n");
    if m.pairs == n && n > 0 {
        let line = match scoring {
            Scoring::Bleu => m.bleu.result().fairseq_string(),
            Scoring::Sacrebleu => m.sacre.result().format(),
        };
        text.push_str(&format!("Generate merged: {line}\n"));
    }
    text
}
