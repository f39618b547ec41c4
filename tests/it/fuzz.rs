//! A structure-aware fuzz harness on stable Rust, run by CI and by hand.
//!
//! Seeds are the fixtures (torch zip and legacy checkpoints, safetensors,
//! `dict.txt`, binarized datasets). Each mutant is made by a mutator that
//! knows its format ([`mutate`]): pickle opcodes and their integer
//! arguments, copy / memo opcode runs, zip entries rebuilt (re-deflated,
//! dropped, renamed, resized) and zip header fields, safetensors header JSON
//! (dtypes, shapes, offsets, `fairseq.args`), dictionary lines, dataset
//! index fields; plus plain byte edits. Every checkpoint mutant goes through
//! the library's read / recognise / inspect path in process and through
//! `admin-convert inspect` (text and `--json`) as a child under an
//! address-space cap, measured with `wait4` ([`crate::limits`]);
//! dictionaries and datasets through their readers.
//!
//! A defect is: a panic, an abort or signal, an exit code outside 0..=2, an
//! error that is not one `error:` line, a timeout, a peak RSS above 1 GiB
//! plus the seed's size, or the input file changed. Each one is saved under
//! the output folder (`crash-*`) and fails the run.
//!
//! How it runs: [`smoke`] (a normal test, so CI runs it; 60 s by default,
//! `ADMIN_CONVERT_FUZZ_SECONDS` to change) starts this test binary again as a
//! worker ([`worker`], ignored otherwise) under a 4 GiB address-space cap; an
//! abort of the worker leaves the mutant it was on in `current.bin`, counted
//! as a crash, and a fresh worker carries on. `scripts/fuzz.sh --minutes N`
//! runs [`smoke`] for N minutes. The summary line gives mutants, mutants/s,
//! CLI runs, the largest child peak RSS and the crashes.

use crate::common::fixture;
use crate::limits::{run_capped, Capped, AS_CAP, RSS_BOUND_BASE};
use admin_convert::data::dict::Dictionary;
use admin_convert::data::indexed::IndexedDataset;
use admin_convert::read::Checkpoint;
use admin_convert::recognise::{self, Overrides};
use std::io::{Cursor, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Random numbers (xorshift64*: deterministic from a seed, no dependency)

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// An integer a parser should find interesting: boundaries, huge, tiny.
    fn interesting(&mut self) -> i64 {
        const V: [i64; 16] = [
            0,
            1,
            -1,
            2,
            255,
            256,
            65535,
            1 << 24,
            i32::MAX as i64,
            i32::MIN as i64,
            1 << 31,
            1_000_000_000,
            1 << 40,
            1 << 62,
            i64::MAX,
            i64::MIN,
        ];
        if self.chance(4) {
            self.next() as i64 >> self.below(64)
        } else {
            *self.pick(&V)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    TorchZip,
    TorchLegacy,
    Safetensors,
    Dict,
    /// `.idx` then `.bin`, split at `split`.
    Dataset {
        split: usize,
    },
}

struct Seed {
    name: String,
    kind: Kind,
    bytes: Vec<u8>,
}

/// One of each kind of fixture, small ones first (more mutants per second).
fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let files = [
        "edge/fairseq_args.pt",
        "edge/fairseq_args_legacy.pt",
        "edge/fairseq_cfg_dict.pt",
        "edge/fairseq_cfg_omegaconf.pt",
        "edge/state_dict.pt",
        "tensors/postln-fairseq012-best.safetensors",
        "mixed/admin-fork-mixed.pt",
        "admin-rezero-fairseq08/checkpoint_best.pt",
        "admin-deepnet-fairseq08/checkpoint_best.pt",
        "independent/admin-fairseq08-best.safetensors",
        "postln-fairseq012/checkpoint_best.pt",
        "admintorch-fairseq012/checkpoint_best.pt",
        "data-bin/dict.src.txt",
        "data-bin-deepnet-fairseq08/dict.src.txt",
    ];
    for f in files {
        let bytes = std::fs::read(fixture(f)).expect("seed fixture");
        let kind = if f.ends_with(".txt") {
            Kind::Dict
        } else if f.ends_with(".safetensors") {
            Kind::Safetensors
        } else if bytes.starts_with(b"PK") {
            Kind::TorchZip
        } else {
            Kind::TorchLegacy
        };
        out.push(Seed {
            name: f.replace('/', "_"),
            kind,
            bytes,
        });
    }
    for side in ["src", "tgt"] {
        let prefix = format!("data-bin/test.src-tgt.{side}");
        let mut bytes = std::fs::read(fixture(&format!("{prefix}.idx"))).expect("idx");
        let split = bytes.len();
        bytes.extend(std::fs::read(fixture(&format!("{prefix}.bin"))).expect("bin"));
        out.push(Seed {
            name: prefix.replace('/', "_"),
            kind: Kind::Dataset { split },
            bytes,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Mutators

/// A mutant of `seed`: one to three structure-aware or byte-level edits.
fn mutate(seed: &Seed, rng: &mut Rng) -> (Kind, Vec<u8>) {
    let mut kind = seed.kind;
    let mut b = seed.bytes.clone();
    for _ in 0..1 + rng.below(3) {
        b = match kind {
            Kind::TorchZip => mutate_zip(&b, rng),
            Kind::TorchLegacy => mutate_legacy(&b, rng),
            Kind::Safetensors => mutate_safetensors(&b, rng),
            Kind::Dict => mutate_dict(&b, rng),
            Kind::Dataset { split } => {
                let (idx, bin) = b.split_at(split.min(b.len()));
                let (mut idx, mut bin) = (idx.to_vec(), bin.to_vec());
                if rng.chance(3) {
                    bytes(&mut bin, rng);
                } else {
                    dataset_index(&mut idx, rng);
                }
                kind = Kind::Dataset { split: idx.len() };
                idx.extend(bin);
                idx
            }
        };
    }
    (kind, b)
}

/// Plain byte edits: flips, interesting integers, cuts, inserts, copies.
fn bytes(b: &mut Vec<u8>, rng: &mut Rng) {
    if b.is_empty() {
        b.push(rng.next() as u8);
        return;
    }
    let at = rng.below(b.len());
    match rng.below(7) {
        0 => b[at] ^= 1 << rng.below(8),
        1 => b[at] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, b'\n', b'.', b'{']),
        2 => {
            let v = rng.interesting().to_le_bytes();
            let n = *rng.pick(&[1usize, 2, 4, 8]);
            for (i, x) in v.iter().take(n).enumerate() {
                if let Some(slot) = b.get_mut(at + i) {
                    *slot = *x;
                }
            }
        }
        3 => b.truncate(at),
        4 => {
            let n = 1 + rng.below(32);
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            b.splice(at..at, junk);
        }
        5 => {
            let len = 1 + rng.below((b.len() - at).min(4096));
            let chunk = b[at..at + len].to_vec();
            let to = rng.below(b.len());
            b.splice(to..to, chunk);
        }
        _ => {
            let len = 1 + rng.below((b.len() - at).min(256));
            b.drain(at..at + len);
        }
    }
}

/// Pickle-aware edits: integer arguments (shapes, strides, offsets, storage
/// sizes), opcode swaps, runs of copying and memo opcodes, spliced chunks.
fn pickle(p: &mut Vec<u8>, rng: &mut Rng) {
    if p.len() < 4 {
        bytes(p, rng);
        return;
    }
    match rng.below(6) {
        0 | 1 => {
            // An integer argument: K (u8), M (u16), J (i32), after a random position.
            let start = rng.below(p.len());
            let found = (start..p.len())
                .chain(0..start)
                .find(|&i| matches!(p[i], b'K' | b'M' | b'J'));
            let Some(i) = found else {
                return bytes(p, rng);
            };
            let v = rng.interesting();
            let (op, arg): (u8, Vec<u8>) = match rng.below(3) {
                0 => (b'K', vec![v as u8]),
                1 => (b'M', (v as u16).to_le_bytes().to_vec()),
                _ => (b'J', (v as i32).to_le_bytes().to_vec()),
            };
            let old = match p[i] {
                b'K' => 1,
                b'M' => 2,
                _ => 4,
            };
            let end = (i + 1 + old).min(p.len());
            let mut new = vec![op];
            new.extend(arg);
            p.splice(i..end, new);
        }
        2 => {
            // A run of opcodes that copy or share: DUP, BINGET, TUPLE, list(...).
            const RUNS: [&[u8]; 8] = [
                b"2",
                b"h\x01",
                b"h\x00\x85",
                b"(h\x01h\x01t",
                b"2\x86",
                b"cbuiltins\ntuple\nh\x01\x85R",
                b"]q\x05(h\x05h\x05e",
                b"}(h\x01h\x01u",
            ];
            let run = rng.pick(&RUNS);
            let max = if rng.chance(4) { 20_000 } else { 50 };
            let n = 1 + rng.below(max);
            let at = rng.below(p.len());
            let ins: Vec<u8> = run.iter().copied().cycle().take(run.len() * n).collect();
            p.splice(at..at, ins);
        }
        3 => {
            // Another opcode in place of this byte.
            const OPS: &[u8] = b"()0123FIJKLMNPQRSTUVXabcdeghijlopqrstu}]\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95";
            let at = rng.below(p.len());
            p[at] = *rng.pick(OPS);
        }
        4 => {
            // Splice a chunk of the pickle elsewhere (duplicated structure).
            let at = rng.below(p.len());
            let len = 1 + rng.below((p.len() - at).min(2048));
            let chunk = p[at..at + len].to_vec();
            let to = rng.below(p.len());
            if rng.chance(2) {
                p.splice(to..to, chunk);
            } else {
                let end = (to + len).min(p.len());
                p.splice(to..end, chunk);
            }
        }
        _ => bytes(p, rng),
    }
}

fn mutate_legacy(b: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = b.to_vec();
    if rng.chance(5) {
        bytes(&mut b, rng);
        return b;
    }
    // The pickles sit at the start; the raw storages follow. Mutate a
    // window of the head as a pickle, leaving the rest in place.
    let head = b.len().min(64 << 10);
    let mut p = b[..head].to_vec();
    pickle(&mut p, rng);
    b.splice(..head, p);
    b
}

/// The entries of a zip archive, in order.
fn zip_entries(b: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut z = zip::ZipArchive::new(Cursor::new(b)).ok()?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).ok()?;
        let mut data = Vec::new();
        f.read_to_end(&mut data).ok()?;
        out.push((f.name().to_string(), data));
    }
    Some(out)
}

fn zip_build(entries: &[(String, Vec<u8>)], deflate: &[bool]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (i, (name, data)) in entries.iter().enumerate() {
        let method = if deflate.get(i).copied().unwrap_or(false) {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(data.len() > (1 << 30));
        w.start_file(name.as_str(), opts).expect("zip entry");
        w.write_all(data).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

fn mutate_zip(b: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = b.to_vec();
    if rng.chance(6) {
        bytes(&mut out, rng);
        return out;
    }
    if rng.chance(3) {
        zip_headers(&mut out, rng);
        return out;
    }
    let Some(mut entries) = zip_entries(b) else {
        bytes(&mut out, rng);
        return out;
    };
    let mut deflate = vec![false; entries.len()];
    let pkl = entries.iter().position(|(n, _)| n.ends_with("data.pkl"));
    match (rng.below(6), pkl) {
        (0..=2, Some(i)) => pickle(&mut entries[i].1, rng),
        (3, _) if !entries.is_empty() => {
            // Re-deflate some entries, sometimes one grown to a compressible bomb.
            for d in deflate.iter_mut() {
                *d = rng.chance(2);
            }
            if rng.chance(3) {
                let i = rng.below(entries.len());
                let grow = 1 << (16 + rng.below(8));
                entries[i].1.resize(grow, 0);
                deflate[i] = true;
            }
        }
        (4, _) if !entries.is_empty() => {
            let i = rng.below(entries.len());
            match rng.below(3) {
                0 => {
                    entries.remove(i);
                    deflate.pop();
                }
                1 => {
                    let n = entries[i].1.len();
                    entries[i].1.truncate(rng.below(n + 1));
                }
                _ => {
                    let e = entries[i].clone();
                    let j = rng.below(entries.len());
                    entries[j].0 = e.0;
                }
            }
        }
        _ => {
            let i = rng.below(entries.len().max(1));
            if let Some(e) = entries.get_mut(i) {
                bytes(&mut e.1, rng);
            }
        }
    }
    // Duplicate names make the writer refuse: fall back to a byte edit.
    let mut names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != entries.len() {
        bytes(&mut out, rng);
        return out;
    }
    zip_build(&entries, &deflate)
}

/// Edit a field of a local or central zip header: method, sizes, offsets,
/// name lengths, entry counts.
fn zip_headers(b: &mut [u8], rng: &mut Rng) {
    let sigs: [(&[u8], &[usize]); 3] = [
        (b"PK\x03\x04", &[8, 18, 22, 26, 28]),
        (b"PK\x01\x02", &[10, 20, 24, 28, 30, 42]),
        (b"PK\x05\x06", &[8, 10, 12, 16, 20]),
    ];
    let (sig, fields) = rng.pick(&sigs);
    let hits: Vec<usize> = b
        .windows(4)
        .enumerate()
        .filter(|(_, w)| w == sig)
        .map(|(i, _)| i)
        .collect();
    if hits.is_empty() {
        return;
    }
    let at = *rng.pick(&hits) + *rng.pick(fields);
    let v = rng.interesting().to_le_bytes();
    let width = if matches!(at - hits[0], 8 | 10 | 26 | 28 | 30) {
        2
    } else {
        4
    };
    for (i, x) in v.iter().take(width).enumerate() {
        if let Some(slot) = b.get_mut(at + i) {
            *slot = *x;
        }
    }
}

fn mutate_safetensors(b: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = b.to_vec();
    let parsed = (|| {
        let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
        let header: serde_json::Value = serde_json::from_slice(b.get(8..8 + n)?).ok()?;
        Some((n, header))
    })();
    let Some((n, mut header)) = parsed.filter(|_| !rng.chance(6)) else {
        bytes(&mut out, rng);
        return out;
    };
    let Some(obj) = header.as_object_mut() else {
        bytes(&mut out, rng);
        return out;
    };
    let names: Vec<String> = obj
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let junk = |rng: &mut Rng| -> serde_json::Value {
        match rng.below(7) {
            0 => serde_json::json!(rng.interesting()),
            1 => serde_json::json!(-(rng.below(5) as i64)),
            2 => serde_json::json!(0.5),
            3 => serde_json::json!("x".repeat(rng.below(300))),
            4 => serde_json::Value::Null,
            5 => serde_json::json!(true),
            _ => serde_json::json!({"a": [1, 2]}),
        }
    };
    match rng.below(5) {
        0 | 1 if !names.is_empty() => {
            let name = rng.pick(&names).clone();
            let t = &mut obj[&name];
            match rng.below(4) {
                0 => {
                    t["dtype"] = serde_json::json!(rng.pick(&[
                        "F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3",
                        "C64", "X"
                    ]))
                }
                1 => {
                    let rank = rng.below(5);
                    let shape: Vec<serde_json::Value> = (0..rank)
                        .map(|_| match rng.below(3) {
                            0 => junk(rng),
                            _ => serde_json::json!(rng.below(2000)),
                        })
                        .collect();
                    t["shape"] = serde_json::Value::Array(shape);
                }
                2 => {
                    t["data_offsets"] = serde_json::json!([
                        rng.interesting().unsigned_abs() >> rng.below(64),
                        rng.interesting().unsigned_abs() >> rng.below(64)
                    ])
                }
                _ => {
                    let key = rng.pick(&["dtype", "shape", "data_offsets"]);
                    t[*key] = junk(rng);
                }
            }
        }
        2 if !names.is_empty() => {
            let name = rng.pick(&names).clone();
            if rng.chance(2) {
                obj.remove(&name);
            } else {
                let v = obj[&name].clone();
                obj.insert(format!("{name}.copy"), v);
            }
        }
        _ => {
            // fairseq.args: one hyper-parameter set to something odd.
            let meta = obj
                .entry("__metadata__")
                .or_insert_with(|| serde_json::json!({}));
            let args = meta
                .get("fairseq.args")
                .and_then(|a| a.as_str())
                .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                .unwrap_or_else(|| serde_json::json!({}));
            let mut args = args.as_object().cloned().unwrap_or_default();
            let keys = [
                "encoder_layers",
                "decoder_layers",
                "encoder_embed_dim",
                "encoder_attention_heads",
                "decoder_attention_heads",
                "encoder_ffn_embed_dim",
                "max_source_positions",
                "max_target_positions",
                "activation_fn",
                "encoder_normalize_before",
                "arch",
                "share_all_embeddings",
            ];
            let key = rng.pick(&keys).to_string();
            args.insert(key, junk(rng));
            if let Some(m) = meta.as_object_mut() {
                m.insert(
                    "fairseq.args".into(),
                    serde_json::Value::String(serde_json::Value::Object(args).to_string()),
                );
            }
        }
    }
    let text = header.to_string().into_bytes();
    let mut new = (text.len() as u64).to_le_bytes().to_vec();
    new.extend(text);
    new.extend_from_slice(&b[8 + n..]);
    new
}

fn mutate_dict(b: &[u8], rng: &mut Rng) -> Vec<u8> {
    let text = String::from_utf8_lossy(b).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if lines.is_empty() || rng.chance(6) {
        let mut out = b.to_vec();
        bytes(&mut out, rng);
        return out;
    }
    let i = rng.below(lines.len());
    match rng.below(7) {
        0 => {
            let l = lines[i].clone();
            lines.insert(rng.below(lines.len()), l);
        }
        1 => {
            lines.remove(i);
        }
        2 => {
            let sym = lines[i].rsplit_once(' ').map_or("x", |(s, _)| s).to_owned();
            let count = rng.pick(&["-1", "0", "1e9", "99999999999999999999", "x", "", " "]);
            lines[i] = format!("{sym} {count}");
        }
        3 => lines[i].push_str(" #fairseq:overwrite"),
        4 => lines[i] = format!("{} 1", "w".repeat(1 + rng.below(20_000))),
        5 => lines[i] = lines[i].replace(' ', ""),
        _ => lines[i].push('\r'),
    }
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    out
}

/// Edit a field of a fairseq `.idx` header (magic, version, dtype, counts)
/// or its size / pointer arrays.
fn dataset_index(idx: &mut Vec<u8>, rng: &mut Rng) {
    if idx.len() < 34 || rng.chance(4) {
        return bytes(idx, rng);
    }
    // MMIDIDX: magic 9, version u64 @9, dtype u8 @17, len u64 @18, docs u64 @26.
    let (at, width) = match rng.below(5) {
        0 => (9, 8),
        1 => (17, 1),
        2 => (18, 8),
        3 => (26, 8),
        _ => (34 + 4 * rng.below((idx.len() - 34) / 4), 4),
    };
    let v = rng.interesting().to_le_bytes();
    for (i, x) in v.iter().take(width).enumerate() {
        if let Some(slot) = idx.get_mut(at + i) {
            *slot = *x;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Targets

/// The library path in process: open, recognise, inspect (which reads every
/// tensor). Errors are fine; a panic is a defect (caught by the caller).
fn library_checkpoint(path: &Path) {
    let Ok(ckpt) = Checkpoint::open(path) else {
        return;
    };
    for e in &ckpt.entries {
        let _ = ckpt.tensor(&e.name);
    }
    if let Ok(rec) = recognise::recognise(&ckpt, &Overrides::default()) {
        let _ = admin_convert::inspect::report(&ckpt, &rec);
    }
}

fn library_dict(path: &Path) {
    if let Ok(d) = Dictionary::read(path) {
        let _ = d.encode_line("a b c");
        let _ = d.to_dict_txt();
    }
}

fn library_dataset(prefix: &Path) {
    if let Ok(ds) = IndexedDataset::open(prefix) {
        for item in ds.iter().take(10_000) {
            let _ = item;
        }
    }
}

/// Peak RSS of this process so far, bytes.
fn self_peak_rss() -> u64 {
    // SAFETY: plain syscall filling a zeroed struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as u64 * 1024
}

#[derive(Default, Debug)]
struct Tally {
    mutants: u64,
    cli_runs: u64,
    crashes: u64,
    max_child_rss: u64,
    per_kind: std::collections::BTreeMap<String, u64>,
}

fn save_crash(out: &Path, n: u64, what: &str, name: &str, data: &[u8]) {
    let p = out.join(format!("crash-{n}-{name}.bin"));
    let _ = std::fs::write(&p, data);
    let _ = std::fs::write(p.with_extension("txt"), what);
    eprintln!("fuzz: DEFECT {what} -> {}", p.display());
}

/// Run one mutant through its targets; a description of the defect, if any.
fn run_one(kind: Kind, data: &[u8], dir: &Path, bound: u64, tally: &mut Tally) -> Option<String> {
    match kind {
        Kind::Dict => {
            let p = dir.join("dict.txt");
            std::fs::write(&p, data).expect("write mutant");
            let r = std::panic::catch_unwind(|| library_dict(&p));
            r.err().map(|_| "panic in Dictionary::read".to_string())
        }
        Kind::Dataset { split } => {
            let split = split.min(data.len());
            let prefix = dir.join("test.x-y.x");
            std::fs::write(dir.join("test.x-y.x.idx"), &data[..split]).expect("write");
            std::fs::write(dir.join("test.x-y.x.bin"), &data[split..]).expect("write");
            let r = std::panic::catch_unwind(|| library_dataset(&prefix));
            r.err().map(|_| "panic in IndexedDataset".to_string())
        }
        _ => {
            let ext = if kind == Kind::Safetensors {
                "safetensors"
            } else {
                "pt"
            };
            let p = dir.join(format!("mutant.{ext}"));
            std::fs::write(&p, data).expect("write mutant");
            if std::panic::catch_unwind(|| library_checkpoint(&p)).is_err() {
                return Some("panic in the library read / recognise / inspect path".into());
            }
            let path = p.to_str().expect("utf-8");
            let args: &[&str] = if tally.cli_runs.is_multiple_of(2) {
                &["inspect", path]
            } else {
                &["inspect", path, "--json"]
            };
            let c: Capped = run_capped(args, AS_CAP, Duration::from_secs(30));
            tally.cli_runs += 1;
            tally.max_child_rss = tally.max_child_rss.max(c.peak_rss);
            if let Some(d) = c.defect(bound) {
                return Some(format!("admin-convert {}: {d}", args.join(" ")));
            }
            if c.code == Some(0)
                && args.contains(&"--json")
                && serde_json::from_slice::<serde_json::Value>(&c.stdout).is_err()
            {
                return Some("inspect --json printed something that is not JSON".into());
            }
            if std::fs::read(&p).ok().as_deref() != Some(data) {
                return Some("inspect changed its input".into());
            }
            None
        }
    }
}

/// The worker: mutants until the deadline, then a summary file. Started by
/// [`smoke`] in its own capped process; ignored when the suite runs.
#[test]
#[ignore = "started by fuzz::smoke in a capped child process"]
fn worker() {
    let Ok(out) = std::env::var("ADMIN_CONVERT_FUZZ_OUT") else {
        return;
    };
    let out = PathBuf::from(out);
    let secs: f64 = env_num("ADMIN_CONVERT_FUZZ_SECONDS", 60.0);
    let seed: u64 = env_num("ADMIN_CONVERT_FUZZ_SEED", 1.0) as u64;
    // Panics are counted, not printed (the worker catches them).
    std::panic::set_hook(Box::new(|_| {}));
    let seeds = seeds();
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tally = Tally::default();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        // Small seeds more often: pick two, keep the smaller.
        let (a, b) = (rng.pick(&seeds), rng.pick(&seeds));
        let s = if a.bytes.len() <= b.bytes.len() { a } else { b };
        let (kind, data) = mutate(s, &mut rng);
        // Left behind if this mutant takes the worker down.
        std::fs::write(out.join("current.bin"), &data).expect("write current");
        std::fs::write(out.join("current.txt"), &s.name).expect("write current");
        let bound = RSS_BOUND_BASE + s.bytes.len() as u64;
        let mut defect = run_one(kind, &data, dir.path(), bound, &mut tally);
        if defect.is_none() && self_peak_rss() > bound {
            defect = Some(format!("worker peak RSS {} MiB", self_peak_rss() >> 20));
        }
        tally.mutants += 1;
        *tally
            .per_kind
            .entry(
                format!("{:?}", s.kind)
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .to_string(),
            )
            .or_default() += 1;
        if let Some(d) = defect {
            tally.crashes += 1;
            save_crash(&out, seed * 1_000_000 + tally.mutants, &d, &s.name, &data);
            if d.starts_with("worker peak RSS") {
                break;
            }
        }
    }
    let _ = std::fs::remove_file(out.join("current.bin"));
    let summary = serde_json::json!({
        "mutants": tally.mutants,
        "cli_runs": tally.cli_runs,
        "crashes": tally.crashes,
        "max_child_rss": tally.max_child_rss,
        "seconds": start.elapsed().as_secs_f64(),
        "per_kind": tally.per_kind,
    });
    std::fs::write(
        out.join(format!("summary-{seed}.json")),
        summary.to_string(),
    )
    .expect("summary");
}

fn env_num(key: &str, default: f64) -> f64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fuzz run: workers in capped child processes until the time budget is
/// spent (CI: 60 s; `scripts/fuzz.sh --minutes N`). Fails on any defect.
#[test]
fn smoke() {
    let secs = env_num("ADMIN_CONVERT_FUZZ_SECONDS", 60.0);
    let out = std::env::var("ADMIN_CONVERT_FUZZ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz"));
    std::fs::create_dir_all(&out).expect("fuzz output folder");
    let exe = std::env::current_exe().expect("test binary");
    let start = Instant::now();
    let (mut mutants, mut cli, mut crashes, mut max_rss) = (0u64, 0u64, 0u64, 0u64);
    let mut seed = env_num("ADMIN_CONVERT_FUZZ_SEED", 1.0) as u64;
    let mut per_kind = std::collections::BTreeMap::<String, u64>::new();
    while start.elapsed().as_secs_f64() < secs - 1.0 {
        let left = secs - start.elapsed().as_secs_f64();
        let mut cmd = Command::new(&exe);
        cmd.args([
            "fuzz::worker",
            "--exact",
            "--ignored",
            "--test-threads",
            "1",
        ])
        .env("ADMIN_CONVERT_FUZZ_OUT", &out)
        .env("ADMIN_CONVERT_FUZZ_SECONDS", left.to_string())
        .env("ADMIN_CONVERT_FUZZ_SEED", seed.to_string());
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let cap = (4u64 << 30) as libc::rlim_t;
                let lim = libc::rlimit {
                    rlim_cur: cap,
                    rlim_max: cap,
                };
                libc::setrlimit(libc::RLIMIT_AS, &lim);
                Ok(())
            });
        }
        let o = cmd.output().expect("fuzz worker starts");
        let summary = out.join(format!("summary-{seed}.json"));
        match std::fs::read(&summary) {
            Ok(s) if o.status.success() => {
                let v: serde_json::Value = serde_json::from_slice(&s).expect("summary json");
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                mutants += n("mutants");
                cli += n("cli_runs");
                crashes += n("crashes");
                max_rss = max_rss.max(n("max_child_rss"));
                for (k, c) in v["per_kind"].as_object().into_iter().flatten() {
                    *per_kind.entry(k.clone()).or_default() += c.as_u64().unwrap_or(0);
                }
                let _ = std::fs::remove_file(&summary);
            }
            _ => {
                // The worker died (abort, OOM under the cap, stack overflow): the
                // mutant it was on is the crash.
                crashes += 1;
                let data = std::fs::read(out.join("current.bin")).unwrap_or_default();
                let name = std::fs::read_to_string(out.join("current.txt")).unwrap_or_default();
                let what = format!(
                    "worker died: {:?}; {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                save_crash(&out, seed * 1_000_000, &what, &name, &data);
            }
        }
        seed += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz: {mutants} mutants in {elapsed:.0} s ({:.1}/s), {cli} inspect runs, largest child peak RSS {} MiB, {crashes} crashes, by seed kind {per_kind:?}; output in {}",
        mutants as f64 / elapsed,
        max_rss >> 20,
        out.display()
    );
    assert!(mutants > 0, "the fuzz workers ran no mutant");
    assert_eq!(crashes, 0, "fuzz defects saved under {}", out.display());
}
