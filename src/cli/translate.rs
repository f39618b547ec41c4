//! `admin-convert translate MODEL [FILE|-]`: translate a corpus of any size,
//! like fairseq-interactive, in memory that does not grow with the corpus.
//!
//! Lines (plain or BPE'd text, one sentence each) are read from FILE or
//! stdin `--buffer-size` at a time; each buffer is cut into fairseq's
//! length-sorted batches ([`crate::decode::plan`]) and decoded with eval's
//! beam search and flags ([`super::eval::DecodeArgs`]); its hypotheses go
//! to stdout in input order before the next buffer is read. A progress
//! line is drawn on stderr only when stderr is a terminal.
//!
//! With `--num-shards N --shard-id I` every shard reads the whole input,
//! cuts the same buffers and batches, and decodes batch k (counted over the
//! whole run) when `k mod N = I` (fairseq's rule, [`crate::decode::Shard`]);
//! lines carry their global ids (`--fairseq-format`, implied) so that
//! `admin-convert merge-shards` puts them back in order.

use super::eval::{progress_bar, show_speed, text_dictionaries, DecodeArgs, Rendered, ShardArgs};
use super::model::{open, RuntimeArgs};
use super::ModelArgs;
use crate::data::locate::{self, Dicts, Query};
use crate::data::BpeMode;
use crate::decode::{decode_batches, plan, Batching, BeamOptions, Shard};
use crate::runtime::ModelEngine;
use anyhow::{Context, Result};
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TranslateArgs {
    /// A checkpoint (.pt / .safetensors) or a directory written by `admin-convert export`.
    pub model: PathBuf,
    /// Source sentences, one per line, BPE'd as the model was trained; `-` or absent: stdin.
    pub input: Option<PathBuf>,
    /// Directory with dict.SRC.txt / dict.TGT.txt (default: the dictionaries
    /// stored with the model, else those of the data directory it records).
    #[arg(long)]
    pub dict_dir: Option<PathBuf>,
    /// Source language suffix of the dictionaries in --dict-dir.
    #[arg(long, short = 's')]
    pub source_lang: Option<String>,
    /// Target language suffix.
    #[arg(long, short = 't')]
    pub target_lang: Option<String>,
    /// Sentences read and batched together (fairseq-interactive's --buffer-size);
    /// memory grows with this, not with the corpus.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub buffer_size: u64,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub decoding: DecodeArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub model_args: ModelArgs,
}

/// What stays fixed while buffers stream through.
struct Session<'a> {
    backend: &'a mut dyn ModelEngine,
    dicts: Dicts,
    decoding: &'a DecodeArgs,
    opts: BeamOptions,
    batching: Batching,
    bpe: Option<BpeMode>,
    shard: Shard,
}

/// Counters carried from one buffer to the next.
#[derive(Default)]
struct Progress {
    /// Global id of the buffer's first line.
    next_id: usize,
    /// Batches cut so far (the shard rule counts over the whole run).
    batches: usize,
    sentences: usize,
    tokens: usize,
}

/// Runs `admin-convert translate`.
pub fn run(mut a: TranslateArgs) -> Result<ExitCode> {
    a.decoding.beam_options().validate()?;
    let shard = a.shard.shard()?;
    if shard.is_sharded() {
        a.decoding.fairseq_format = true;
    }
    let q = Query::new(a.source_lang.as_deref(), a.target_lang.as_deref(), "test")?;
    let opened = open(&a.model, &a.model_args, &a.runtime)?;
    let mut backend = opened.backend;
    let dicts = text_dictionaries(a.dict_dir.as_deref(), &q, opened.dicts, &a.model)?;
    let info = backend.info();
    locate::check_vocab(&dicts, info.src_vocab, info.tgt_vocab, &a.model)?;
    let mut session = Session {
        backend: backend.as_mut(),
        dicts,
        decoding: &a.decoding,
        opts: a.decoding.beam_options(),
        batching: a.decoding.batching(),
        bpe: a.decoding.bpe()?,
        shard,
    };
    let (mut reader, name): (Box<dyn BufRead>, String) = match &a.input {
        Some(p) if p.as_os_str() != "-" => (
            Box::new(std::io::BufReader::new(
                std::fs::File::open(p).with_context(|| format!("{}: cannot open", p.display()))?,
            )),
            p.display().to_string(),
        ),
        _ => (Box::new(std::io::stdin().lock()), "<stdin>".into()),
    };
    let bar = progress_bar(a.quiet, None, "translating");
    let start = Instant::now();
    let mut progress = Progress::default();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let capacity = a.buffer_size as usize;
    loop {
        let lines = read_buffer(reader.as_mut(), capacity, progress.next_id, &name)?;
        if lines.is_empty() {
            break;
        }
        let text = session.translate_buffer(&lines, &mut progress)?;
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if let Some(bar) = &bar {
            show_speed(bar, progress.sentences, progress.tokens, start);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(ExitCode::SUCCESS)
}

/// Up to `capacity` lines; errors name the input and the line number.
fn read_buffer(
    reader: &mut dyn BufRead,
    capacity: usize,
    first_id: usize,
    name: &str,
) -> Result<Vec<String>> {
    let mut lines = Vec::with_capacity(capacity.min(1 << 16));
    while lines.len() < capacity {
        let mut line = String::new();
        let n = reader.read_line(&mut line).with_context(|| {
            format!(
                "{name}:{}: cannot read (not UTF-8?)",
                first_id + lines.len() + 1
            )
        })?;
        if n == 0 {
            break;
        }
        lines.push(line);
    }
    Ok(lines)
}

impl Session<'_> {
    /// Decodes this shard's batches of one buffer; its output, in input order.
    fn translate_buffer(&mut self, lines: &[String], progress: &mut Progress) -> Result<String> {
        let src: Vec<Vec<i64>> = lines
            .iter()
            .map(|l| {
                self.dicts
                    .src
                    .encode_line(l)
                    .into_iter()
                    .map(i64::from)
                    .collect()
            })
            .collect();
        let lens: Vec<usize> = src.iter().map(Vec::len).collect();
        let mut mine = vec![];
        for batch in plan(&lens, None, &self.batching)? {
            if self.shard.owns(progress.batches) {
                mine.push(batch);
            }
            progress.batches += 1;
        }
        let decoded = decode_batches(self.backend, &src, &mine, &self.opts, &mut |_, _| {})?;
        let mut out = String::new();
        for (i, hyps) in decoded {
            let texts: Vec<String> = hyps
                .iter()
                .map(|h| self.dicts.tgt.string(&to_u32(&h.tokens), self.bpe))
                .collect();
            progress.sentences += 1;
            progress.tokens += hyps[0].tokens.len();
            self.decoding.render_sentence(
                &mut out,
                &Rendered {
                    id: progress.next_id + i,
                    source: self.dicts.src.string(&to_u32(&src[i]), self.bpe),
                    target: None,
                    hyps: &hyps,
                    texts: &texts,
                },
            );
        }
        progress.next_id += lines.len();
        Ok(out)
    }
}

fn to_u32(tokens: &[i64]) -> Vec<u32> {
    tokens.iter().map(|&t| t as u32).collect()
}
