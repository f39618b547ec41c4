//! README's Quick start, run as typed: `fold checkpoint_best.pt`, `export
//! checkpoint_best.pt --onnx`, `eval checkpoint_best.pt --beam 4`, in a
//! temporary copy of a fixture folder, with the data directory placed where
//! the checkpoint records it (issue 14). Defaults land beside the input;
//! the second `fold` refuses to overwrite.

use crate::common::fixture;
use admin_convert::read::Checkpoint;
use admin_convert::write::torch::{self as torch_write, Carried, Py};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_admin-convert"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the admin-convert binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("list") {
        let p = e.expect("entry").path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}

/// The three Quick start lines in `work` (holding `checkpoint_best.pt`),
/// then the same decode checked hypothesis by hypothesis against fairseq.
fn quick_start(work: &Path, expect: &Path) {
    let fold = run_in(work, &["fold", "checkpoint_best.pt"]);
    assert_eq!(fold.status.code(), Some(0), "{}", text(&fold));
    assert!(
        text(&fold).contains("wrote checkpoint_best.folded.safetensors"),
        "{}",
        text(&fold)
    );
    assert!(work.join("checkpoint_best.folded.safetensors").is_file());

    let again = run_in(work, &["fold", "checkpoint_best.pt"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for needle in ["checkpoint_best.folded.safetensors", "-o", "--force"] {
        assert!(err.contains(needle), "{needle} in {err}");
    }

    let export = run_in(work, &["export", "checkpoint_best.pt", "--onnx"]);
    assert_eq!(export.status.code(), Some(0), "{}", text(&export));
    assert!(text(&export).contains("wrote checkpoint_best.onnx"));
    for f in [
        "encoder.onnx",
        "decoder.onnx",
        "dict.src.txt",
        "dict.tgt.txt",
    ] {
        assert!(work.join("checkpoint_best.onnx").join(f).is_file(), "{f}");
    }

    let eval = run_in(work, &["eval", "checkpoint_best.pt", "--beam", "4"]);
    let out = text(&eval);
    assert_eq!(eval.status.code(), Some(0), "{out}");
    assert!(out.contains("Translated 200 sentences"), "{out}");
    assert!(out.contains("Generate test with beam=4: BLEU4 = "), "{out}");

    // The test set found is fairseq's: every hypothesis identical.
    let e = expect.to_str().expect("utf-8");
    for model in ["checkpoint_best.pt", "checkpoint_best.folded.safetensors"] {
        let args = ["eval", model, "--beam", "4", "--remove-bpe", "-q"];
        let o = run_in(work, &[&args[..], &["--expect-fairseq", e]].concat());
        assert_eq!(o.status.code(), Some(0), "{model}: {}", text(&o));
        assert!(
            text(&o).contains("200/200 hypotheses identical"),
            "{}",
            text(&o)
        );
    }
    // translate finds the dictionaries the same way (none embedded here).
    let src = fixture("corpus/bpe/test.src");
    let o = run_in(
        work,
        &[
            "translate",
            "checkpoint_best.pt",
            src.to_str().unwrap(),
            "-q",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 200);
    // The export directory records the data directory too.
    let o = run_in(work, &["eval", "checkpoint_best.onnx", "--beam", "4", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("Translated 200 sentences"),
        "{}",
        text(&o)
    );
}

#[test]
fn fairseq08_checkpoint_as_typed() {
    // The checkpoint records `args.data = ../data-bin-clinic`.
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("admin-fairseq08");
    copy_dir(&fixture("admin-fairseq08"), &work);
    copy_dir(
        &fixture("data-bin-fairseq08"),
        &tmp.path().join("data-bin-clinic"),
    );
    quick_start(&work, &fixture("admin-fairseq08/generate-best.txt"));
}

/// `src` with `cfg.task.data` set to `data`, written by the crate's own
/// torch writer.
fn with_recorded_data(src: &Path, dst: &Path, data: &Path) {
    let ckpt = Checkpoint::open(src).expect("fixture opens");
    let mut carried = Carried::from_checkpoint(&ckpt);
    let (_, cfg) = carried
        .entries
        .iter_mut()
        .find(|(k, _)| k == "cfg")
        .expect("a fairseq 0.12 checkpoint has cfg");
    let Py::Dict(cfg) = cfg else {
        panic!("cfg is a dict once unwrapped")
    };
    let (_, task) = cfg
        .iter_mut()
        .find(|(k, _)| matches!(k, Py::Str(s) if s == "task"))
        .expect("cfg.task");
    let Py::Dict(task) = task else {
        panic!("cfg.task is a dict")
    };
    let slot = task
        .iter_mut()
        .find(|(k, _)| matches!(k, Py::Str(s) if s == "data"))
        .expect("cfg.task.data");
    slot.1 = Py::Str(data.to_str().expect("utf-8").to_string());
    let tensors = ckpt
        .entries
        .iter()
        .map(|e| (e.name.clone(), ckpt.tensor(&e.name).expect("tensor")))
        .collect();
    torch_write::write(dst, &carried.with_model(tensors)).expect("write");
}

#[test]
fn fairseq012_checkpoint_with_rewritten_data_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("admintorch-fairseq012");
    copy_dir(&fixture("admintorch-fairseq012"), &work);
    let data: PathBuf = tmp.path().join("copied-data-bin");
    copy_dir(&fixture("data-bin"), &data);
    let ckpt = work.join("checkpoint_best.pt");
    with_recorded_data(
        &fixture("admintorch-fairseq012/checkpoint_best.pt"),
        &ckpt,
        &data,
    );
    quick_start(&work, &fixture("admintorch-fairseq012/generate-best.txt"));
}

#[test]
fn no_test_set_is_one_line_saying_where_it_looked() {
    // The recorded `../data-bin-clinic` is absent beside a lone copy.
    let tmp = tempfile::tempdir().expect("tempdir");
    let ckpt = tmp.path().join("checkpoint_best.pt");
    std::fs::copy(fixture("admin-fairseq08/checkpoint_best.pt"), &ckpt).expect("copy");
    let o = run_in(tmp.path(), &["eval", "checkpoint_best.pt", "--beam", "4"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for needle in ["data-bin-clinic", "--data", "--src"] {
        assert!(err.contains(needle), "{needle} in {err}");
    }
}

#[test]
fn positional_data_dir_like_fairseq_generate() {
    let m = fixture("admin-fairseq08/checkpoint_best.pt");
    let d = fixture("data-bin-fairseq08");
    let (m, d) = (m.to_str().unwrap(), d.to_str().unwrap());
    let positional = crate::common::run(&["score", m, d]);
    let flag = crate::common::run(&["score", m, "--data", d]);
    assert_eq!(positional.status.code(), Some(0), "{}", text(&positional));
    assert_eq!(flag.status.code(), Some(0), "{}", text(&flag));
    assert_eq!(positional.stdout, flag.stdout);
    assert!(String::from_utf8_lossy(&positional.stdout).contains("P-199\t"));
}

#[test]
fn no_arguments_prints_commands_and_a_workflow() {
    let o = crate::common::run(&[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for line in [
        "admin-convert fold checkpoint_best.pt",
        "admin-convert export checkpoint_best.pt --onnx",
        "admin-convert eval checkpoint_best.pt --beam 4",
        "eval",
        "score",
    ] {
        assert!(out.contains(line), "{line} in {out}");
    }
    for cmd in [
        "fold", "export", "eval", "score", "average", "cast", "inspect",
    ] {
        let o = crate::common::run(&[cmd, "--help"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!("Example:\n  admin-convert {cmd}")),
            "{out}"
        );
    }
}
