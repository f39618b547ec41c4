//! Crafted hostile inputs, one class each (issue 10), run through every
//! command that reads them, as a capped child measured with `wait4`
//! ([`crate::limits`]): exit 0, 1 or 2 only, no signal, no panic, errors as
//! one `error:` line naming the file, peak RSS under 1 GiB plus the valid
//! data, and every input unchanged byte for byte.
//!
//! Classes: views that repeat their storage (stride 0, overlapping strides,
//! overflowing shapes); pickles whose opcodes copy or share (tuple(list),
//! DUP / GET runs, millions of empty containers); zip entries whose
//! declared or real inflated size is huge; long and junk file names.

use crate::common::fixture;
use crate::limits::{run_capped, Capped, AS_CAP, RSS_BOUND_BASE};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Building torch files by hand

/// Pickle opcodes for an integer (LONG1, any i64).
fn int(v: i64) -> Vec<u8> {
    let mut b = vec![0x8a, 8];
    b.extend(v.to_le_bytes());
    b
}

fn text(s: &str) -> Vec<u8> {
    let mut b = vec![b'X'];
    b.extend((s.len() as u32).to_le_bytes());
    b.extend(s.as_bytes());
    b
}

fn tuple(items: &[i64]) -> Vec<u8> {
    let mut b = vec![b'('];
    for &i in items {
        b.extend(int(i));
    }
    b.push(b't');
    b
}

/// `{'model': {name: tensor}}` where the tensor is `_rebuild_tensor_v2` of
/// float storage "0" of `numel` elements with the given view; `extra` runs
/// right after the protocol header (its stack effect must be nil).
fn state_dict_pickle(
    numel: i64,
    offset: i64,
    shape: &[i64],
    stride: &[i64],
    extra: &[u8],
) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend(extra);
    p.push(b'}');
    p.extend(text("model"));
    p.push(b'}');
    p.extend(text("encoder.embed_tokens.weight"));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    // persistent id ('storage', FloatStorage, '0', 'cpu', numel)
    p.push(b'(');
    p.extend(text("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(text("0"));
    p.extend(text("cpu"));
    p.extend(int(numel));
    p.extend(b"tQ");
    p.extend(int(offset));
    p.extend(tuple(shape));
    p.extend(tuple(stride));
    p.push(0x89);
    p.extend(b"ccollections\nOrderedDict\n)R");
    p.extend(b"tR");
    p.extend(b"ss.");
    p
}

/// A torch zip archive: `archive/data.pkl`, `archive/byteorder`, storages.
fn torch_zip(pkl: &[u8], storages: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    w.start_file("archive/data.pkl", opts).expect("zip");
    w.write_all(pkl).expect("zip");
    w.start_file("archive/byteorder", opts).expect("zip");
    w.write_all(b"little").expect("zip");
    for (key, data) in storages {
        w.start_file(format!("archive/data/{key}"), opts)
            .expect("zip");
        w.write_all(data).expect("zip");
    }
    w.finish().expect("zip").into_inner()
}

// ---------------------------------------------------------------------------------------------
// Running every reading command on a file

/// Every command that reads a checkpoint, on `input` (outputs into `out`).
fn commands(input: &str, out: &Path) -> Vec<Vec<String>> {
    let o = |name: &str| out.join(name).to_str().expect("utf-8").to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&["inspect", input]),
        s(&["inspect", input, "--json"]),
        s(&["cast", input, "--dtype", "fp16", "-o", &o("cast.pt")]),
        s(&["average", input, input, "-o", &o("avg.pt")]),
        s(&["fold", input, "-o", &o("fold.safetensors")]),
        s(&["export", input, "--onnx", "-o", &o("export")]),
        s(&[
            "score",
            input,
            "--data",
            fixture("data-bin").to_str().expect("utf-8"),
        ]),
    ]
}

/// Run every command on `input`; each must pass [`Capped::defect`] with
/// the bound 1 GiB + `valid_bytes`, fail with exit 2 when `must_fail`, name
/// the file when it fails, and leave the input unchanged. Returns the
/// largest peak RSS seen.
fn all_commands(input: &Path, valid_bytes: u64, must_fail: Option<&str>) -> u64 {
    let before = std::fs::read(input).expect("input");
    let out = tempfile::tempdir().expect("tempdir");
    let path = input.to_str().expect("utf-8");
    let name = input.file_name().and_then(|n| n.to_str()).expect("name");
    let bound = RSS_BOUND_BASE + valid_bytes;
    let mut peak = 0;
    for args in commands(path, out.path()) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let c: Capped = run_capped(&args, AS_CAP, Duration::from_secs(120));
        peak = peak.max(c.peak_rss);
        if let Some(d) = c.defect(bound) {
            panic!("{args:?}: {d}");
        }
        if let Some(needle) = must_fail {
            assert_eq!(c.code, Some(2), "{args:?} should fail: {}", c.stderr);
            assert!(c.stderr.contains(needle), "{args:?}: {}", c.stderr);
        }
        if c.code == Some(2) {
            assert!(
                c.stderr.contains(name),
                "{args:?} does not name the file: {}",
                c.stderr
            );
        }
        assert_eq!(
            std::fs::read(input).expect("input"),
            before,
            "{args:?} changed its input"
        );
    }
    eprintln!(
        "{name}: largest peak RSS {} MiB over {} commands",
        peak >> 20,
        7
    );
    peak
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

// ---------------------------------------------------------------------------------------------
// Views that repeat their storage

#[test]
fn views_repeating_their_storage_are_refused_without_materialising() {
    let d = tempfile::tempdir().expect("tempdir");
    let one = 1.5f32.to_le_bytes();
    let small: Vec<u8> = (0..1000u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // expand() of one element to 1e9 (4 GB materialised)
        (
            "expand1e9.pt",
            torch_zip(
                &state_dict_pickle(1, 0, &[1_000_000_000], &[0], b""),
                &[("0", &one)],
                false,
            ),
            "repeats",
        ),
        // a 2-D stride-0 broadcast of 1000 elements to 1e6 × 1000
        (
            "broadcast.pt",
            torch_zip(
                &state_dict_pickle(1000, 0, &[1_000_000, 1000], &[0, 1], b""),
                &[("0", &small)],
                false,
            ),
            "repeats",
        ),
        // overlapping strides (1, 1): 1e5 × 1e5 elements over 2e5 - 1
        (
            "overlap.pt",
            torch_zip(
                &state_dict_pickle(200_000, 0, &[100_000, 100_000], &[1, 1], b""),
                &[("0", &vec![0u8; 800_000])],
                false,
            ),
            "repeats",
        ),
        // a shape whose element count overflows
        (
            "overflow.pt",
            torch_zip(
                &state_dict_pickle(1, 0, &[1 << 40, 1 << 40], &[0, 0], b""),
                &[("0", &one)],
                false,
            ),
            "overflows",
        ),
        // a negative stride / offset never becomes a huge usize
        (
            "negative.pt",
            torch_zip(
                &state_dict_pickle(1, -1, &[4], &[-1], b""),
                &[("0", &one)],
                false,
            ),
            "non-negative",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = write(d.path(), name, &bytes);
        all_commands(&p, bytes.len() as u64, Some(needle));
    }
}

/// A small repeated view (a broadcast bias) is read as the copy it stands for.
#[test]
fn small_repeated_view_reads_as_its_copy() {
    let d = tempfile::tempdir().expect("tempdir");
    let one = 1.5f32.to_le_bytes();
    let p = write(
        d.path(),
        "small_expand.pt",
        &torch_zip(
            &state_dict_pickle(1, 0, &[4, 3], &[0, 0], b""),
            &[("0", &one)],
            false,
        ),
    );
    let ckpt = admin_convert::read::Checkpoint::open(&p).expect("opens");
    let t = ckpt.tensor("encoder.embed_tokens.weight").expect("reads");
    assert_eq!(t.shape, vec![4, 3]);
    assert_eq!(t.to_f32(), vec![1.5; 12]);
}

// ---------------------------------------------------------------------------------------------
// Pickles that copy or share

#[test]
fn pickles_that_copy_are_charged_to_the_budget() {
    let d = tempfile::tempdir().expect("tempdir");
    let one = 1.5f32.to_le_bytes();
    // L = [None] * 100_000, memo 0; then 30_000 × tuple(L), each popped.
    let mut copy = b"]q\x00(".to_vec();
    copy.extend(std::iter::repeat_n(b'N', 100_000));
    copy.extend(b"e0");
    for _ in 0..30_000 {
        copy.extend(b"cbuiltins\ntuple\nh\x00\x85R0");
    }
    // t = (t, t) by DUP + TUPLE2, 60 times: 2^60 leaves when unfolded.
    let mut share = b"N".to_vec();
    for _ in 0..60 {
        share.extend(b"2\x86");
    }
    share.push(b'0');
    // 20 MB of EMPTY_LIST then POP pairs: millions of containers.
    let mut lists = Vec::new();
    for _ in 0..10_000_000 {
        lists.extend(b"]0");
    }
    // 20 MB of GETs of one memoised list: references on the stack.
    let mut gets = b"]q\x00".to_vec();
    for _ in 0..10_000_000 {
        gets.extend(b"h\x00");
    }
    gets.push(b'(');
    gets.extend(b"1");
    for (name, extra) in [
        ("copy.pt", copy),
        ("share.pt", share),
        ("lists.pt", lists),
        ("gets.pt", gets),
    ] {
        let pkl = state_dict_pickle(1, 0, &[1], &[1], &extra);
        let bytes = torch_zip(&pkl, &[("0", &one)], false);
        let p = write(d.path(), name, &bytes);
        let peak = all_commands(&p, bytes.len() as u64, None);
        assert!(peak < RSS_BOUND_BASE, "{name}: {peak}");
    }
}

// ---------------------------------------------------------------------------------------------
// Zip entries that inflate

/// Patch the uncompressed size of every central-directory and local header
/// of `entry` to `size`.
fn patch_declared_size(zip: &mut [u8], entry: &str, size: u32) {
    let name = entry.as_bytes();
    for i in 0..zip.len().saturating_sub(46) {
        if zip[i..].starts_with(b"PK\x01\x02") && zip[i + 46..].starts_with(name) {
            zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
        }
        if zip[i..].starts_with(b"PK\x03\x04") && zip[i + 30..].starts_with(name) {
            zip[i + 22..i + 26].copy_from_slice(&size.to_le_bytes());
        }
    }
}

#[test]
fn zip_entries_inflate_within_their_declared_size_and_a_budget() {
    let d = tempfile::tempdir().expect("tempdir");
    let one = 1.5f32.to_le_bytes();
    let pkl = state_dict_pickle(1, 0, &[1], &[1], b"");
    // data.pkl followed by 64 MB of zeros (ignored after STOP): a 64 KB file.
    let mut padded = pkl.clone();
    padded.resize(64 << 20, 0);
    let bomb = torch_zip(&padded, &[("0", &one)], true);
    assert!(bomb.len() < 256 << 10, "{}", bomb.len());
    all_commands(
        &write(d.path(), "pkl64m.pt", &bomb),
        bomb.len() as u64,
        None,
    );
    // A storage declaring 3.75 GB once inflated (really 1 KB).
    let mut declared = torch_zip(&pkl, &[("0", &[0u8; 1024])], true);
    patch_declared_size(&mut declared, "archive/data/0", 0xf000_0000);
    all_commands(
        &write(d.path(), "declared.pt", &declared),
        declared.len() as u64,
        Some("declares"),
    );
    // A storage that inflates past what it declares: only the declared bytes are read.
    let mut longer = torch_zip(&pkl, &[("0", &vec![0u8; 1 << 20])], true);
    patch_declared_size(&mut longer, "archive/data/0", 4);
    all_commands(
        &write(d.path(), "longer.pt", &longer),
        longer.len() as u64,
        None,
    );
    // A zip cut by one byte: a plain message naming the file.
    let real = std::fs::read(fixture("postln-fairseq012/checkpoint_best.pt")).expect("fixture");
    let cut = write(d.path(), "cut1.pt", &real[..real.len() - 1]);
    let c = run_capped(
        &["inspect", cut.to_str().expect("utf-8")],
        AS_CAP,
        Duration::from_secs(60),
    );
    assert_eq!(c.code, Some(2));
    assert!(
        c.stderr.contains("cut1.pt") && c.stderr.contains("cut short"),
        "{}",
        c.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Messages

#[test]
fn long_and_junk_names_are_shortened_in_one_line() {
    let d = tempfile::tempdir().expect("tempdir");
    let long = "n".repeat(250);
    let p = write(d.path(), &format!("{long}.pt"), b"not a checkpoint at all");
    let c = run_capped(
        &["inspect", p.to_str().expect("utf-8")],
        AS_CAP,
        Duration::from_secs(30),
    );
    assert_eq!(c.code, Some(2));
    assert_eq!(c.stderr.trim_end().lines().count(), 1, "{}", c.stderr);
    assert!(c.stderr.contains('…'), "{}", c.stderr);
    assert!(c.stderr.len() < 600, "{}", c.stderr);
    // Control characters in a name are escaped, not printed.
    let p = write(d.path(), "bad\x1b[31mname\n.pt", b"junk");
    let c = run_capped(
        &["inspect", p.to_str().expect("utf-8")],
        AS_CAP,
        Duration::from_secs(30),
    );
    assert_eq!(c.code, Some(2));
    assert_eq!(c.stderr.trim_end().lines().count(), 1, "{}", c.stderr);
    assert!(!c.stderr.contains('\x1b'), "{:?}", c.stderr);
    assert!(
        c.stderr.contains("bad\\u{1b}[31mname\\n.pt"),
        "{:?}",
        c.stderr
    );
}

/// An i/o error wrapped with `#[from]` is printed once, not twice.
#[test]
fn os_errors_are_not_repeated() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = run_capped(
        &[
            "inspect",
            d.path().join("missing.pt").to_str().expect("utf-8"),
        ],
        AS_CAP,
        Duration::from_secs(30),
    );
    assert_eq!(c.code, Some(2));
    let line = c.stderr.trim_end();
    assert!(line.ends_with("missing.pt: no such file"), "{line}");
    // A directory given where a dictionary folder's file is expected.
    let o = crate::common::run(&[
        "score",
        fixture("postln-fairseq012/checkpoint_best.pt")
            .to_str()
            .expect("utf-8"),
        "--data",
        d.path().to_str().expect("utf-8"),
    ]);
    let err = crate::common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let os = err.matches("(os error").count();
    assert!(os <= 1, "{err}");
}

/// Errors found while decoding or scoring name the model and the input
/// files (before: "step 1024 is past the model's 1024 target positions",
/// "a source has 1101 tokens, the model takes at most 1024", bare).
#[test]
fn decoding_errors_name_the_files() {
    let d = tempfile::tempdir().expect("tempdir");
    let word = |dict: &str| {
        let text = std::fs::read_to_string(fixture(dict)).expect("dict");
        text.split_whitespace().next().expect("a word").to_string()
    };
    let long = |w: String| vec![w; 1100].join(" ") + "\n";
    let src = write(
        d.path(),
        "long_src.txt",
        long(word("data-bin/dict.src.txt")).as_bytes(),
    );
    let reference = write(
        d.path(),
        "long_ref.txt",
        long(word("data-bin/dict.tgt.txt")).as_bytes(),
    );
    let short = write(d.path(), "short_src.txt", b"the small king\n");
    let model = fixture("postln-fairseq012/checkpoint_best.pt");
    let (m, dicts) = (
        model.to_str().expect("utf-8"),
        fixture("data-bin").to_str().expect("utf-8").to_string(),
    );
    let s = |p: &PathBuf| p.to_str().expect("utf-8").to_string();
    let o = crate::common::run(&[
        "score",
        m,
        "--src",
        &s(&short),
        "--ref",
        &s(&reference),
        "--dict-dir",
        &dicts,
    ]);
    crate::common::assert_one_line_error(&o, "long_ref.txt");
    assert!(crate::common::stderr(&o).contains("checkpoint_best.pt"));
    let o = crate::common::run(&["eval", m, "--src", &s(&src), "--dict-dir", &dicts, "-q"]);
    crate::common::assert_one_line_error(&o, "long_src.txt");
}
