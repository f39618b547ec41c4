//! The torch reader against real checkpoints in `fixtures/` and hand-made hostile inputs.

use admin_convert::read::pickle::{self, Value};
use admin_convert::read::torch::{StorageRef, TensorRef, TorchError, TorchFile, TorchFormat};
use admin_convert::tensor::DType;
use std::io::{Read, Write};
use std::path::PathBuf;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn open(rel: &str) -> TorchFile {
    TorchFile::open(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn tensor_ref<'a>(dict: &'a Value, name: &str) -> &'a TensorRef {
    match dict.get(name) {
        Some(Value::Tensor(t)) => t,
        other => panic!("{name}: expected a tensor, got {other:?}"),
    }
}

fn torch_dtype(name: &str) -> DType {
    match name {
        "torch.float32" => DType::F32,
        "torch.float16" => DType::F16,
        "torch.bfloat16" => DType::BF16,
        "torch.int64" => DType::I64,
        "torch.bool" => DType::Bool,
        other => panic!("dtype {other}"),
    }
}

/// `fixtures/edge/expected.txt`: name, dtype, shape, sum.
fn expected() -> Vec<(String, DType, Vec<usize>, f64)> {
    std::fs::read_to_string(fixture("edge/expected.txt"))
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let shape = f[2]
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().unwrap())
                .collect();
            (
                f[0].to_owned(),
                torch_dtype(f[1]),
                shape,
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

fn check_edge_state_dict(file: &TorchFile, sd: &Value, what: &str) {
    for (name, dtype, shape, sum) in expected() {
        let t = tensor_ref(sd, &name);
        let raw = file
            .tensor(t)
            .unwrap_or_else(|e| panic!("{what} {name}: {e}"));
        assert_eq!(raw.dtype, dtype, "{what} {name}");
        assert_eq!(raw.shape, shape, "{what} {name}");
        let got: f64 = raw.to_f64().iter().sum();
        assert!(
            (got - sum).abs() <= 1e-4 * sum.abs() + 1e-5,
            "{what} {name}: sum {got}, expected {sum}"
        );
    }
    let tied = tensor_ref(sd, "decoder.embed_tokens.weight");
    let proj = tensor_ref(sd, "decoder.output_projection.weight");
    assert_eq!(tied.storage, proj.storage, "{what}: tied weights");

    // base = arange(24).view(4, 6); view_slice = base[1:3]; view_T = base.T
    let slice = tensor_ref(sd, "decoder.view_slice");
    assert_eq!(slice.offset, 6, "{what}");
    let values = file.tensor(slice).unwrap().to_f32();
    assert_eq!(
        values,
        (6..18).map(|x| x as f32).collect::<Vec<_>>(),
        "{what}"
    );
    let t = tensor_ref(sd, "decoder.view_T");
    assert_eq!(t.stride, vec![1, 6], "{what}");
    let values = file.tensor(t).unwrap().to_f32();
    let want: Vec<f32> = (0..6)
        .flat_map(|i| (0..4).map(move |j| (j * 6 + i) as f32))
        .collect();
    assert_eq!(values, want, "{what}");
}

#[test]
fn edge_files_tensors() {
    for name in [
        "state_dict.pt",
        "fairseq_args.pt",
        "fairseq_args_legacy.pt",
        "fairseq_cfg_dict.pt",
        "fairseq_cfg_omegaconf.pt",
    ] {
        let file = open(&format!("edge/{name}"));
        let want = if name.contains("legacy") {
            TorchFormat::Legacy
        } else {
            TorchFormat::Zip
        };
        assert_eq!(file.format, want, "{name}");
        let sd = if name == "state_dict.pt" {
            &file.root
        } else {
            file.root.get("model").expect("model")
        };
        check_edge_state_dict(&file, sd, name);
        assert!(file.storage_count() > 0);
    }
}

#[test]
fn edge_files_config() {
    for name in ["fairseq_args.pt", "fairseq_args_legacy.pt"] {
        let file = open(&format!("edge/{name}"));
        let args = file.root.get("args").expect("args");
        let Value::Object {
            module,
            name: class,
            ..
        } = args
        else {
            panic!("{name}: args is {args:?}");
        };
        assert_eq!((module.as_str(), class.as_str()), ("argparse", "Namespace"));
        assert_eq!(args.get("encoder_layers").and_then(Value::as_i64), Some(2));
        assert_eq!(
            args.get("encoder_embed_dim").and_then(Value::as_i64),
            Some(8)
        );
        assert_eq!(args.get("fp16").and_then(Value::as_bool), Some(true));
    }

    let file = open("edge/fairseq_cfg_dict.pt");
    let cfg = file.root.get("cfg").expect("cfg");
    assert!(matches!(cfg, Value::Dict(_)), "{cfg:?}");
    let model = cfg.get("model").expect("cfg.model");
    assert!(!model.is_none());

    let file = open("edge/fairseq_cfg_omegaconf.pt");
    let cfg = file.root.get("cfg").expect("cfg").unwrap_omegaconf();
    assert!(matches!(cfg, Value::Dict(_)), "{cfg:?}");
    let model = cfg.get("model").expect("cfg.model");
    assert_eq!(model.get("encoder_layers").and_then(Value::as_i64), Some(2));
    assert_eq!(
        cfg.get("common")
            .and_then(|c| c.get("fp16"))
            .and_then(Value::as_bool),
        Some(true)
    );
}

#[test]
fn admin_fairseq08_legacy() {
    let file = open("admin-fairseq08/checkpoint_best.pt");
    assert_eq!(file.format, TorchFormat::Legacy);
    let args = file.root.get("args").unwrap();
    assert_eq!(
        args.get("arch").and_then(Value::as_str),
        Some("transformer")
    );
    assert_eq!(args.get("encoder_layers").and_then(Value::as_i64), Some(2));
    assert_eq!(
        args.get("init_type").and_then(Value::as_str),
        Some("adaptive")
    );
    let model = file.root.get("model").unwrap();
    let t = file
        .tensor(tensor_ref(model, "encoder.layers.0.attention_ratio_change"))
        .unwrap();
    assert_eq!((t.dtype, t.shape.clone()), (DType::F32, vec![64]));
    let t = file
        .tensor(tensor_ref(model, "encoder.embed_tokens.weight"))
        .unwrap();
    assert_eq!((t.dtype, t.shape.clone()), (DType::F32, vec![144, 64]));
    assert!(t.to_f32().iter().all(|x| x.is_finite()));
    all_tensors_readable(&file, model);
}

fn all_tensors_readable(file: &TorchFile, model: &Value) {
    let Value::Dict(pairs) = model else {
        panic!("model is not a dict");
    };
    assert!(pairs.len() > 10);
    for (k, v) in pairs {
        if let Value::Tensor(t) = v {
            file.tensor(t).unwrap_or_else(|e| panic!("{k:?}: {e}"));
        }
    }
}

#[test]
fn fairseq012_zip_checkpoints() {
    for rel in [
        "postln-fairseq012/checkpoint_best.pt",
        "postln-fairseq0122/checkpoint_best.pt",
        "admintorch-fairseq012/checkpoint_best.pt",
    ] {
        let file = open(rel);
        assert_eq!(file.format, TorchFormat::Zip, "{rel}");
        let model = file.root.get("model").expect("model");
        all_tensors_readable(&file, model);
        let t = tensor_ref(model, "encoder.embed_tokens.weight");
        assert_eq!(t.shape.len(), 2, "{rel}");
    }
    let file = open("postln-fairseq012/checkpoint_best.pt");
    assert!(file.root.get("args").is_some_and(Value::is_none));
    let model_cfg = file.root.get("cfg").and_then(|c| c.get("model")).unwrap();
    assert!(
        matches!(model_cfg, Value::Object { name, .. } if name == "Namespace"),
        "{model_cfg:?}"
    );
    assert!(model_cfg
        .get("encoder_layers")
        .and_then(Value::as_i64)
        .is_some());
}

// ---------------------------------------------------------------------------------------------
// Hostile and corrupt inputs

fn err(bytes: Vec<u8>) -> String {
    let e: TorchError = TorchFile::from_bytes(bytes).expect_err("must fail");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    msg
}

/// Rewrite a zip checkpoint: `edit` may replace (Some) or drop (None) each entry.
fn rezip(
    rel: &str,
    method: zip::CompressionMethod,
    edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>,
) -> Vec<u8> {
    let mut src = zip::ZipArchive::new(std::fs::File::open(fixture(rel)).unwrap()).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for i in 0..src.len() {
        let mut entry = src.by_index(i).unwrap();
        let name = entry.name().to_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if let Some(data) = edit(&name, data) {
            out.start_file(name, options).unwrap();
            out.write_all(&data).unwrap();
        }
    }
    out.finish().unwrap().into_inner()
}

#[test]
fn deflated_zip_entries_are_read() {
    let bytes = rezip(
        "edge/state_dict.pt",
        zip::CompressionMethod::Deflated,
        |_, d| Some(d),
    );
    let file = TorchFile::from_bytes(bytes).unwrap();
    check_edge_state_dict(&file, &file.root, "deflated state_dict.pt");
}

#[test]
fn empty_and_random_bytes() {
    assert_eq!(err(Vec::new()), "empty file");
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let msg = err(random.clone());
    assert!(msg.contains("not a torch checkpoint"), "{msg}");
    // Random bytes after what looks like a pickle / zip header.
    for head in [&b"\x80\x02"[..], b"PK\x03\x04"] {
        let mut bytes = head.to_vec();
        bytes.extend(&random);
        err(bytes);
    }
    let msg = err(b"hello, this is text\n".to_vec());
    assert!(msg.contains("not a torch checkpoint"), "{msg}");
}

#[test]
fn forbidden_global_is_refused() {
    let evil = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.".to_vec();
    let e = pickle::parse(&evil, &mut |v| Ok(v)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pickle references forbidden global os.system at offset 2"
    );
    let bytes = rezip(
        "edge/state_dict.pt",
        zip::CompressionMethod::Stored,
        |n, d| {
            Some(if n.ends_with("data.pkl") {
                evil.clone()
            } else {
                d
            })
        },
    );
    let msg = err(bytes);
    assert!(msg.contains("forbidden global os.system"), "{msg}");
    for (module, name) in [
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("__builtin__", "open"),
    ] {
        let p = format!("c{module}\n{name}\n(S'1'\ntR.");
        let e = pickle::parse(p.as_bytes(), &mut |v| Ok(v)).unwrap_err();
        assert!(e.to_string().contains("forbidden global"), "{e}");
    }
}

#[test]
fn unknown_opcode_is_refused() {
    let bytes = rezip(
        "edge/state_dict.pt",
        zip::CompressionMethod::Stored,
        |n, d| {
            Some(if n.ends_with("data.pkl") {
                b"\x80\x02}q\x00\xff.".to_vec()
            } else {
                d
            })
        },
    );
    assert_eq!(err(bytes), "pickle: unknown opcode 0xff at offset 5");
}

#[test]
fn truncated_inputs() {
    let bytes = rezip(
        "edge/fairseq_args.pt",
        zip::CompressionMethod::Stored,
        |n, d| {
            Some(if n.ends_with("data.pkl") {
                d[..d.len() / 2].to_vec()
            } else {
                d
            })
        },
    );
    let msg = err(bytes);
    assert!(msg.starts_with("pickle: truncated pickle"), "{msg}");

    let legacy = std::fs::read(fixture("edge/fairseq_args_legacy.pt")).unwrap();
    let msg = err(legacy[..legacy.len() / 2].to_vec());
    assert!(msg.starts_with("truncated legacy storage"), "{msg}");
    let msg = err(legacy[..1000].to_vec());
    assert!(msg.starts_with("pickle: truncated pickle"), "{msg}");

    let zip = std::fs::read(fixture("edge/state_dict.pt")).unwrap();
    let msg = err(zip[..zip.len() / 2].to_vec());
    assert!(msg.starts_with("zip:"), "{msg}");
}

/// Offset of the first legacy storage count: after the five pickles.
fn legacy_data_start(bytes: &[u8]) -> usize {
    let mut pos = 0;
    for _ in 0..5 {
        let (_, n) = pickle::parse_prefix(&bytes[pos..], &mut |v| match v {
            Value::Tuple(_) => Ok(Value::Storage(StorageRef {
                key: "any".into(),
                dtype: DType::F32,
                numel: 0,
                location: "cpu".into(),
            })),
            other => Ok(other),
        })
        .unwrap();
        pos += n;
    }
    pos
}

#[test]
fn legacy_count_beyond_file() {
    let legacy = std::fs::read(fixture("edge/fairseq_args_legacy.pt")).unwrap();
    let start = legacy_data_start(&legacy);
    for count in [1u64 << 40, u64::MAX] {
        let mut bytes = legacy.clone();
        bytes[start..start + 8].copy_from_slice(&count.to_le_bytes());
        let msg = err(bytes);
        assert!(
            msg.starts_with("truncated legacy storage 0: needs "),
            "{msg}"
        );
    }
    // A count smaller than the pickle expects.
    let mut bytes = legacy.clone();
    bytes[start..start + 8].copy_from_slice(&0u64.to_le_bytes());
    let msg = err(bytes);
    assert!(msg.contains("the pickle needs"), "{msg}");
}

#[test]
fn zip_missing_or_short_storage() {
    let bytes = rezip(
        "edge/state_dict.pt",
        zip::CompressionMethod::Stored,
        |n, d| (!n.ends_with("data/3")).then_some(d),
    );
    assert_eq!(err(bytes), "storage 3 is missing");
    let bytes = rezip(
        "edge/state_dict.pt",
        zip::CompressionMethod::Stored,
        |n, d| {
            Some(if n.ends_with("data/3") {
                d[..10].to_vec()
            } else {
                d
            })
        },
    );
    let msg = err(bytes);
    assert!(msg.contains("storage 3 holds 10 bytes"), "{msg}");
    let bytes = rezip(
        "edge/state_dict.pt",
        zip::CompressionMethod::Stored,
        |n, d| {
            Some(if n.ends_with("byteorder") {
                b"big".to_vec()
            } else {
                d
            })
        },
    );
    let msg = err(bytes);
    assert!(msg.contains("byteorder"), "{msg}");
}

#[test]
fn tensor_view_beyond_storage() {
    let file = open("edge/state_dict.pt");
    let mut t = tensor_ref(&file.root, "decoder.view_T").clone();
    t.offset = 1000;
    let e = file.tensor(&t).unwrap_err().to_string();
    assert!(e.contains("exceeds storage"), "{e}");
    t.offset = 0;
    t.stride = vec![usize::MAX, 1];
    assert!(file.tensor(&t).is_err());
}
