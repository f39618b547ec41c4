//! `admin-convert average` against fairseq's own averages of the fixture runs (bit for bit),
//! its input selection, key checks and dtype rules; and the torch `.pt` writer read back.

use crate::common::*;
use admin_convert::read::pickle::Value;
use admin_convert::read::{Checkpoint, HValue};
use admin_convert::tensor::{DType, RawTensor};
use admin_convert::write::torch::{self as torch_write, Carried, Py};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Every tensor of `a` equals `b`'s: same names in the same order, dtype, shape and bytes.
pub(crate) fn assert_bit_identical(a: &Path, b: &Path) {
    let x = Checkpoint::open(a).expect("open a");
    let y = Checkpoint::open(b).expect("open b");
    let names = |c: &Checkpoint| c.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&x),
        names(&y),
        "{} vs {}: key order",
        a.display(),
        b.display()
    );
    for e in &x.entries {
        let (t, u) = (x.tensor(&e.name).unwrap(), y.tensor(&e.name).unwrap());
        assert_eq!(t.dtype, u.dtype, "{}: dtype", e.name);
        assert_eq!(t.shape, u.shape, "{}: shape", e.name);
        assert!(
            t.bytes.as_slice() == u.bytes.as_slice(),
            "{}: bytes differ ({} vs {})",
            e.name,
            a.display(),
            b.display()
        );
    }
}

/// Tensors of `a` and `b` whose bytes differ.
fn differing(a: &Path, b: &Path) -> usize {
    let x = Checkpoint::open(a).unwrap();
    let y = Checkpoint::open(b).unwrap();
    x.entries
        .iter()
        .filter(|e| {
            x.tensor(&e.name).unwrap().bytes.as_slice()
                != y.tensor(&e.name).unwrap().bytes.as_slice()
        })
        .count()
}

fn epochs(dir: &str, range: impl Iterator<Item = u32>) -> Vec<PathBuf> {
    range
        .map(|i| fixture(&format!("{dir}/checkpoint{i}.pt")))
        .collect()
}

fn average_ok(inputs: &[PathBuf], out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["average"];
    args.extend(inputs.iter().map(|p| s(p)));
    args.extend(["-o", s(out), "--json"]);
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "average failed: {}", stderr(&o));
    assert!(
        stderr(&o).is_empty(),
        "no progress bar off a terminal: {}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).expect("average --json prints JSON")
}

/// fairseq averaged newest first (its --num-epoch-checkpoints order): summing 40, 39, ...,
/// 36 reproduces `averaged_last5.pt` exactly, in both output formats.
#[test]
fn fork_average_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = epochs("admin-fairseq08", (36..=40).rev());
    let reference = fixture("admin-fairseq08/averaged_last5.pt");
    for name in ["avg.pt", "avg.safetensors"] {
        let out = dir.path().join(name);
        let r = average_ok(&inputs, &out, &[]);
        assert_eq!(r["tensors"], 76);
        assert_eq!(r["dtype"], "f32");
        assert_bit_identical(&out, &reference);
    }
    // The .pt keeps fairseq's new_state (the first input's hyper-parameters and extra_state,
    // as plain data), not the optimizer state; the .safetensors records the model args.
    let pt = Checkpoint::open(&dir.path().join("avg.pt")).unwrap();
    assert_eq!(pt.hparams.get("encoder_layers"), Some(&HValue::Int(2)));
    assert!(pt.other_keys.contains(&"extra_state".to_string()));
    let root = pt.torch_root().unwrap();
    assert!(matches!(
        root.get("last_optimizer_state"),
        None | Some(Value::None)
    ));
    let epoch = root
        .get("extra_state")
        .and_then(|e| e.get("train_iterator"))
        .and_then(|t| t.get("epoch"));
    assert_eq!(
        epoch,
        Some(&Value::Int(40)),
        "new_state is the first input's"
    );
    // fairseq.meters objects are not plain data: the .pt drops them (weights_only loads it).
    let meters = root.get("extra_state").and_then(|e| e.get("train_meters"));
    assert!(
        matches!(meters, Some(Value::Dict(d)) if d.is_empty()),
        "fairseq.meters objects are dropped: {meters:?}"
    );
    let st = Checkpoint::open(&dir.path().join("avg.safetensors")).unwrap();
    assert_eq!(st.hparams.get("encoder_embed_dim"), Some(&HValue::Int(64)));

    // Summation order matters in f32: the order the fixtures README names (36..40) is
    // not the one fairseq used.
    let fwd = dir.path().join("fwd.pt");
    average_ok(&epochs("admin-fairseq08", 36..=40), &fwd, &[]);
    assert!(differing(&fwd, &reference) > 0);
}

#[test]
fn postln_average_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = epochs("postln-fairseq012", (56..=60).rev());
    let reference = fixture("postln-fairseq012/averaged_last5.pt");
    for name in ["avg.pt", "avg.safetensors"] {
        let out = dir.path().join(name);
        let r = average_ok(&inputs, &out, &[]);
        assert_eq!(r["tensors"], 89);
        assert_bit_identical(&out, &reference);
    }
    let pt = Checkpoint::open(&dir.path().join("avg.pt")).unwrap();
    // cfg['model'] (a Namespace, written as a plain attribute dict) keeps the hyper-parameters.
    assert_eq!(
        pt.hparams.get("arch"),
        Some(&HValue::Str("transformer".into()))
    );
    let fwd = dir.path().join("fwd.pt");
    average_ok(&epochs("postln-fairseq012", 56..=60), &fwd, &[]);
    assert!(differing(&fwd, &reference) > 0);
}

#[test]
fn last_n_picks_the_newest_epochs_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "checkpoint36.pt",
        "checkpoint37.pt",
        "checkpoint38.pt",
        "checkpoint39.pt",
        "checkpoint40.pt",
        "checkpoint_best.pt",
    ] {
        std::os::unix::fs::symlink(
            fixture(&format!("admin-fairseq08/{name}")),
            dir.path().join(name),
        )
        .unwrap();
    }
    // Older epochs and non-matching names must be ignored.
    std::os::unix::fs::symlink(
        fixture("admin-fairseq08/checkpoint36.pt"),
        dir.path().join("checkpoint9.pt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        fixture("admin-fairseq08/checkpoint36.pt"),
        dir.path().join("checkpoint_last.pt"),
    )
    .unwrap();
    let out = dir.path().join("out").join("avg.pt");
    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let o = run(&[
        "average",
        "--last",
        "5",
        s(dir.path()),
        "-o",
        s(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let picked: Vec<String> = r["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            Path::new(p.as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        picked,
        [
            "checkpoint40.pt",
            "checkpoint39.pt",
            "checkpoint38.pt",
            "checkpoint37.pt",
            "checkpoint36.pt"
        ]
    );
    assert_bit_identical(&out, &fixture("admin-fairseq08/averaged_last5.pt"));

    let o = run(&["average", "--last", "9", s(dir.path()), "-o", s(&out)]);
    assert_one_line_error(&o, "need at least 9");
}

#[test]
fn last_updates_orders_by_update() {
    let dir = tempfile::tempdir().unwrap();
    for (name, src) in [
        ("checkpoint_1_500.pt", 36),
        ("checkpoint_2_1000.pt", 37),
        ("checkpoint_2_900.pt", 38),
        ("checkpoint40.pt", 40),
    ] {
        std::os::unix::fs::symlink(
            fixture(&format!("admin-fairseq08/checkpoint{src}.pt")),
            dir.path().join(name),
        )
        .unwrap();
    }
    let out = dir.path().join("avg.safetensors");
    let o = run(&[
        "average",
        "--last-updates",
        "2",
        s(dir.path()),
        "-o",
        s(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let inputs = r["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    assert!(inputs[0]
        .as_str()
        .unwrap()
        .ends_with("checkpoint_2_1000.pt"));
    assert!(inputs[1].as_str().unwrap().ends_with("checkpoint_2_900.pt"));
}

fn write_st(path: &Path, tensors: &[(&str, RawTensor)]) {
    let t: Vec<(String, RawTensor)> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    admin_convert::write::safetensors::write(path, &t, &BTreeMap::new()).unwrap();
}

fn i64_tensor(v: &[i64]) -> RawTensor {
    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    RawTensor::new(DType::I64, vec![v.len()], b.into()).unwrap()
}

#[test]
fn differing_keys_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
        dir.path().join("c.safetensors"),
    );
    let w = RawTensor::from_f32(vec![2], &[1.0, 2.0]);
    write_st(&a, &[("x.weight", w.clone()), ("y.weight", w.clone())]);
    write_st(&b, &[("x.weight", w.clone()), ("z.weight", w.clone())]);
    write_st(&c, &[("x.weight", w.clone())]);
    let out = dir.path().join("o.pt");
    let o = run(&["average", s(&a), s(&b), "-o", s(&out)]);
    assert_one_line_error(&o, "b.safetensors");
    assert!(stderr(&o).contains("'y.weight'"), "{}", stderr(&o));
    let o = run(&["average", s(&a), s(&c), "-o", s(&out)]);
    assert_one_line_error(&o, "lacks 'y.weight'");
    // Real checkpoints of different architectures.
    let o = run(&[
        "average",
        s(&fixture("admin-fairseq08/checkpoint40.pt")),
        s(&fixture("postln-fairseq012/checkpoint60.pt")),
        "-o",
        s(&out),
    ]);
    assert_one_line_error(&o, "checkpoint60.pt");
    assert!(!out.exists(), "no output on failure");
    // Same keys, other shapes.
    write_st(
        &c,
        &[
            ("x.weight", RawTensor::from_f32(vec![1], &[1.0])),
            ("y.weight", w),
        ],
    );
    let o = run(&["average", s(&a), s(&c), "-o", s(&out)]);
    assert_one_line_error(&o, "shape");
}

#[test]
fn integers_are_floor_divided() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    write_st(
        &a,
        &[
            ("steps", i64_tensor(&[7, -3, 10])),
            ("w", RawTensor::from_f32(vec![2], &[1.0, 0.1])),
        ],
    );
    write_st(
        &b,
        &[
            ("steps", i64_tensor(&[2, 0, 10])),
            ("w", RawTensor::from_f32(vec![2], &[2.0, 0.2])),
        ],
    );
    for name in ["o.pt", "o.safetensors"] {
        let out = dir.path().join(name);
        average_ok(&[a.clone(), b.clone()], &out, &[]);
        let c = Checkpoint::open(&out).unwrap();
        let steps = c.tensor("steps").unwrap();
        assert_eq!(steps.dtype, DType::I64);
        assert_eq!(
            steps.to_f64(),
            vec![4.0, -2.0, 10.0],
            "(7+2)//2, (-3+0)//2, 20//2"
        );
        let w = c.tensor("w").unwrap();
        assert_eq!(w.to_f32(), vec![1.5, (0.1f32 + 0.2f32) / 2.0]);
    }
}

#[test]
fn mixed_fp16_and_fp32_inputs_give_f32() {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = epochs("admin-fairseq08", (38..=40).rev());
    // checkpoint39 and 38 in fp16, made by `cast`.
    for i in [1, 2] {
        let half = dir.path().join(format!("half{i}.pt"));
        let o = run(&[
            "cast",
            s(&inputs[i]),
            "--dtype",
            "fp16",
            "-o",
            s(&half),
            "--force",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        inputs[i] = half;
    }
    let out = dir.path().join("avg.safetensors");
    let r = average_ok(&inputs, &out, &[]);
    assert_eq!(r["input_dtypes"]["f16"], 2 * 76);
    assert_eq!(r["input_dtypes"]["f32"], 76);
    let got = Checkpoint::open(&out).unwrap();
    let ins: Vec<Checkpoint> = inputs
        .iter()
        .map(|p| Checkpoint::open(p).unwrap())
        .collect();
    for e in &got.entries {
        let t = got.tensor(&e.name).unwrap();
        assert_eq!(t.dtype, DType::F32, "{}", e.name);
        // fairseq: p.float() for fp16, summed in order, divided by N in f32.
        let mut acc = ins[0].tensor(&e.name).unwrap().to_f32();
        for c in &ins[1..] {
            for (a, x) in acc.iter_mut().zip(c.tensor(&e.name).unwrap().to_f32()) {
                *a += x;
            }
        }
        let want: Vec<u32> = acc.iter().map(|x| (x / 3.0).to_bits()).collect();
        let have: Vec<u32> = t.to_f32().iter().map(|x| x.to_bits()).collect();
        assert_eq!(have, want, "{}", e.name);
    }
}

#[test]
fn output_dtype_and_fold() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = epochs("admin-fairseq08", (39..=40).rev());
    let out = dir.path().join("avg16.pt");
    let r = average_ok(&inputs, &out, &["--dtype", "fp16", "--force"]);
    assert_eq!(r["dtype"], "f16");
    let c = Checkpoint::open(&out).unwrap();
    assert!(c.entries.iter().all(|e| e.dtype == DType::F16));

    let out = dir.path().join("folded.safetensors");
    let r = average_ok(&inputs, &out, &["--fold"]);
    assert_eq!(r["fold"]["from"], "admin-fork");
    assert_eq!(r["fold"]["to"], "post-ln");
    let j = inspect_json(&out, &[]);
    assert_eq!(j["family"], "post-ln");
    let out = dir.path().join("folded.pt");
    average_ok(&inputs, &out, &["--fold"]);
    let j = inspect_json(&out, &[]);
    assert_eq!(j["family"], "post-ln");
    let c = Checkpoint::open(&out).unwrap();
    assert_eq!(
        c.hparams.get("arch"),
        Some(&HValue::Str("transformer".into()))
    );
}

#[test]
fn refuses_bad_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.pt");
    std::fs::copy(fixture("admin-fairseq08/checkpoint40.pt"), &a).unwrap();
    let before = std::fs::read(&a).unwrap();
    let o = run(&[
        "average",
        s(&a),
        s(&fixture("admin-fairseq08/checkpoint39.pt")),
        "-o",
        s(&a),
    ]);
    assert_one_line_error(&o, "overwrite an input");
    assert_eq!(std::fs::read(&a).unwrap(), before);
    let o = run(&["average", s(&a), "-o", s(&dir.path().join("x.bin"))]);
    assert_one_line_error(&o, ".safetensors");
    let o = run(&[
        "average",
        s(&dir.path().join("missing.pt")),
        "-o",
        s(&dir.path().join("x.pt")),
    ]);
    assert_one_line_error(&o, "no such file");
}

/// The writer on its own: a small state dict and Namespace args read back by our reader.
#[test]
fn torch_writer_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.pt");
    let f32t = RawTensor::from_f32(vec![2, 3], &[1.0, -2.5, 3.25, f32::MIN_POSITIVE, 0.0, -0.0]);
    let f16t = RawTensor::new(DType::F16, vec![2], vec![0x00, 0x3c, 0xff, 0x7b].into()).unwrap();
    let bf16t = RawTensor::new(DType::BF16, vec![1], vec![0x80, 0x3f].into()).unwrap();
    let bools = RawTensor::new(DType::Bool, vec![3], vec![1, 0, 1].into()).unwrap();
    let scalar = RawTensor::from_f32(vec![], &[7.0]);
    let model = vec![
        ("a.weight".to_string(), f32t.clone()),
        ("a.half".to_string(), f16t.clone()),
        ("a.bf16".to_string(), bf16t.clone()),
        ("a.steps".to_string(), i64_tensor(&[1, -1, i64::MAX])),
        ("a.mask".to_string(), bools.clone()),
        ("a.scalar".to_string(), scalar.clone()),
        ("tied.weight".to_string(), f32t.clone()),
    ];
    let args = Py::namespace(vec![
        ("arch".into(), Py::str("transformer")),
        ("encoder_layers".into(), Py::Int(6)),
        ("dropout".into(), Py::Float(0.1)),
        ("share_all_embeddings".into(), Py::Bool(true)),
        ("user_dir".into(), Py::None),
    ]);
    let carried = Carried {
        entries: vec![
            ("args".into(), args),
            ("extra_state".into(), Py::Dict(vec![])),
        ],
        model_slot: Some(("model".into(), 1)),
        notes: vec![],
    };
    torch_write::write(&path, &carried.with_model(model.clone())).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    assert_eq!(c.format, admin_convert::read::Format::TorchZip);
    assert_eq!(
        c.hparams.get("arch"),
        Some(&HValue::Str("transformer".into()))
    );
    assert_eq!(c.hparams.get("encoder_layers"), Some(&HValue::Int(6)));
    assert_eq!(c.hparams.get("dropout"), Some(&HValue::Float(0.1)));
    assert_eq!(
        c.hparams.get("share_all_embeddings"),
        Some(&HValue::Bool(true))
    );
    assert_eq!(c.hparams.get("user_dir"), Some(&HValue::None));
    assert_eq!(c.other_keys, ["args", "extra_state"]);
    assert_eq!(c.entries.len(), model.len());
    for (name, t) in &model {
        let got = c.tensor(name).unwrap();
        assert_eq!(got.dtype, t.dtype, "{name}");
        assert_eq!(got.shape, t.shape, "{name}");
        assert_eq!(got.bytes.as_slice(), t.bytes.as_slice(), "{name}");
    }
    assert_eq!(
        c.entry("tied.weight").unwrap().tied_to.as_deref(),
        Some("a.weight")
    );
    // Storages are 64-byte aligned in the file, as torch writes them.
    let raw = std::fs::read(&path).unwrap();
    let at = raw
        .windows(4)
        .position(|w| w == [0, 0, 0x80, 0x3f])
        .unwrap();
    assert_eq!(at % 64, 0);
}
