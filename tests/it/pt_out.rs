//! `average -o X.pt` and `cast -o X.pt` write fairseq 0.12's plain layout: tied tables
//! stay one storage (file size ≈ the unique weight bytes), no pickled classes (so
//! `torch.load(weights_only=True)` reads them), and stock fairseq 0.12 loads the average
//! (tests/check_plain_pt.py).

use crate::common::*;
use admin_convert::read::pickle::Value;
use admin_convert::read::Checkpoint;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn ok(args: &[&str]) {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

/// The classes a value tree names, other than `collections.OrderedDict`.
fn classes(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object {
            module,
            name,
            args,
            state,
        } => {
            if !(module == "collections" && name == "OrderedDict") {
                out.push(format!("{module}.{name}"));
            }
            args.iter().for_each(|a| classes(a, out));
            if let Some(s) = state {
                classes(s, out);
            }
        }
        Value::Global { module, name } => out.push(format!("{module}.{name}")),
        Value::List(l) | Value::Tuple(l) | Value::Set(l) => l.iter().for_each(|i| classes(i, out)),
        Value::Dict(d) => d.iter().for_each(|(k, v)| {
            classes(k, out);
            classes(v, out);
        }),
        _ => {}
    }
}

/// `out` ties the three embedding tables, holds no pickled class, has `args` None and no
/// optimizer state, and its size is within 2% + 64 KiB (zip headers, the pickled
/// config) of its unique tensor bytes.
fn assert_plain_and_tied(out: &Path) -> u64 {
    let c = Checkpoint::open(out).expect("open output");
    for (name, to) in [
        ("decoder.embed_tokens.weight", "encoder.embed_tokens.weight"),
        (
            "decoder.output_projection.weight",
            "encoder.embed_tokens.weight",
        ),
    ] {
        // The fork has no output projection entry (fairseq 0.8 shares the module).
        if let Some(e) = c.entry(name) {
            assert_eq!(e.tied_to.as_deref(), Some(to), "{}: {name}", out.display());
        }
    }
    let root = c.torch_root().expect("torch root");
    let mut found = Vec::new();
    classes(root, &mut found);
    assert!(
        found.is_empty(),
        "{}: pickled classes {found:?}",
        out.display()
    );
    assert!(matches!(root.get("args"), Some(Value::None)));
    assert!(matches!(
        root.get("last_optimizer_state"),
        Some(Value::None)
    ));
    let unique = c.memory_bytes() as u64;
    let size = std::fs::metadata(out).expect("size").len();
    eprintln!(
        "{}: {size} bytes, {unique} unique tensor bytes",
        out.display()
    );
    assert!(
        (size as f64) < unique as f64 * 1.02 + 65536.0,
        "{}: {size} bytes for {unique} bytes of weights",
        out.display()
    );
    size
}

fn postln_newest_first() -> Vec<PathBuf> {
    (56..=60)
        .rev()
        .map(|e| fixture(&format!("postln-fairseq012/checkpoint{e}.pt")))
        .collect()
}

/// The averaged Post-LN run (fairseq 0.12 `cfg`) and the fork's (fairseq 0.8 `args`),
/// fp32 and fp16, and casts: bit-identical tensors to fairseq's average (the fp32
/// ones), one storage for the tied tables, size ≈ the unique weight bytes.
#[test]
fn average_and_cast_pt_are_plain_and_tied() {
    let d = tempfile::tempdir().unwrap();
    let mut args = vec!["average".to_string()];
    args.extend(postln_newest_first().iter().map(|p| s(p).to_string()));
    for (name, extra) in [("avg.pt", None), ("avg16.pt", Some("fp16"))] {
        let out = d.path().join(name);
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend(["-o", s(&out), "-q"]);
        if let Some(dt) = extra {
            a.extend(["--dtype", dt]);
        }
        ok(&a);
        assert_plain_and_tied(&out);
    }
    crate::average::assert_bit_identical(
        &d.path().join("avg.pt"),
        &fixture("postln-fairseq012/averaged_last5.pt"),
    );
    let fork: Vec<PathBuf> = (36..=40)
        .rev()
        .map(|e| fixture(&format!("admin-fairseq08/checkpoint{e}.pt")))
        .collect();
    let out = d.path().join("fork.pt");
    let mut a = vec!["average"];
    a.extend(fork.iter().map(|p| s(p)));
    a.extend(["-o", s(&out), "-q"]);
    ok(&a);
    assert_plain_and_tied(&out);
    crate::average::assert_bit_identical(&out, &fixture("admin-fairseq08/averaged_last5.pt"));
    for (input, dt) in [
        ("postln-fairseq012/checkpoint_best.pt", "fp16"),
        ("admin-fairseq08/checkpoint_best.pt", "bf16"),
    ] {
        let out = d.path().join(format!("cast-{dt}.pt"));
        ok(&["cast", s(&fixture(input)), "--dtype", dt, "-o", s(&out)]);
        assert_plain_and_tied(&out);
    }
}

/// The Python with torch for the load checks: $ADMIN_CONVERT_TORCH_PYTHON, else
/// `.venv-torch` in the repository root, when it imports `modules`. Missing → skip with a
/// note, or fail when `require` (or ADMIN_CONVERT_REQUIRE_ORT=1).
fn torch_python(modules: &str, require: bool) -> Option<PathBuf> {
    let p = std::env::var_os("ADMIN_CONVERT_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-torch/bin/python")
        });
    let has = std::process::Command::new(&p)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if has {
        return Some(p);
    }
    assert!(
        !require && std::env::var("ADMIN_CONVERT_REQUIRE_ORT").as_deref() != Ok("1"),
        "{}: no python with {modules} (set ADMIN_CONVERT_TORCH_PYTHON; run scripts/setup-python.sh)",
        p.display()
    );
    eprintln!(
        "note: no python with {modules} at {}; skipping",
        p.display()
    );
    None
}

/// The averaged Post-LN run (fp32) and the fork cast to fp16, as `.pt`.
fn write_pair(d: &Path) -> (PathBuf, PathBuf) {
    let avg = d.join("avg.pt");
    let mut a = vec!["average"];
    let inputs = postln_newest_first();
    a.extend(inputs.iter().map(|p| s(p)));
    a.extend(["-o", s(&avg), "-q"]);
    ok(&a);
    let fork = d.join("fork16.pt");
    let input = fixture("admin-fairseq08/checkpoint_best.pt");
    ok(&["cast", s(&input), "--dtype", "fp16", "-o", s(&fork)]);
    (avg, fork)
}

/// tests/check_plain_pt.py on `pts` (stock fairseq loads the first unless `data` is `-`);
/// its output.
fn check_plain(py: &Path, data: &str, pts: &[&Path]) -> String {
    let o = std::process::Command::new(py)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/check_plain_pt.py"))
        .arg(data)
        .args(pts)
        .output()
        .expect("python runs");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{text}");
    text
}

/// `torch.load(weights_only=True)` reads the averaged and cast `.pt` files, `args` None,
/// with their tables tied (one storage).
#[test]
fn average_and_cast_pt_load_with_torch_weights_only() {
    let Some(py) = torch_python("torch", false) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let (avg, fork) = write_pair(d.path());
    let text = check_plain(&py, "-", &[&avg, &fork]);
    // The Post-LN run ties three tables, the fork two (it has no output projection entry).
    let tied = "tied: encoder.embed_tokens.weight = decoder.embed_tokens.weight";
    assert_eq!(text.matches(tied).count(), 2, "{text}");
    assert!(
        text.contains(&format!("{tied} = decoder.output_projection.weight")),
        "{text}"
    );
}

/// Stock fairseq 0.12 loads the averaged Post-LN run (strict `load_state_dict`) and holds
/// the file's tensors; CTranslate2's fairseq converter converts it.
#[test]
fn average_pt_loads_in_stock_fairseq() {
    let Some(py) = torch_python("torch, fairseq, ctranslate2", false) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let (avg, _) = write_pair(d.path());
    let data = fixture("data-bin");
    let text = check_plain(&py, s(&data), &[&avg]);
    assert!(text.contains("fairseq: loaded 89 tensors"), "{text}");
    assert!(text.contains("ct2-fairseq-converter: ok"), "{text}");
}
