//! Outputs never hurt inputs or the system (issue 10, item 2): `-o` onto an
//! input (same path, symlink, hard link) or onto a non-regular file (FIFO,
//! `/dev/null`) is refused by every command; the extension decides the
//! format or is refused; export into a non-empty directory needs `--force`
//! and leaves no temporary directory behind; outputs get 0666 under the
//! umask. Every refusal leaves the inputs byte for byte as they were.

use crate::common::{assert_one_line_error, fixture};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_admin-convert"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the admin-convert binary runs")
}

/// A temporary folder holding `ckpt.pt` (the fairseq 0.8 fixture) and `data/`.
fn workdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        fixture("admin-fairseq08/checkpoint_best.pt"),
        t.path().join("ckpt.pt"),
    )
    .expect("copy");
    let data = t.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    for e in std::fs::read_dir(fixture("data-bin-fairseq08")).expect("list") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, data.join(p.file_name().unwrap())).expect("copy");
    }
    t
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = vec![];
    for e in std::fs::read_dir(dir).expect("list") {
        let p = e.expect("entry").path();
        let m = std::fs::symlink_metadata(&p).expect("stat");
        if m.is_dir() {
            v.extend(snapshot(&p));
        } else if m.is_file() {
            v.push((p.clone(), std::fs::read(&p).expect("read")));
        }
    }
    v.sort();
    v
}

/// Commands that take `-o FILE`, with `{}` for the output.
const FILE_COMMANDS: [&[&str]; 5] = [
    &["fold", "ckpt.pt", "-o", "{}"],
    &["cast", "ckpt.pt", "--dtype", "fp16", "-o", "{}"],
    &["average", "ckpt.pt", "ckpt.pt", "-o", "{}"],
    &["eval", "ckpt.pt", "data", "--beam", "1", "-o", "{}"],
    &["score", "ckpt.pt", "data", "-o", "{}"],
];

fn with_output<'a>(cmd: &[&'a str], out: &'a str) -> Vec<&'a str> {
    cmd.iter()
        .map(|a| if *a == "{}" { out } else { a })
        .collect()
}

#[test]
fn output_onto_an_input_is_refused_through_any_link() {
    let t = workdir();
    std::fs::hard_link(t.path().join("ckpt.pt"), t.path().join("hard.pt")).expect("link");
    std::os::unix::fs::symlink("ckpt.pt", t.path().join("soft.pt")).expect("symlink");
    std::fs::hard_link(t.path().join("data/dict.src.txt"), t.path().join("dict.pt")).expect("link");
    let before = snapshot(t.path());
    for cmd in FILE_COMMANDS {
        for out in ["ckpt.pt", "./ckpt.pt", "hard.pt", "soft.pt"] {
            let o = run_in(t.path(), &with_output(cmd, out));
            assert_one_line_error(&o, "input");
        }
    }
    // A file of the data directory is an input of eval and score too.
    for cmd in &FILE_COMMANDS[3..] {
        let o = run_in(t.path(), &with_output(cmd, "dict.pt"));
        assert_one_line_error(&o, "input");
    }
    assert_eq!(snapshot(t.path()), before, "inputs unchanged byte for byte");
}

#[test]
fn output_onto_a_fifo_or_device_is_refused() {
    let t = workdir();
    let fifo = t.path().join("pipe.safetensors");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let before = snapshot(t.path());
    for cmd in FILE_COMMANDS {
        for out in [fifo.to_str().unwrap(), "/dev/null"] {
            let o = run_in(t.path(), &with_output(cmd, out));
            assert_one_line_error(&o, "not a regular file");
        }
    }
    let m = std::fs::symlink_metadata(&fifo).expect("stat");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
    let m = std::fs::metadata("/dev/null").expect("stat");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &m.file_type()
    ));
    assert_eq!(snapshot(t.path()), before);
}

#[test]
fn the_extension_decides_the_format_or_is_refused() {
    let t = workdir();
    // .pt is a fairseq (torch zip) checkpoint, never safetensors bytes.
    let o = run_in(t.path(), &["fold", "ckpt.pt", "-o", "out.pt"]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    let bytes = std::fs::read(t.path().join("out.pt")).expect("written");
    assert!(bytes.starts_with(b"PK\x03\x04"), "a torch zip");
    let o = run_in(t.path(), &["fold", "ckpt.pt", "-o", "out.safetensors"]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    let bytes = std::fs::read(t.path().join("out.safetensors")).expect("written");
    assert_eq!(bytes[8], b'{', "a safetensors header");
    for cmd in ["fold", "cast", "average"] {
        let args: Vec<&str> = match cmd {
            "fold" => vec!["fold", "ckpt.pt", "-o", "out.bin"],
            "cast" => vec!["cast", "ckpt.pt", "--dtype", "fp16", "-o", "out.bin"],
            _ => vec!["average", "ckpt.pt", "ckpt.pt", "-o", "out"],
        };
        assert_one_line_error(&run_in(t.path(), &args), "unknown output format");
    }
    assert!(!t.path().join("out.bin").exists() && !t.path().join("out").exists());
}

/// 0666 under this process's umask (which the child inherits).
fn expected_mode() -> u32 {
    admin_convert::write::file_mode()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// No `.NAME.tmp-*` / `.NAME.old-*` or `.admin-convert-*` left in `dir`.
fn no_leftovers(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("list") {
        let n = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(
            !n.contains(".tmp-") && !n.contains(".old-") && !n.starts_with(".admin-convert-"),
            "left behind: {n}"
        );
    }
}

#[test]
fn export_refuses_a_non_empty_directory_unless_forced() {
    let t = workdir();
    let out = t.path().join("model.onnx");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("keep.txt"), b"mine").expect("write");
    let before = snapshot(t.path());
    let o = run_in(
        t.path(),
        &["export", "ckpt.pt", "--onnx", "-o", "model.onnx"],
    );
    assert_one_line_error(&o, "not empty");
    assert_eq!(snapshot(t.path()), before);
    no_leftovers(t.path());

    // The default output exists: refused the same way, naming it.
    std::fs::create_dir(t.path().join("ckpt.onnx")).expect("mkdir");
    let o = run_in(t.path(), &["export", "ckpt.pt", "--onnx"]);
    assert_one_line_error(&o, "ckpt.onnx");

    let o = run_in(
        t.path(),
        &["export", "ckpt.pt", "--onnx", "-o", "model.onnx", "--force"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    assert!(!out.join("keep.txt").exists(), "replaced as a whole");
    assert!(out.join("encoder.onnx").is_file());
    no_leftovers(t.path());
    let want = expected_mode();
    for f in std::fs::read_dir(&out).expect("list") {
        let p = f.expect("entry").path();
        assert_eq!(mode(&p), want, "{}", p.display());
    }
}

#[test]
fn export_never_replaces_a_directory_holding_its_input() {
    let t = workdir();
    let o = run_in(
        t.path(),
        &["export", "ckpt.pt", "--onnx", "-o", ".", "--force"],
    );
    assert_one_line_error(&o, "holds the input");
    assert!(t.path().join("ckpt.pt").is_file());
}

#[test]
fn file_outputs_get_the_usual_mode() {
    let t = workdir();
    let o = run_in(t.path(), &["fold", "ckpt.pt"]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    assert_eq!(
        mode(&t.path().join("ckpt.folded.safetensors")),
        expected_mode()
    );
    let o = run_in(t.path(), &["score", "ckpt.pt", "data", "-o", "scores.txt"]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    assert_eq!(mode(&t.path().join("scores.txt")), expected_mode());
    no_leftovers(t.path());
}

/// A folder with the joined dictionary under two language names
/// (`dict.en.txt`, `dict.de.txt`) and nothing else to tell the pair.
fn two_language_dir(t: &Path) -> PathBuf {
    let d = t.join("ende");
    std::fs::create_dir(&d).expect("mkdir");
    for lang in ["en", "de"] {
        std::fs::copy(
            fixture("data-bin-fairseq08/dict.src.txt"),
            d.join(format!("dict.{lang}.txt")),
        )
        .expect("copy");
    }
    d
}

#[test]
fn two_language_dictionaries_need_source_lang_in_every_command() {
    let t = workdir();
    two_language_dir(t.path());
    let cmds: [&[&str]; 4] = [
        &[
            "fold",
            "ckpt.pt",
            "--dict-dir",
            "ende",
            "-o",
            "f.safetensors",
        ],
        &[
            "export",
            "ckpt.pt",
            "--onnx",
            "--dict-dir",
            "ende",
            "-o",
            "x",
        ],
        &["eval", "ckpt.pt", "data", "--dict-dir", "ende"],
        &["score", "ckpt.pt", "data", "--dict-dir", "ende"],
    ];
    for cmd in cmds {
        assert_one_line_error(&run_in(t.path(), cmd), "--source-lang");
    }
    let o = run_in(
        t.path(),
        &[
            "fold",
            "ckpt.pt",
            "--dict-dir",
            "ende",
            "-s",
            "de",
            "-t",
            "en",
            "-o",
            "f.safetensors",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
}

#[test]
fn a_dictionary_that_does_not_fit_the_embeddings_is_refused_by_every_command() {
    // The DeepNet fixture's separate dictionaries (88 / 64 rows) against a
    // model with a joined 144-row vocabulary.
    let t = workdir();
    let deep = fixture("data-bin-deepnet-fairseq08");
    let d = deep.to_str().unwrap();
    let cmds: [&[&str]; 4] = [
        &["fold", "ckpt.pt", "--dict-dir", d, "-o", "f.safetensors"],
        &["export", "ckpt.pt", "--onnx", "--dict-dir", d, "-o", "x"],
        &["eval", "ckpt.pt", d, "--beam", "1"],
        &["score", "ckpt.pt", d],
    ];
    for cmd in cmds {
        assert_one_line_error(&run_in(t.path(), cmd), "wrong dictionary");
    }
    assert!(!t.path().join("f.safetensors").exists() && !t.path().join("x").exists());
}
