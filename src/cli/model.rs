//! Opening a MODEL argument for running: a checkpoint (recognised and
//! exported in memory) or a directory written by `export`, on tract or
//! onnxruntime, with the dictionaries that belong to it.

use super::{load, ModelArgs};
use crate::data::locate::{self, Dicts, Query};
use crate::export::{self, ExportOptions, Precision};
use crate::runtime::ort::{Device, OrtBackend, OrtOptions};
use crate::runtime::tract::TractBackend;
use crate::runtime::{GraphEngine, GraphSource, ModelEngine};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which runtime runs the graphs.
#[derive(Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// native (pure Rust, CPU, float32, straight from a checkpoint: the
    /// fastest on the CPU), tract (pure Rust, CPU, runs the ONNX graphs) or
    /// ort (onnxruntime, CPU or CUDA). auto: native for a checkpoint, tract
    /// for an export directory or --fp16, ort for --device cuda.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// cpu, or cuda[:N] (onnxruntime only; fails loudly if CUDA cannot be used).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// onnxruntime shared library (else ORT_DYLIB_PATH, else the Python onnxruntime package).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Run the fp16 graphs.
    #[arg(long)]
    pub fp16: bool,
    /// Threads: onnxruntime intra-op threads, native engine threads
    /// (default: every CPU). tract runs on one thread.
    #[arg(long, allow_negative_numbers = true, value_parser = super::in_range(1, super::MAX_THREADS))]
    pub threads: Option<usize>,
    /// Precision of the native engine's linear maps: float32, int8 (per-row
    /// scales), bfloat16 (CPUs with AVX512_BF16) or auto (the fastest that
    /// passes its accuracy gate on this CPU).
    #[arg(long, value_enum, default_value = "float32")]
    pub compute_type: crate::native::ComputeType,
}

/// A model ready to run, and its dictionaries when known.
pub struct Opened {
    pub backend: Box<dyn ModelEngine>,
    pub dicts: Option<Dicts>,
}

/// `--backend`: which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// native for a checkpoint, tract for an export directory or --fp16, ort for CUDA.
    Auto,
    Native,
    Tract,
    #[value(alias = "onnxruntime")]
    Ort,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Native => "native",
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
        }
    }
}

/// `--device`: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    Ok(match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda { device_id: 0 },
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(device_id) if device_id >= 0 => Device::Cuda { device_id },
            _ => return Err(format!("unknown device {s:?} (cpu, cuda, cuda:N)")),
        },
    })
}

/// The `--device` spelling of `d`.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda { device_id } => format!("cuda:{device_id}"),
    }
}

/// The dictionaries an export directory carries: `dict.*.txt` files, else
/// the `fairseq.dict.src` / `fairseq.dict.tgt` metadata of its encoder graph.
pub fn export_dir_dicts(dir: &Path, precision: Precision) -> Result<Option<Dicts>> {
    let q = Query::new(None, None, "test")?;
    if locate::dict_paths(dir, &q).is_ok() {
        return Ok(Some(locate::dicts_in(dir, &q)?));
    }
    dictionaries_in_graph(&dir.join(crate::export::GraphKind::Encoder.file_name(precision)))
}

/// The `fairseq.dict.src` / `fairseq.dict.tgt` metadata of an exported graph.
pub fn dictionaries_in_graph(path: &Path) -> Result<Option<Dicts>> {
    use prost::Message;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{}: not an ONNX model", path.display()))?;
    let get = |key: &str| {
        model
            .metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.clone())
    };
    match (get("fairseq.dict.src"), get("fairseq.dict.tgt")) {
        (Some(s), Some(t)) => Ok(Some(Dicts::from_texts(
            s,
            t,
            &format!("{} (fairseq.dict.* metadata)", path.display()),
        )?)),
        _ => Ok(None),
    }
}

/// The backend `--backend` names, `auto` resolved (never `Auto`).
pub fn resolve_backend(path: &Path, rt: &RuntimeArgs) -> BackendKind {
    match rt.backend {
        BackendKind::Auto if rt.device != Device::Cpu => BackendKind::Ort,
        BackendKind::Auto if path.is_dir() || rt.fp16 => BackendKind::Tract,
        BackendKind::Auto => BackendKind::Native,
        other => other,
    }
}

/// Open MODEL (checkpoint file or export directory) on the chosen runtime.
pub fn open(path: &Path, model: &ModelArgs, rt: &RuntimeArgs) -> Result<Opened> {
    let precision = if rt.fp16 {
        Precision::Fp16
    } else {
        Precision::Fp32
    };
    let name = resolve_backend(path, rt);
    let native = name == BackendKind::Native;
    if native {
        if rt.device != Device::Cpu {
            bail!(
                "--backend native runs on the CPU only; use --backend ort for --device {}",
                device_name(rt.device)
            );
        }
        if rt.fp16 {
            bail!("--backend native runs float32 (or --compute-type int8 / bfloat16), no fp16 graphs; use --backend ort or tract for --fp16");
        }
        if path.is_dir() {
            bail!(
                "{}: --backend native runs checkpoints, not exported ONNX directories (use --backend tract or ort)",
                path.display()
            );
        }
    } else if rt.compute_type != crate::native::ComputeType::Float32 {
        bail!(
            "--compute-type {} is for the native engine (--backend native, a checkpoint)",
            rt.compute_type.name()
        );
    }
    let mut native_backend = None;
    let (source, dicts) = if path.is_dir() {
        if !path
            .join(crate::export::GraphKind::Encoder.file_name(precision))
            .exists()
        {
            bail!(
                "{}: no {} here: not a directory written by `admin-convert export`{}",
                path.display(),
                crate::export::GraphKind::Encoder.file_name(precision),
                if rt.fp16 { " with --fp16" } else { "" }
            );
        }
        let dicts = export_dir_dicts(path, precision)?;
        (Some(GraphSource::Dir(path.to_path_buf(), precision)), dicts)
    } else {
        let (ckpt, rec) = load(path, model)?;
        let dicts = locate::embedded_dicts(&ckpt)?;
        // The raw checkpoint is no longer needed: free it before building
        // the engine's copy of the weights (peak memory).
        drop(ckpt);
        if native {
            native_backend = Some(
                crate::native::NativeBackend::from_model(rec.model, rt.threads, rt.compute_type)
                    .with_context(|| format!("{}: native engine", path.display()))?,
            );
            (None, dicts)
        } else {
            let graphs = export::export(&rec.model, precision, &ExportOptions::default())
                .with_context(|| format!("{}: export", path.display()))?;
            (Some(GraphSource::Memory(Arc::new(graphs))), dicts)
        }
    };
    let graphs = || source.clone().expect("graphs exported above unless native");
    let backend: Box<dyn ModelEngine> = match name {
        BackendKind::Tract => {
            if rt.device != Device::Cpu {
                bail!(
                    "--backend tract runs on the CPU only; use --backend ort for --device {}",
                    device_name(rt.device)
                );
            }
            Box::new(GraphEngine(TractBackend::new(graphs())?))
        }
        BackendKind::Ort => Box::new(GraphEngine(OrtBackend::new(
            graphs(),
            OrtOptions {
                lib: rt.ort_lib.clone(),
                device: rt.device,
                threads: rt.threads,
            },
        )?)),
        BackendKind::Native | BackendKind::Auto => {
            Box::new(native_backend.expect("built above for a checkpoint"))
        }
    };
    Ok(Opened { backend, dicts })
}
