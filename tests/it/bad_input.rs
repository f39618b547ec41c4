//! Corrupt, truncated and hostile inputs: each gets one line on stderr that
//! names the file and the problem, exit code 2, and never a panic. Inputs
//! are built here from real fixtures, cut or edited.

use crate::common::*;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test input");
    p
}

fn inspect_err(p: &Path, needle: &str) {
    let o = run(&["inspect", p.to_str().expect("utf-8")]);
    assert_one_line_error(&o, needle);
    let name = p.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(stderr(&o).contains(name), "file not named: {}", stderr(&o));
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).expect("fixture")
}

#[test]
fn missing_empty_and_directory() {
    let d = tempfile::tempdir().expect("tempdir");
    inspect_err(&d.path().join("nope.pt"), "no such file");
    inspect_err(&write(d.path(), "empty.pt", b""), "empty file");
    let sub = d.path().join("adir");
    std::fs::create_dir(&sub).expect("mkdir");
    inspect_err(&sub, "directory");
    inspect_err(
        &write(d.path(), "text.pt", b"hello, I am not a checkpoint\n"),
        "not a checkpoint",
    );
}

#[test]
fn truncated_torch_files() {
    let d = tempfile::tempdir().expect("tempdir");
    let legacy = read("admin-fairseq08/checkpoint_best.pt");
    for cut in [1, 100, legacy.len() / 2, legacy.len() - 10] {
        let p = write(d.path(), &format!("legacy_cut{cut}.pt"), &legacy[..cut]);
        let o = run(&["inspect", p.to_str().expect("utf-8")]);
        assert_one_line_error(&o, &format!("legacy_cut{cut}.pt"));
    }
    let zip = read("postln-fairseq012/checkpoint_best.pt");
    for cut in [10, zip.len() / 2, zip.len() - 30] {
        let p = write(d.path(), &format!("zip_cut{cut}.pt"), &zip[..cut]);
        let o = run(&["inspect", p.to_str().expect("utf-8")]);
        assert_one_line_error(&o, &format!("zip_cut{cut}.pt"));
    }
}

/// A protocol-2 pickle calling os.system: refused before anything runs.
#[test]
fn pickle_with_forbidden_global() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut evil = vec![0x80, 2];
    evil.extend_from_slice(b"cos\nsystem\nX\x04\x00\x00\x00echo\x85R.");
    let p = write(d.path(), "evil.pt", &evil);
    inspect_err(&p, "os.system");
}

#[test]
fn pickle_with_unknown_opcode() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = write(d.path(), "opcode.pt", &[0x80, 2, 0xff, b'.']);
    inspect_err(&p, "opcode");
}

/// Build a safetensors header by hand.
fn safetensors(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data_len));
    v
}

#[test]
fn safetensors_lies() {
    let d = tempfile::tempdir().expect("tempdir");
    // offsets that overlap
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    inspect_err(
        &write(d.path(), "overlap.safetensors", &safetensors(h, 12)),
        "offsets",
    );
    // declared data far beyond the file
    let h = r#"{"a":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}"#;
    inspect_err(
        &write(d.path(), "huge.safetensors", &safetensors(h, 16)),
        "more (or fewer) data bytes",
    );
    // header length beyond the file
    let mut v = (1u64 << 20).to_le_bytes().to_vec();
    v.extend_from_slice(b"{\"a\":1}");
    inspect_err(&write(d.path(), "header.safetensors", &v), "header length");
    // byte range not matching dtype × shape
    let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    inspect_err(
        &write(d.path(), "size.safetensors", &safetensors(h, 8)),
        "byte range",
    );
    // not JSON
    inspect_err(
        &write(d.path(), "json.safetensors", &safetensors("{not json", 0)),
        "JSON",
    );
    // a real file cut short
    let real = read("independent/postln-fairseq012-best.safetensors");
    inspect_err(
        &write(d.path(), "cut.safetensors", &real[..real.len() - 100]),
        "data bytes",
    );
}

#[test]
fn wrong_layout_names_the_tensor() {
    // The reader's edge-case file is a valid torch file but no Transformer.
    let p = fixture("edge/state_dict.pt");
    let o = run(&[
        "inspect",
        p.to_str().expect("utf-8"),
        "--heads",
        "2",
        "--activation",
        "relu",
    ]);
    assert_one_line_error(&o, "found 2 encoder and 0 decoder layers");
}

#[test]
fn inputs_are_never_modified() {
    let p = fixture("admin-fairseq08/checkpoint_best.pt");
    let before = std::fs::read(&p).expect("read");
    let o = run(&["inspect", p.to_str().expect("utf-8"), "--json"]);
    assert!(o.status.success());
    assert_eq!(before, std::fs::read(&p).expect("read"));
}
